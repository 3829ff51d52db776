"""Appends from an asyncio event loop, through the store's own commit thread.

Requests gather in the loop while the commit thread writes the previous hand-over; at the
end of the turn in which it is answered, they go to the thread together. When their batch
is durable, the thread hands them back, with the batch's events for ``on_commit``, in one
wake-up of the loop (:meth:`AsyncAppender.deliver`), and each is answered there. One
hand-over in flight at a time lets the loop and the thread take turns on the GIL instead
of contending for it, and makes the next batch as big as the wait for the disk allows.
Many coroutines appending at once thus cost one wakeup of the loop per *batch*, where
threads blocking in :meth:`EventStore.append` cost a switch per *event*. This is how the
daemon writes. (asyncio only, uvloop included: anyio's trio backend has no such loop.)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import msgspec
import structlog

from sidecar.errors import SidecarError
from sidecar.log.events import AppendResult, Event, NewEvent, as_new_event
from sidecar.log.request import AppendRequest
from sidecar.log.store import EventStore

log = structlog.get_logger("sidecar.log")


class Appender(Protocol):
    """Every write to the log, as the daemon's handlers and services make it: the storage
    seam. :class:`AsyncAppender` writes this data directory's files; the ``jetstream``
    backend (:class:`sidecar.jetstream.mirror.JetStreamAppender`) a shared stream. Reads are
    always served by an :class:`EventStore`: the log itself, or a copy of the stream."""

    async def append_valid(self, new: list[NewEvent]) -> list[AppendResult]: ...

    def append_soon(self, events: list[NewEvent], answer: Callable[[AppendRequest], None]) -> object: ...

    async def delete_conversation(self, cid: str) -> int: ...

    def depth(self) -> int: ...

    async def aclose(self) -> None: ...


class AsyncAppender:
    """Append to an :class:`EventStore` from async code. Make it in the event loop that
    will use it (it answers there); :meth:`aclose` waits for every answer.

    ``on_commit(events)``, if given, is called in the loop with every durable batch's
    events (whoever appended them), in commit order and before that batch's answers: the
    store's one commit listener is then this appender's."""

    def __init__(
        self,
        store: EventStore,
        on_commit: Callable[[list[Event]], None] | None = None,
        on_forget: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self._on_forget = on_forget
        self._loop = asyncio.get_running_loop()
        self._inbox: list[tuple[Callable[[Any], None], Any]] = []  # from the commit thread
        self._inbox_lock = threading.Lock()
        if on_commit is not None:
            store.on_commit(lambda events: self._post(on_commit, events))
        self._in_flight = 0
        self._gathered: list[AppendRequest] = []  # made since the last hand-over
        self._handed = False  # a hand-over is with the commit thread
        self._waiters = anyio.Event()  # set once the gathered requests are answered
        self._closed = False
        self._drained: anyio.Event | None = None  # exists only while aclose waits

    async def append(self, event: NewEvent | dict[str, Any], *, expected_seq: int | None = None) -> AppendResult:
        new = as_new_event(event)
        if expected_seq is not None:
            new = msgspec.structs.replace(new, expected_seq=expected_seq)
        return (await self.append_valid([new]))[0]

    async def append_many(self, events: Sequence[NewEvent | dict[str, Any]]) -> list[AppendResult]:
        """Append events, all or none, and wait until they are durable."""
        return await self.append_valid([as_new_event(e) for e in events])

    async def append_valid(self, new: list[NewEvent]) -> list[AppendResult]:
        """:meth:`append_many` for events already validated (decoded from a request, or
        built by the daemon itself): they are not checked again."""
        if not new:
            return []
        waiters = self._waiters  # shared by every caller of this turn: one wakeup for all
        req = self.append_soon(new, lambda _req: waiters.set())
        await waiters.wait()
        return req.outcome()

    def append_soon(
        self, events: list[NewEvent], answer: Callable[[AppendRequest], None], *, placed: list[Event] | None = None
    ) -> AppendRequest:
        """Queue events; ``answer(request)`` is called in the event loop once they are durable
        (or failed). No task waits: the cheapest way for a server to append. ``placed``
        events are a replica's copies (:meth:`EventStore.copy`), in place of ``events``."""
        if self._closed:
            raise RuntimeError("the event store is closed")
        req = AppendRequest(events, placed=placed, sink=self, answer=answer)
        self._gathered.append(req)
        if len(self._gathered) == 1 and not self._handed:  # hand them over at this turn's end
            self._loop.call_soon(self._hand_over)
        self._in_flight += 1
        return req

    def _hand_over(self) -> None:
        if self._handed or not self._gathered:
            return
        self._handed = True
        reqs, self._gathered = self._gathered, []
        self._waiters = anyio.Event()
        try:
            self.store.append_requests(reqs)
        except RuntimeError as exc:  # the store was closed under us: answer, never strand
            for req in reqs:
                req.error = SidecarError(str(exc))
            self._answer(reqs)

    async def delete_conversation(self, cid: str) -> int:
        """:meth:`EventStore.delete_conversation`; ``on_forget(cid)`` runs in the loop in
        commit order: after every event of the old conversation, before any of the new."""
        forget = self._on_forget
        then = None if forget is None else (lambda: self._post(forget, cid))
        return await anyio.to_thread.run_sync(lambda: self.store.delete_conversation(cid, then=then))

    def deliver(self, done: list[AppendRequest]) -> None:
        """The commit thread's one call per batch: answer these in the event loop."""
        self._post(self._answer, done)

    def _post(self, fn: Callable[[Any], None], arg: Any) -> None:
        """From the commit thread: run ``fn(arg)`` in the loop. What one batch posts (its
        events, then its answers) is taken in one wake-up of the loop."""
        with self._inbox_lock:
            wake = not self._inbox
            self._inbox.append((fn, arg))
        if wake:
            self._loop.call_soon_threadsafe(self._take_inbox)

    def _take_inbox(self) -> None:
        with self._inbox_lock:
            posted, self._inbox = self._inbox, []
        for fn, arg in posted:
            fn(arg)

    def _answer(self, done: list[AppendRequest]) -> None:
        for req in done:
            req.give_answer()
        self._in_flight -= len(done)
        self._handed = False
        self._hand_over()  # what gathered meanwhile
        if self._drained is not None and not self._in_flight:
            self._drained.set()

    def depth(self) -> int:
        """Requests waiting for the next hand-over to the commit thread (``append_queue``)."""
        return len(self._gathered)

    async def aclose(self) -> None:
        """Take no more appends, and wait until every one taken is answered."""
        self._closed = True
        while self._in_flight:
            self._drained = anyio.Event()
            await self._drained.wait()
        self._drained = None


@asynccontextmanager
async def async_appender(store: EventStore) -> AsyncIterator[AsyncAppender]:
    """An :class:`AsyncAppender` for the duration of the block, closed (drained) after it."""
    appender = AsyncAppender(store)
    try:
        yield appender
    finally:
        await appender.aclose()
