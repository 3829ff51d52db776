"""Group commit for async callers: a writer task owns the queue, one worker-thread hop per batch.

Many coroutines appending at once cost one thread switch per *batch* here, where threads
blocking in :meth:`EventStore.append` cost one per *event*. This is how the daemon writes.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from sidecar.log.events import AppendResult, NewEvent, as_new_event
from sidecar.log.store import EventStore
from sidecar.log.writer import AppendRequest


class _Waiter:
    __slots__ = ("request", "event")

    def __init__(self, request: AppendRequest) -> None:
        self.request = request
        self.event = anyio.Event()


class AsyncAppender:
    """Append to an :class:`EventStore` from async code; use :func:`async_appender` to run it."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        send, receive = anyio.create_memory_object_stream[_Waiter](max_buffer_size=math.inf)
        self._send: MemoryObjectSendStream[_Waiter] = send
        self._receive: MemoryObjectReceiveStream[_Waiter] = receive

    async def append(self, event: NewEvent | dict[str, Any], *, expected_seq: int | None = None) -> AppendResult:
        new = as_new_event(event)
        if expected_seq is not None:
            new.expected_seq = expected_seq
        return (await self.submit([new]))[0]

    async def append_many(self, events: Sequence[NewEvent | dict[str, Any]]) -> list[AppendResult]:
        return await self.submit([as_new_event(e) for e in events])

    async def submit(self, events: list[NewEvent]) -> list[AppendResult]:
        """Queue validated events for the next batch and wait until they are durable."""
        if not events:
            return []
        waiter = _Waiter(AppendRequest(events))
        await self._send.send(waiter)
        await waiter.event.wait()
        return waiter.request.outcome()

    def depth(self) -> int:
        """Requests waiting for the next batch."""
        return self._receive.statistics().current_buffer_used

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer task: take everything queued, commit it in a worker thread, answer, repeat."""
        task_status.started()
        async with self._receive:
            async for first in self._receive:
                batch = [first]
                while True:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                # Shielded: once a batch is handed to the disk, its callers get their answer.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.store.commit, [w.request for w in batch])
                for waiter in batch:
                    waiter.event.set()

    async def aclose(self) -> None:
        """Stop taking requests; the writer task finishes what is queued and returns."""
        await self._send.aclose()


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
