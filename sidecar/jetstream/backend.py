"""The ``jetstream`` backend's parts, as one daemon wires them (docs/scale-out.md).

The daemon makes a :class:`SharedBackend` when ``[log] backend = "jetstream"`` and asks it for
what the file backend would otherwise give: the appender (:meth:`open`), the task graph
(:meth:`tasks`), the controller's leases (:meth:`control`) and consumer groups
(:meth:`groups`). All of them share one NATS connection, the stream log's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog

from sidecar.clock import Clock
from sidecar.controller.loop import Controller
from sidecar.errors import SidecarError
from sidecar.jetstream.config import JetStreamConfig
from sidecar.jetstream.control import ControlPlane
from sidecar.jetstream.groups import SharedPositions
from sidecar.jetstream.log import JetStreamLog
from sidecar.jetstream.mirror import JetStreamAppender
from sidecar.jetstream.tasks import SharedTaskService
from sidecar.log.aio import AsyncAppender

log = structlog.get_logger("sidecar.jetstream")

START_S = 60.0  # connecting to the cluster and copying what the stream has that the copy lacks


class CannotStart(Exception):
    """The cluster cannot be used; the message names it and says why."""


class SharedBackend:
    """Everything a daemon keeps in the cluster, made in the order the daemon needs it."""

    def __init__(self, config: JetStreamConfig, *, clock: Clock, max_event_bytes: int) -> None:
        self.config = config
        self.stream = JetStreamLog(config, clock=clock, max_event_bytes=max_event_bytes)
        self.appender: JetStreamAppender | None = None
        self.leases: ControlPlane | None = None
        self.positions: SharedPositions | None = None

    async def open(
        self, writer: AsyncAppender, copied: dict[str, int], fault: Callable[[str], None], data_dir: str
    ) -> JetStreamAppender:
        """Connect, and copy into ``writer``'s store (in ``data_dir``) what it lacks
        (``copied``: each conversation's last seq there); then appends go to the stream."""
        appender = JetStreamAppender(self.stream, writer, copied, fault, data_dir)
        try:
            with anyio.fail_after(START_S) as scope:
                await appender.start()
        except Exception as exc:
            with anyio.CancelScope(shield=True):
                await self.stream.close()
            why = f"not done within {START_S:g} s" if scope.cancel_called else f"{type(exc).__name__}: {exc}"
            where = ", ".join(self.config.servers)
            raise CannotStart(f"cannot use the JetStream stream {self.config.stream!r} at {where}: {why}") from None
        self.appender = appender
        return appender

    @property
    def opened(self) -> JetStreamAppender:
        assert self.appender is not None, "open() first"
        return self.appender

    async def tasks(self, data_dir: str, **service: Any) -> SharedTaskService:
        """The task graph in the stream's KV bucket (``service``: as for TaskService)."""
        tasks = SharedTaskService(
            self.stream.client, self.config.stream, data_dir=data_dir, replicas=self.config.replicas, **service
        )
        await tasks.start()
        return tasks

    async def control(self, controller: Controller) -> ControlPlane:
        """One controller per conversation across the daemons: ``controller`` acts only for
        the conversations this daemon holds, and its heartbeats reach every daemon."""
        leases = ControlPlane(
            self.stream.client,
            self.config.stream,
            replicas=self.config.replicas,
            lease_s=self.config.controller_lease_s,
            on_takeover=controller.taken_over,
            on_heartbeat=controller.heard,
        )
        await leases.start()
        controller.acts_for = leases.acts_for
        controller.relay = leases.relay
        self.leases = leases
        return leases

    async def groups(self, data_dir: str) -> SharedPositions:
        """Consumer groups' positions and live subscribers (after :meth:`control`: a live
        subscriber is held in this daemon's name, and judged by the others' liveness)."""
        leases = self.leases
        assert leases is not None, "control() first"
        positions = SharedPositions(
            self.stream.client,
            self.config.stream,
            data_dir=data_dir,
            replicas=self.config.replicas,
            name=lambda: leases.name,
            is_alive=leases.is_alive,
        )
        await positions.start()
        self.positions = positions
        return positions

    def background(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """What runs beside the daemon's own tasks, by name (each supervised)."""
        assert self.leases is not None and self.positions is not None
        return {
            "controller-leases": self.leases.run,
            "groups-follow": self.positions.follow,
            "jetstream-position": self.opened.keep_position,
        }

    async def close(self) -> None:
        """The last acks to the cluster, this daemon's lease given up, the appends drained and
        the connection closed."""
        if self.positions is not None:
            try:
                await self.positions.save()
            except SidecarError as exc:  # the cluster is away: those acks come again, never lost
                log.error("jetstream.groups_not_saved", error=exc.message)
        if self.leases is not None:
            await self.leases.close()
        if self.appender is not None:
            await self.appender.aclose()
