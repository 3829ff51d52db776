"""``sys.*`` and ``rpc.discover``: is the daemon alive, how busy is it, what does it offer."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from sidecar import __version__
from sidecar.api.common import TOO_BIG, registry
from sidecar.api.session import Session
from sidecar.narrator.health import LLMHealth
from sidecar.rpc.dispatch import NoParams


class Health(msgspec.Struct, kw_only=True):
    # degraded: a configured LLM server is unreachable (the daemon serves; nobody narrates)
    status: Literal["ok", "degraded"]
    version: str
    uptime_s: float
    data_dir: str
    socket: str
    pid: int
    llm: LLMHealth


class Stats(msgspec.Struct, kw_only=True):
    uptime_s: float
    connections: int
    connections_total: int
    refusing: int  # refused connections still open while we tell them why
    subscriptions: int
    requests: int
    appends: int
    appends_per_s: float
    batches: int
    mean_batch: float
    fsyncs: int
    checkpoints: int
    append_queue: int
    commit_queue: int
    task_graph_writes: int
    tasks_pending: int  # the queue's depth: pending tasks ([tasks] max_pending bounds it)
    tasks_claims: int  # tasks.claim calls answered
    claim_ms_mean: float  # a claim, queued to answered, on average
    summary_full_reads: int
    retention_dropped_segments: int = 0  # sealed segments retention dropped since start
    compressed_segments: int = 0  # sealed segments compressed since start
    compression_ratio: float = 0.0  # plain bytes / compressed bytes of those (0: none yet)
    search_indexed: int = 0  # events the search index took in since start
    search_queue: int = 0  # events waiting for the indexer
    internal_errors: int = 0  # requests answered -32603: each one is a bug worth reporting
    faults: dict[str, int] = {}  # failures contained (connection, subscription, controller...)


@registry.method(
    "sys.health",
    NoParams,
    Health,
    "Liveness: ok while the daemon serves; degraded while a configured LLM server is unreachable.",
    errors={},
    example={},
    inline=True,
)
async def sys_health(p: NoParams, s: Session) -> Health:
    return s.services.health()


@registry.method(
    "sys.stats",
    NoParams,
    Stats,
    "Connections, append rate, fsyncs, batch sizes, queue depths.",
    errors={},
    example={},
    inline=True,
)
async def sys_stats(p: NoParams, s: Session) -> Stats:
    return s.services.stats()


@registry.method(
    "rpc.discover",
    NoParams,
    dict[str, Any],
    "This document: every method, its errors and every notification, as OpenRPC 1.x.",
    errors={-32005: TOO_BIG},
    example={},
)
async def rpc_discover(p: NoParams, s: Session) -> dict[str, Any]:
    return registry.openrpc("sidecar", __version__)
