"""Consumer groups on the ``jetstream`` backend: positions and live subscribers in a KV bucket,
``{stream}_groups``, so that a consumer resumes where its group acked on any daemon.

An ack moves the position in this daemon's memory at once (as on the file backend); every half
second the positions that moved are written to the bucket, each with a compare-and-set that
only ever moves it forward (a higher position acked through another daemon wins). A watch
brings the other daemons' acks. A consumer that acks on one daemon and subscribes on another
within that half second may get some events again: at least once, never lost.

The one live subscriber of a group and conversation is a key too, naming the daemon that holds
it. Another daemon's subscriber is refused (-32001) while that daemon is alive (its key in
``{stream}_daemons``, see :mod:`sidecar.jetstream.control`); once it is gone, the key is taken
over with a compare-and-set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue

from sidecar.errors import ConflictError, StorageError
from sidecar.jetstream.log import retrying
from sidecar.log.groups import Key, Positions

log = structlog.get_logger("sidecar.jetstream")

_NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error)
_WRONG_LAST = 10071


def _hex(text: str) -> str:
    return text.encode().hex()


def position_key(group: str, cid: str) -> str:
    return f"p.{_hex(group)}.{_hex(cid)}"


def live_key(group: str, cid: str) -> str:
    return f"l.{_hex(group)}.{_hex(cid)}"


def _position_of(name: str) -> Key | None:
    """The (group, conversation) of a position's key (:func:`position_key`)."""
    _, _, rest = name.partition(".")
    group, _, cid = rest.partition(".")
    try:
        return bytes.fromhex(group).decode(), bytes.fromhex(cid).decode()
    except ValueError:
        return None  # not a key of ours: never trusted


