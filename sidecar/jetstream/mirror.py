"""The ``jetstream`` backend in the daemon: appends go to the shared stream, and every event of
the stream (this daemon's and every other's) is copied, in stream order, into this daemon's
own :class:`~sidecar.log.store.EventStore`.

The copy is a projection of the stream like the task graph or the search index are of a
log: it serves every read (``log.query``, ``log.causality``, search, summaries), and its
commits are what subscriptions, the controller and the indexer are fed, so all of them see
the appends of every daemon, each conversation in seq order, once. An append is answered
once the cluster has acknowledged it *and* this daemon's copy has it: a client that reads
after writing, on the same daemon, sees its write.

How far the copy is (the stream sequence it has everything up to) is saved beside it
(:mod:`sidecar.jetstream.position`), so that a daemon that starts again reads the stream
from there, not from its beginning.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable

import anyio
import structlog

from sidecar.errors import SidecarError, StorageError
from sidecar.jetstream import position
from sidecar.jetstream.log import JetStreamLog
from sidecar.log.aio import AsyncAppender
from sidecar.log.events import AppendResult, Event, NewEvent
from sidecar.log.request import AppendRequest

log = structlog.get_logger("sidecar.jetstream")

POSITION_EVERY_S = 1.0  # the copy's position is saved this often, when it moved
# Events on their way into the copy, at most, before the feed waits for room (until half are in).
COPY_BACKLOG = 10_000


class JetStreamAppender:
    """Every write of a daemon on the ``jetstream`` backend (an :class:`~sidecar.log.aio.Appender`)."""

    def __init__(
        self,
        stream: JetStreamLog,
        copier: AsyncAppender,
        copied: dict[str, int],
        fault: Callable[[str], None],
        data_dir: str,
    ) -> None:
        """``copier`` writes the copy (its store's commits fan out as the file backend's do);
        ``copied`` is each conversation's last seq in the copy at start; ``data_dir`` is
        where the copy's position is kept."""
        self.stream = stream
        self._copier = copier
        self._copied = dict(copied)
        self._data_dir = data_dir
        # Stream seqs on their way into the copy (events handed to its writer or held for it,
        # tombstones being applied): what holds the saved position back, and the feed (COPY_BACKLOG).
        self._busy: set[int] = set()
        self._stuck_at: int | None = None  # the first stream seq a stopped copy did not take
        self._saved = -1  # the position last saved
        # While the stream is read from its beginning: each conversation's last seq there.
        self._streamed: dict[str, int] | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._broken: dict[str, str] = {}  # conversations whose copy stopped following the stream
        self._waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        self._fault = fault
        self._tasks: set[asyncio.Task[None]] = set()
        self._queued: dict[str, int] = {}  # copies handed to the copy's writer, not yet answered
        self._drained: dict[str, asyncio.Event] = {}  # set when a conversation has none queued
        self._held: dict[str, list[tuple[Event, int]]] = {}  # (event, stream seq) of a conversation being forgotten
        self._forgetting: dict[str, asyncio.Task[None]] = {}
        self._in_flight = 0
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        stream.on_event = self._copy
        stream.on_deleted = self._deleted
        stream.pace = self._pace

    async def start(self) -> None:
        """Connect and copy what the stream has and the copy lacks, before serving: from the
        saved position on, else from the stream's beginning."""
        saved = position.load(self._data_dir)
        name = self.stream.config.stream

        def resume(created: str) -> int:
            if saved is not None and (saved.stream, saved.created) == (name, created):
                return saved.stream_seq
            return 0

        self._streamed = {}
        await self.stream.start(resume)
        while self._forgetting:  # conversations deleted while this daemon was away
            await asyncio.wait(list(self._forgetting.values()))
        for cid in list(self._queued):  # the copy has all of it before the daemon serves reads
            if self._queued.get(cid):
                await self._drained.setdefault(cid, asyncio.Event()).wait()
        streamed, self._streamed = self._streamed, None
        if not self.stream.resumed_from:  # read from the beginning: a copy ahead is another stream's
            for cid, seq in self._copied.items():
                if seq > streamed.get(cid, 0):
                    self._stop_copying(cid, f"this daemon's copy is at seq {seq}, the stream at {streamed.get(cid, 0)}")
        log.info("jetstream.copy_caught_up", resumed_from=self.stream.resumed_from, stream_seq=self.stream.applied)

    def position(self) -> int:
        """The stream sequence the copy has every message up to (each copied, or skipped as
        known, or its deletion done)."""
        through = self.stream.applied
        if self._busy:
            through = min(through, min(self._busy) - 1)
        if self._stuck_at is not None:
            through = min(through, self._stuck_at - 1)
        return through

    async def keep_position(self) -> None:
        """Save the copy's position every :data:`POSITION_EVERY_S` it moved (run by the daemon)."""
        while True:
            await anyio.sleep(POSITION_EVERY_S)
            await self._save_position()

    async def _save_position(self) -> None:
        through = self.position()
        if through == self._saved:
            return
        saved = position.Position(stream=self.stream.config.stream, created=self.stream.created, stream_seq=through)
        try:
            await anyio.to_thread.run_sync(position.save, self._data_dir, saved)
        except OSError as exc:  # tried again next time; meanwhile a start reads a little more again
            log.error("jetstream.position_not_saved", error=str(exc))
            return
        self._saved = through

    async def _pace(self) -> None:
        """Hold the feed while the copy has :data:`COPY_BACKLOG` events to take in."""
        if len(self._busy) >= COPY_BACKLOG:
            self._room.clear()
            await self._room.wait()

    def _done(self, stream_seqs: Iterable[int]) -> None:
        """These are in the copy (or dropped): room for the feed again once half the backlog is."""
        self._busy.difference_update(stream_seqs)
        if len(self._busy) <= COPY_BACKLOG // 2:
            self._room.set()

    def _stuck(self, stream_seq: int) -> None:
        """A stopped copy did not take ``stream_seq``: the saved position stays before it, so a
        start after the copy is repaired reads it again."""
        if self._stuck_at is None or stream_seq < self._stuck_at:
            self._stuck_at = stream_seq

    # --- the copy --------------------------------------------------------------------------------

    def _copy(self, event: Event, stream_seq: int) -> None:
        """The stream's next event (any daemon's), in order: into the copy's next batch."""
        cid = event.conversation_id
        if self._streamed is not None:
            self._streamed[cid] = event.seq
        held = self._held.get(cid)
        if held is not None:  # after a tombstone: once the copy of what went is deleted
            held.append((event, stream_seq))
            self._busy.add(stream_seq)
        elif event.seq < self._copied.get(cid, 0):
            return  # the copy has it (a start reads some of the stream again); its newest still
            # goes to the writer, which checks it is the same event
        elif cid in self._broken:
            self._stuck(stream_seq)
        else:
            self._busy.add(stream_seq)
            self._queued[cid] = self._queued.get(cid, 0) + 1
            self._copier.append_soon([], functools.partial(self._copied_one, stream_seq), placed=[event])

    def _deleted(self, cid: str, stream_seq: int) -> None:
        """A tombstone in the stream (log.delete_conversation on any daemon): the copy of the
        conversation is deleted after what was queued before it, and before anything after it."""
        if self._streamed is not None:
            self._streamed[cid] = 0
        held = self._held.get(cid)
        if held is not None:  # deleted again before the first was done: those went too
            self._done(seq for _, seq in held)
            held.clear()
            return
        self._held[cid] = []
        self._busy.add(stream_seq)
        task = asyncio.get_running_loop().create_task(self._forget(cid, stream_seq))
        self._forgetting[cid] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forget(self, cid: str, stream_seq: int) -> None:
        try:
            while self._queued.get(cid):
                await self._drained.setdefault(cid, asyncio.Event()).wait()
            if self._copied.get(cid, 0) or cid in self._broken:
                await self._copier.delete_conversation(cid)  # the daemon forgets its views in order
        except Exception as exc:  # a bug, or the disk: this conversation's copy is stale
            self._stop_copying(cid, f"could not delete it: {exc}")
            self._stuck(stream_seq)
            return
        finally:
            self._forgetting.pop(cid, None)
            held = self._held.pop(cid, [])
            self._done([stream_seq, *(seq for _, seq in held)])  # copied again below, or dropped
        self._copied.pop(cid, None)
        self._broken.pop(cid, None)
        for event, seq in held:
            self._copy(event, seq)

    def _copied_one(self, stream_seq: int, req: AppendRequest) -> None:
        self._done([stream_seq])
        assert req.placed is not None
        event = req.placed[0]
        cid = event.conversation_id
        left = self._queued.get(cid, 1) - 1
        if left:
            self._queued[cid] = left
        else:
            self._queued.pop(cid, None)
            drained = self._drained.pop(cid, None)
            if drained is not None:
                drained.set()
        if req.error is not None:
            self._stop_copying(cid, req.error.message)
            self._stuck(stream_seq)
            return
        if event.seq > self._copied.get(cid, 0):
            self._copied[cid] = event.seq
        waiting = self._waiters.get(cid)
        if waiting:
            still = []
            for seq, future in waiting:
                if seq <= event.seq:
                    if not future.done():
                        future.set_result(None)
                else:
                    still.append((seq, future))
            self._waiters[cid] = still

    def _stop_copying(self, cid: str, why: str) -> None:
        """The copy of ``cid`` no longer follows the stream (written by something else, or
        the stream was made again): it is left as it is, and appends to it fail, rather
        than serve reads that disagree with the stream."""
        if cid in self._broken:
            return
        self._broken[cid] = why
        self._fault("jetstream-copy")
        log.error("jetstream.copy_stopped", conversation_id=cid, reason=why)
        for _, future in self._waiters.pop(cid, []):
            if not future.done():
                future.set_exception(self._copy_failed(cid))

    def _copy_failed(self, cid: str) -> StorageError:
        return StorageError(
            f"the stream has the event, but this daemon's copy of {cid!r} stopped following it "
            f"({self._broken[cid]}); its reads here are stale until the copy is moved aside and the daemon restarted",
            {"conversation_id": cid},
        )

    async def _in_copy(self, cid: str, seq: int) -> None:
        if self._copied.get(cid, 0) >= seq:
            return
        if cid in self._broken:
            raise self._copy_failed(cid)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(cid, []).append((seq, future))
        await future

    # --- appending (the Appender protocol) ---------------------------------------------------------

    async def append_valid(self, new: list[NewEvent]) -> list[AppendResult]:
        if self._closed:
            raise StorageError("the daemon is stopping: nothing was appended")
        self._in_flight += 1
        self._idle.clear()
        try:
            if len(new) == 1:
                results = [await self.stream.append_valid(new[0])]
            else:
                results = await self.stream.append_batch(new)
            for event, result in zip(new, results, strict=True):
                await self._in_copy(event.conversation_id, result.seq)
            return results
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    def append_soon(self, events: list[NewEvent], answer: Callable[[AppendRequest], None]) -> AppendRequest:
        req = AppendRequest(events, sink=self, answer=answer)
        task = asyncio.get_running_loop().create_task(self._settle(req))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return req

    async def _settle(self, req: AppendRequest) -> None:
        try:
            req.results = await self.append_valid(req.events)
        except SidecarError as exc:
            req.error = exc
        except Exception as exc:  # a bug, or the client library's: this append fails, nothing else
            log.exception("jetstream.append_failed")
            req.error = StorageError(f"could not append: {exc}")
        self.deliver([req])

    def deliver(self, done: list[AppendRequest]) -> None:
        for req in done:
            req.give_answer()

    async def delete_conversation(self, cid: str) -> int:
        """Delete ``cid`` for every daemon (a tombstone in the stream); answered once this
        daemon's copy of it is gone too."""
        last = await self.stream.delete(cid)
        forgetting = self._forgetting.get(cid)
        if forgetting is not None:
            await asyncio.shield(forgetting)
        return last

    def depth(self) -> int:
        """Appends on their way to the cluster (``append_queue``)."""
        return self._in_flight

    async def aclose(self) -> None:
        """Take no more appends; wait for those taken, then stop following the stream and
        finish the copy's last writes."""
        while self._tasks:  # the last fast-path appends, answered
            await asyncio.wait(set(self._tasks))
        self._closed = True
        await self._idle.wait()
        await self.stream.close()
        await self._copier.aclose()
        await self._save_position()
