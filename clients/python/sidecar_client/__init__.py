"""Thin clients for the sidecar daemon's JSON-RPC socket."""

from __future__ import annotations

from sidecar_client._common import default_socket_path
from sidecar_client.agent import Agent, AsyncTaskContext, LeaseLost, TaskContext
from sidecar_client.aio import AsyncClient
from sidecar_client.client import Client
from sidecar_client.codec import DEFAULT_MAX_LINE_BYTES
from sidecar_client.errors import ConnectionLost, DaemonUnavailable, ProtocolError, RpcError
from sidecar_client.follow import follow

# The records the typed wrappers return (all of them, generated from the daemon's schemas,
# are in sidecar_client.methods): plain dicts at run time, TypedDicts to a type checker.
from sidecar_client.methods import (
    AppendResult,
    Context,
    ControllerStatus,
    Event,
    Health,
    NewEvent,
    NewTask,
    Page,
    Stats,
    Summary,
    Task,
)

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "Agent",
    "AppendResult",
    "AsyncClient",
    "AsyncTaskContext",
    "Client",
    "ConnectionLost",
    "Context",
    "ControllerStatus",
    "DaemonUnavailable",
    "Event",
    "Health",
    "LeaseLost",
    "NewEvent",
    "NewTask",
    "Page",
    "ProtocolError",
    "RpcError",
    "Stats",
    "Summary",
    "Task",
    "TaskContext",
    "default_socket_path",
    "follow",
]