class SharedPositions(Positions):
    """The groups' positions and live subscribers, shared by the daemons of one stream."""

    def __init__(
        self,
        nc: NatsClient,
        stream: str,
        *,
        data_dir: str,
        replicas: int,
        name: Callable[[], str],
        is_alive: Callable[[str], Awaitable[bool]],
    ) -> None:
        super().__init__(data_dir)
        self.nc = nc
        self.bucket = f"{stream}_groups"
        self.replicas = replicas
        self._name = name  # this daemon's, in the leases (it changes if it lost them)
        self._is_alive = is_alive
        self._kv: KeyValue
        self._moved: set[Key] = set()  # acked here since the last save
        self._forgotten: set[Key] = set()  # positions of deleted conversations, to delete
        self._revisions: dict[str, int] = {}
        self._live: dict[Key, int] = {}  # what this daemon holds: the revision of its key
        self._releasing: set[Key] = set()  # let go of here, not yet deleted in the bucket
        self._watcher: KeyValue.KeyWatcher | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        js = self.nc.jetstream()
        self._kv = await retrying(lambda: js.create_key_value(bucket=self.bucket, history=1, replicas=self.replicas))
        self._watcher = await retrying(lambda: self._kv.watch("p.>"))
        while (entry := await self._watcher.updates(timeout=30.0)) is not None:
            self._take(entry)

    def load(self) -> None:
        """Nothing on disk: :meth:`start` takes the positions in from the bucket."""

    def flush(self) -> bool:
        return False  # the positions live in the cluster (:meth:`save`)

    async def follow(self) -> None:
        """Take in the acks made through other daemons."""
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is not None:
                self._take(entry)

    def _take(self, entry: KeyValue.Entry) -> None:
        name = entry.key or ""
        key = _position_of(name)
        if key is None:
            return
        if entry.operation is not None:  # deleted with its conversation (on any daemon)
            self.acked.pop(key, None)
            return
        self._revisions[name] = max(self._revisions.get(name, 0), entry.revision or 0)
        seq = _decode_seq(entry.value)
        if seq > self.acked.get(key, -1):
            self.acked[key] = seq

    def forget(self, cid: str) -> int:
        gone = [key for key in self.acked if key[1] == cid]
        self._forgotten.update(gone)
        self._moved.difference_update(gone)
        return super().forget(cid)

    def ack(self, group: str, cid: str, seq: int) -> int:
        acked = super().ack(group, cid, seq)
        self._moved.add((group, cid))
        return acked

    async def save(self) -> None:
        """Write the positions acked here since the last save, each only ever forward."""
        moved, self._moved = self._moved, set()
        try:
            for group, cid in list(self._forgotten):
                await self._kv.delete(position_key(group, cid))
                self._revisions.pop(position_key(group, cid), None)
                self._forgotten.discard((group, cid))
            for group, cid in moved:
                await self._save_one(group, cid)
            for group, cid in list(self._releasing):
                await self._release(group, cid)
        except _NATS_ERRORS as exc:
            self._moved |= moved  # tried again next time
            raise StorageError(f"could not save consumer group positions to {self.bucket}: {exc}") from None

    async def _save_one(self, group: str, cid: str) -> None:
        key = position_key(group, cid)
        while True:
            seq = self.acked.get((group, cid), 0)
            last = self._revisions.get(key, 0)
            try:
                if last:
                    revision = await self._kv.update(key, msgspec.json.encode(seq), last=last)
                else:
                    revision = await self._kv.create(key, msgspec.json.encode(seq))
            except nats.js.errors.KeyWrongLastSequenceError:
                entry = await self._kv.get(key)  # another daemon saved first: keep the higher
                self._take(entry)
                if self.acked.get((group, cid), 0) <= _decode_seq(entry.value):
                    return
                continue
            self._revisions[key] = revision
            return

    # --- the one live subscriber ------------------------------------------------------------------

    async def reserve(self, group: str, cid: str) -> None:
        key = live_key(group, cid)
        me = self._name()
        try:
            revision = await self._kv.create(key, me.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            entry = await self._kv.get(key)
            holder = bytes(entry.value or b"").decode()
            if holder != me and await self._is_alive(holder):
                raise ConflictError(
                    f"group {group!r} already has a live subscriber for {cid!r}, on another daemon ({holder}); "
                    "one at a time, until its connection closes",
                    {"group": group, "conversation_id": cid, "daemon": holder},
                ) from None
            try:  # its daemon is gone (or it is a key of ours left behind): take it over
                revision = await self._kv.update(key, me.encode(), last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                raise ConflictError(
                    f"group {group!r} just got a live subscriber for {cid!r} on another daemon",
                    {"group": group, "conversation_id": cid},
                ) from None
        except _NATS_ERRORS as exc:
            raise StorageError(f"could not reserve group {group!r} in {self.bucket}: {exc}") from None
        self._live[(group, cid)] = revision
        self._releasing.discard((group, cid))

    def let_go(self, group: str, cid: str, holder: object) -> None:
        super().let_go(group, cid, holder)
        self.unreserve(group, cid)

    def unreserve(self, group: str, cid: str) -> None:
        if (group, cid) in self._live and (group, cid) not in self.holders:
            self._releasing.add((group, cid))
            task = asyncio.get_running_loop().create_task(self._release_now(group, cid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _release_now(self, group: str, cid: str) -> None:
        try:
            await self._release(group, cid)
        except _NATS_ERRORS as exc:  # the next save tries again
            log.warning("jetstream.group_release_failed", group=group, conversation_id=cid, error=str(exc))

    async def _release(self, group: str, cid: str) -> None:
        if (group, cid) not in self._releasing:
            return
        revision = self._live.pop((group, cid), None)
        self._releasing.discard((group, cid))
        if revision is None:
            return
        try:
            await self._kv.delete(live_key(group, cid), last=revision)
        except nats.js.errors.APIError as exc:
            if exc.err_code != _WRONG_LAST:
                self._live[(group, cid)] = revision
                self._releasing.add((group, cid))
                raise
            # taken over meanwhile: no longer ours to delete
        except _NATS_ERRORS:
            self._live[(group, cid)] = revision
            self._releasing.add((group, cid))
            raise


def _decode_seq(value: bytes | None) -> int:
    """A position as stored; anything else (not ours) counts as none."""
    try:
        return max(0, msgspec.json.decode(value or b"", type=int))
    except (msgspec.DecodeError, msgspec.ValidationError):
        return 0
