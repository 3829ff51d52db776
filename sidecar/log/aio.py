"""Group commit for async callers, through the store's own commit thread.

Coroutines queue into an open batch; a flusher task hands each batch to the commit thread
and is woken once, by one call into the event loop, when the batch is durable. Many
coroutines appending at once thus cost one wakeup per *batch*, where threads blocking in
:meth:`EventStore.append` cost a switch per *event*. This is how the daemon writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import structlog
from anyio.abc import TaskStatus

from sidecar.log.committer import AppendRequest
from sidecar.log.events import AppendResult, NewEvent, as_new_event
from sidecar.log.store import EventStore

log = structlog.get_logger("sidecar.log")


class _Batch:
    """Requests that will be committed together, the one event that wakes their waiters,
    and the callbacks of those who chose to be called instead of waiting."""

    __slots__ = ("requests", "done", "callbacks")

    def __init__(self) -> None:
        self.requests: list[AppendRequest] = []
        self.done = anyio.Event()
        self.callbacks: list[tuple[AppendRequest, Callable[[AppendRequest], None]]] = []


class AsyncAppender:
    """Append to an :class:`EventStore` from async code; use :func:`async_appender` to run it."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._open = _Batch()
        self._wakeup = anyio.Event()
        self._closed = False

    async def append(self, event: NewEvent | dict[str, Any], *, expected_seq: int | None = None) -> AppendResult:
        new = as_new_event(event)
        if expected_seq is not None:
            new.expected_seq = expected_seq
        return (await self.submit([new]))[0]

    async def append_many(self, events: Sequence[NewEvent | dict[str, Any]]) -> list[AppendResult]:
        return await self.submit([as_new_event(e) for e in events])

    async def submit(self, events: list[NewEvent]) -> list[AppendResult]:
        """Queue validated events for the next batch and wait until they are durable."""
        if self._closed:
            raise RuntimeError("the event store is closed")
        if not events:
            return []
        req = AppendRequest(events, blocking=False)
        batch = self._open
        batch.requests.append(req)
        self._wakeup.set()
        await batch.done.wait()
        return req.outcome()

    def submit_soon(self, events: list[NewEvent], answer: Callable[[AppendRequest], None]) -> None:
        """Queue validated events; ``answer(request)`` is called in the event loop once they
        are durable (or failed). No task waits: the cheapest way for a server to append."""
        if self._closed:
            raise RuntimeError("the event store is closed")
        req = AppendRequest(events, blocking=False)
        batch = self._open
        batch.requests.append(req)
        batch.callbacks.append((req, answer))
        self._wakeup.set()

    def depth(self) -> int:
        """Requests waiting for the next batch."""
        return len(self._open.requests)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The flusher task: hand each batch to the commit thread, wake its callers, repeat."""
        token = anyio.lowlevel.current_token()
        task_status.started()
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            batch, self._open = self._open, _Batch()
            if batch.requests:
                durable = anyio.Event()
                # The commit thread finishes requests in order, so the last one's callback
                # means the whole batch is answered. (run_sync_soon: anyio's non-blocking
                # call into an event loop, the one its own BlockingPortal uses.)
                batch.requests[-1].on_done = lambda done=durable: token.backend_class.run_sync_soon(
                    done.set, (), token.native_token
                )
                self.store.enqueue(batch.requests)
                # Shielded: once a batch is handed to the disk, its callers get their answer.
                with anyio.CancelScope(shield=True):
                    await durable.wait()
                for req, answer in batch.callbacks:
                    try:
                        answer(req)
                    except Exception:
                        log.exception("log.answer_failed")
                batch.done.set()
            if self._closed and not self._open.requests:
                return

    async def aclose(self) -> None:
        """Stop taking requests; the writer task finishes what is queued and returns."""
        self._closed = True
        self._wakeup.set()


@asynccontextmanager
async def async_appender(store: EventStore) -> AsyncIterator[AsyncAppender]:
    """Run an :class:`AsyncAppender`'s writer task for the duration of the block."""
    appender = AsyncAppender(store)
    async with anyio.create_task_group() as tg:
        await tg.start(appender.run)
        try:
            yield appender
        finally:
            await appender.aclose()
