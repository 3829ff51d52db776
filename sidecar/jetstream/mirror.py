"""The ``jetstream`` backend in the daemon: appends go to the shared stream, and every event of
the stream (this daemon's and every other's) is copied, in stream order, into this daemon's
own :class:`~sidecar.log.store.EventStore`.

The copy is a projection of the stream like the task graph or the search index are of a
log: it serves every read (``log.query``, ``log.causality``, search, summaries), and its
commits are what subscriptions, the controller and the indexer are fed, so all of them see
the appends of every daemon, each conversation in seq order, once. An append is answered
once the cluster has acknowledged it *and* this daemon's copy has it: a client that reads
after writing, on the same daemon, sees its write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from sidecar.errors import SidecarError, StorageError
from sidecar.jetstream.log import JetStreamLog
from sidecar.log.aio import AsyncAppender
from sidecar.log.events import AppendResult, Event, NewEvent
from sidecar.log.request import AppendRequest

log = structlog.get_logger("sidecar.jetstream")


class JetStreamAppender:
    """Every write of a daemon on the ``jetstream`` backend (an :class:`~sidecar.log.aio.Appender`)."""

    def __init__(
        self,
        stream: JetStreamLog,
        copier: AsyncAppender,
        copied: dict[str, int],
        fault: Callable[[str], None],
    ) -> None:
        """``copier`` writes the copy (its store's commits fan out as the file backend's do);
        ``copied`` is each conversation's last seq in the copy at start."""
        self.stream = stream
        self._copier = copier
        self._copied = dict(copied)
        self._broken: dict[str, str] = {}  # conversations whose copy stopped following the stream
        self._waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        self._fault = fault
        self._tasks: set[asyncio.Task[None]] = set()
        self._queued: dict[str, int] = {}  # copies handed to the copy's writer, not yet answered
        self._drained: dict[str, asyncio.Event] = {}  # set when a conversation has none queued
        self._held: dict[str, list[Event]] = {}  # events of a conversation being forgotten, in order
        self._forgetting: dict[str, asyncio.Task[None]] = {}
        self._in_flight = 0
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        stream.on_event = self._copy
        stream.on_deleted = self._deleted

    async def start(self) -> None:
        """Connect and copy what the stream has and the copy lacks, before serving."""
        await self.stream.start()
        while self._forgetting:  # conversations deleted while this daemon was away
            await asyncio.wait(list(self._forgetting.values()))
        for cid in list(self._queued):  # the copy has all of it before the daemon serves reads
            if self._queued.get(cid):
                await self._drained.setdefault(cid, asyncio.Event()).wait()
        for cid, seq in self._copied.items():
            if seq > self.stream.last_seq(cid):
                self._stop_copying(
                    cid, f"this daemon's copy is at seq {seq}, the stream at {self.stream.last_seq(cid)}"
                )

    # --- the copy --------------------------------------------------------------------------------

    def _copy(self, event: Event) -> None:
        """The stream's next event (any daemon's), in order: into the copy's next batch."""
        cid = event.conversation_id
        held = self._held.get(cid)
        if held is not None:  # after a tombstone: once the copy of what went is deleted
            held.append(event)
        elif event.seq < self._copied.get(cid, 0):
            return  # the copy has it (a restart replays the stream); its newest still goes to the
            # writer, which checks it is the same event
        elif cid not in self._broken:
            self._queued[cid] = self._queued.get(cid, 0) + 1
            self._copier.append_soon([], self._copied_one, placed=[event])

    def _deleted(self, cid: str) -> None:
        """A tombstone in the stream (log.delete_conversation on any daemon): the copy of the
        conversation is deleted after what was queued before it, and before anything after it."""
        if cid in self._held:
            self._held[cid] = []  # deleted again before the first was done: those went too
            return
        self._held[cid] = []
        task = asyncio.get_running_loop().create_task(self._forget(cid))
        self._forgetting[cid] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forget(self, cid: str) -> None:
        try:
            while self._queued.get(cid):
                await self._drained.setdefault(cid, asyncio.Event()).wait()
            if self._copied.get(cid, 0) or cid in self._broken:
                await self._copier.delete_conversation(cid)  # the daemon forgets its views in order
        except Exception as exc:  # a bug, or the disk: this conversation's copy is stale
            self._stop_copying(cid, f"could not delete it: {exc}")
            return
        finally:
            self._forgetting.pop(cid, None)
            held = self._held.pop(cid, [])
        self._copied.pop(cid, None)
        self._broken.pop(cid, None)
        for event in held:
            self._copy(event)

    def _copied_one(self, req: AppendRequest) -> None:
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
