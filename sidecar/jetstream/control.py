"""One controller per conversation across the daemons of one stream, through KV leases.

Every daemon copies every event, so every daemon's policy reaches the same decisions; only
the daemon holding a conversation's lease carries them out (grants, ``controller.decision``,
the watchdog's events). Two KV buckets beside the stream hold the leases:

- ``{stream}_daemons``: one key per running daemon, rewritten every ``lease_s / 3`` with a
  compare-and-set on its own last revision; the bucket's max age (``lease_s``) removes the
  key of a daemon that stops renewing (killed, frozen, cut off).
- ``{stream}_controllers``: one key per conversation naming the daemon that speaks for it,
  written with ``create`` (the first daemon to need it wins) or, to take over from a daemon
  whose key is gone, with an ``update`` on the revision read: of several survivors, one wins.

**Fencing.** A daemon acts only while its own key is one it renewed less than ``lease_s``
ago by its own clock; one that fails to renew in time (its key may be gone: a pause, a
partition) stops acting at once, and comes back under a new name, so the leases it held are
taken over like a dead daemon's, by CAS, never by a late write of its own. The revision of a
conversation's lease is the fencing token.

Heartbeats (``controller.heartbeat``) are relayed on core NATS, ``{stream}.heartbeat.<cid>``,
to every daemon's watchdog: they are signs of life, not history, so they stay out of the log.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from sidecar.jetstream.log import retrying

log = structlog.get_logger("sidecar.jetstream")

DEFAULT_LEASE_S = 10.0


class _Heartbeat(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: str
    task_id: str | None = None


def lease_key(cid: str) -> str:
    """A conversation's key in the controllers bucket ('.' is a token separator there)."""
    return cid.replace(".", "=")


class ControlPlane:
    """This daemon's leases, and the heartbeats of every daemon."""

    def __init__(
        self,
        nc: NatsClient,
        stream: str,
        *,
        replicas: int,
        lease_s: float = DEFAULT_LEASE_S,
        on_takeover: Callable[[str], None],
        on_heartbeat: Callable[[str, str | None], None],
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.replicas = replicas
        self.lease_s = lease_s
        self.on_takeover = on_takeover
        self.on_heartbeat = on_heartbeat
        self.name = _new_name()
        self._alive_rev = 0
        self._renewed = float("-inf")  # monotonic time of the last renewal the cluster took
        self._owners: dict[str, tuple[str, int]] = {}  # conversation -> (daemon, revision), as watched
        self._daemons: KeyValue
        self._controllers: KeyValue
        self._watcher: KeyValue.KeyWatcher | None = None
        self._hb_sub: Subscription | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        js = self.nc.jetstream()
        self._daemons = await retrying(
            lambda: js.create_key_value(
                bucket=f"{self.stream}_daemons", ttl=self.lease_s, history=1, replicas=self.replicas
            )
        )
        self._controllers = await retrying(
            lambda: js.create_key_value(bucket=f"{self.stream}_controllers", history=1, replicas=self.replicas)
        )
        await retrying(self._announce)
        self._watcher = await retrying(self._controllers.watchall)
        self._hb_sub = await self.nc.subscribe(f"{self.stream}.heartbeat.>", cb=self._heard)

    async def close(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()
        if self._hb_sub is not None:
            await self._hb_sub.unsubscribe()
        try:  # the others need not wait for the key to age out
            await self._daemons.delete(self.name)
        except (nats.errors.Error, nats.js.errors.Error):
            pass

    # --- leases ---------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Renewed less than a lease ago (by this host's clock): safe to act."""
        return time.monotonic() - self._renewed < self.lease_s

    async def acts_for(self, cid: str) -> bool:
        """Whether this daemon speaks for ``cid`` now; takes the lease if no one holds it."""
        if not self.alive:
            return False
        owner = self._owners.get(cid)
        if owner is None:
            try:
                revision = await self._controllers.create(lease_key(cid), self.name.encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                entry = await self._controllers.get(lease_key(cid))
                owner = (bytes(entry.value or b"").decode(), entry.revision or 0)
            else:
                owner = (self.name, revision)
            self._owners[cid] = owner
        return owner[0] == self.name

    async def run(self) -> None:
        """Renew this daemon's key, follow the leases, and take over those of daemons gone."""
        assert self._watcher is not None
        watching = asyncio.create_task(self._watch(self._watcher))
        try:
            while True:
                await self._renew()
                await self._take_over()
                await asyncio.sleep(self.lease_s / 3)
        finally:
            watching.cancel()

    async def _announce(self) -> None:
        while True:
            try:
                self._alive_rev = await self._daemons.create(self.name, b"")
                break
            except nats.js.errors.KeyWrongLastSequenceError:  # a try that landed, unanswered: anew
                self.name = _new_name()
        self._renewed = time.monotonic()

    async def _renew(self) -> None:
        started = time.monotonic()
        try:
            self._alive_rev = await self._daemons.update(self.name, b"", last=self._alive_rev)
            self._renewed = started
        except nats.js.errors.KeyWrongLastSequenceError:  # our key aged out: we were taken for dead
            log.warning("jetstream.lease_lost", daemon=self.name)
            self.name = _new_name()  # what we held is taken over by CAS, ours included
            await self._announce()

    async def _take_over(self) -> None:
        gone: dict[str, bool] = {}
        for cid, (owner, revision) in list(self._owners.items()):
            if owner == self.name:
                continue
            if owner not in gone:
                gone[owner] = not await self.is_alive(owner)
            if not gone[owner]:
                continue
            try:
                taken = await self._controllers.update(lease_key(cid), self.name.encode(), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another daemon took it first (the watch will say who)
            self._owners[cid] = (self.name, taken)
            log.info("jetstream.controller_taken_over", conversation_id=cid, previous=owner)
            self.on_takeover(cid)

    async def is_alive(self, daemon: str) -> bool:
        try:
            await self._daemons.get(daemon)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return False
        return True

    async def _watch(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None or entry.key is None:
                continue  # the end of what was there at the start
            cid = entry.key.replace("=", ".")
            if entry.operation is not None:  # deleted or purged: no one holds it
                self._owners.pop(cid, None)
                continue
            known = self._owners.get(cid)
            revision = entry.revision or 0
            if known is None or known[1] < revision:
                self._owners[cid] = (bytes(entry.value or b"").decode(), revision)

    # --- heartbeats -----------------------------------------------------------------------------

    def relay(self, cid: str, task_id: str | None) -> None:
        """Tell every daemon's watchdog (this one's too: it hears its own)."""
        payload = msgspec.json.encode(_Heartbeat(conversation_id=cid, task_id=task_id))
        sending = asyncio.get_running_loop().create_task(
            self.nc.publish(f"{self.stream}.heartbeat.{lease_key(cid)}", payload)
        )
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _heard(self, msg: Msg) -> None:
        try:
            beat = msgspec.json.decode(msg.data, type=_Heartbeat)
        except msgspec.DecodeError:
            return  # not ours: never trusted
        self.on_heartbeat(beat.conversation_id, beat.task_id)


def _new_name() -> str:
    """A daemon's name in the leases: its host and pid for people, a random part for uniqueness."""
    host = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
