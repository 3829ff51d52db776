"""``[jetstream]``: where the ``jetstream`` backend's cluster is (importable without nats-py,
so the daemon's configuration can name it whether or not the extra is installed)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

NatsUrl = Annotated[
    str,
    Meta(
        pattern=r"^(nats|tls)://[^\s/]+$",
        description="a NATS server's URL: nats://host:port (or tls://host:port)",
    ),
]


class JetStreamConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The NATS JetStream cluster of ``[log] backend = "jetstream"`` (docs/scale-out.md). Read at
    start-up. Durability is the cluster's: run each server with ``sync_interval: always``."""

    servers: Annotated[list[NatsUrl], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["nats://127.0.0.1:4222"]  # any of the cluster's: the client finds the rest
    )
    # the stream of every conversation (made if missing); subjects are STREAM.log.<conversation>
    stream: Annotated[
        str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="1 to 64 letters, digits, '_' or '-'")
    ] = "SIDECAR"
    # copies of each event, on as many servers: an append is acknowledged once a majority has it
    replicas: Annotated[int, Meta(ge=1, le=5)] = 3
    # a daemon that has not renewed its lease this long is taken for dead: another daemon
    # takes over the controller of its conversations (at most this long without one)
    controller_lease_s: Annotated[float, Meta(ge=1, le=300)] = 10.0
