"""Appends from an event loop, through the store's own commit thread.

A request goes straight to the commit thread's queue; when its batch is durable, the
thread hands this appender all of the batch's requests in one call into the loop
(:meth:`AsyncAppender.deliver`), and each is answered there. Many coroutines appending at
once thus cost one wakeup of the loop per *batch*, where threads blocking in
:meth:`EventStore.append` cost a switch per *event*. This is how the daemon writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import structlog

from sidecar.log.events import AppendResult, NewEvent, as_new_event
from sidecar.log.request import AppendRequest
from sidecar.log.store import EventStore

log = structlog.get_logger("sidecar.log")


class AsyncAppender:
    """Append to an :class:`EventStore` from async code. Make it in the event loop that
    will use it (it answers there); :meth:`aclose` waits for every answer."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._token = anyio.lowlevel.current_token()
        self._in_flight = 0
        self._closed = False
        self._drained: anyio.Event | None = None  # exists only while aclose waits

    async def append(self, event: NewEvent | dict[str, Any], *, expected_seq: int | None = None) -> AppendResult:
        new = as_new_event(event)
        if expected_seq is not None:
            new = msgspec.structs.replace(new, expected_seq=expected_seq)
        return (await self.append_many([new]))[0]

    async def append_many(self, events: Sequence[NewEvent | dict[str, Any]]) -> list[AppendResult]:
        """Append events, all or none, and wait until they are durable."""
        if not events:
            return []
        done = anyio.Event()
        req = self.append_soon([as_new_event(e) for e in events], lambda _req: done.set())
        await done.wait()
        return req.outcome()

    def append_soon(self, events: list[NewEvent], answer: Callable[[AppendRequest], None]) -> AppendRequest:
        """Queue events; ``answer(request)`` is called in the event loop once they are durable
        (or failed). No task waits: the cheapest way for a server to append."""
        if self._closed:
            raise RuntimeError("the event store is closed")
        req = AppendRequest(events, sink=self, answer=answer)
        self.store.append_requests([req])
        self._in_flight += 1
        return req

    def deliver(self, done: list[AppendRequest]) -> None:
        """The commit thread's one call per batch: answer these in the event loop."""
        self._token.backend_class.run_sync_soon(self._answer, (done,), self._token.native_token)

    def _answer(self, done: list[AppendRequest]) -> None:
        for req in done:
            assert req.answer is not None
            try:
                req.answer(req)
            except Exception:
                log.exception("log.answer_failed")
        self._in_flight -= len(done)
        if self._drained is not None and not self._in_flight:
            self._drained.set()

    def depth(self) -> int:
        """Requests handed to the commit thread and not answered yet."""
        return self._in_flight

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
