"""Catch-up subscriptions: replay from ``from_seq``, then live, with no gap and no duplicate.

While a subscription replays history from disk, newly committed events are parked; when the
replay reaches the end, the parked events it has not already sent are queued, and from then
on every commit is queued as it is published. Both switches happen without an ``await`` in
between, so nothing can slip through. Each subscription's queue is bounded: a subscriber too
slow to keep up gets ``log.overflow`` with where to resume, and is dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Literal

import anyio
import msgspec
import structlog

from sidecar.log.events import Event
from sidecar.log.filter import Matcher, QueryFilter
from sidecar.log.store import EventStore
from sidecar.notifications import LogEventParams, LogOverflowParams
from sidecar.rpc.protocol import encode, notification

log = structlog.get_logger("sidecar.daemon")

_REPLAY_PAGE = 500


class Subscription:
    def __init__(
        self,
        sub_id: int,
        flt: QueryFilter,
        send: Callable[[bytes], Awaitable[None]],
        limit: int,
        on_end: Callable[[Subscription], None],
        send_now: Callable[[bytes], None] | None = None,
    ) -> None:
        self.id = sub_id
        self.filter = flt
        self._send = send
        self.send_now = send_now  # for notifications that must not wait (narrator.delta)
        self._limit = limit
        self._on_end = on_end
        self._match = Matcher(flt)  # the same matching as log.query
        self.live = flt.from_seq is None  # nothing to replay: live at once
        self._parked: list[Event] = []
        self._outbox: deque[Event] = deque()
        self._wakeup = anyio.Event()
        self._sent: dict[str, int] = {}  # conversation -> last seq sent
        self._queued: dict[str, int] = {}  # conversation -> last seq queued or sent
        self.overflowed: dict[str, int] | None = None
        self.scope = anyio.CancelScope()

    def matches(self, event: Event) -> bool:
        return self._match.matches(event)

    def forget(self, cid: str) -> None:
        """``cid`` was deleted: its seqs start again at 1, so what was sent of it says nothing."""
        self._sent.pop(cid, None)
        self._queued.pop(cid, None)

    def offer(self, event: Event) -> None:
        """A newly committed event (called in the event loop, in commit order)."""
        if self.overflowed is not None or not self.matches(event):
            return
        if not self.live:
            if len(self._parked) >= self._limit:
                self._overflow()
            else:
                self._parked.append(event)
            return
        self._queue(event)

    def _queue(self, event: Event) -> None:
        if event.seq <= self._queued.get(event.conversation_id, 0):
            return  # already sent by the replay
        if len(self._outbox) >= self._limit:
            self._overflow()
            return
        self._outbox.append(event)
        self._queued[event.conversation_id] = event.seq
        self._wakeup.set()

    def _overflow(self) -> None:
        # Where each conversation resumes: the first event dropped here (refined at sending
        # time, once the delivery in progress has gone out).
        self.overflowed = {}
        for event in [*self._outbox, *self._parked]:
            self.overflowed.setdefault(event.conversation_id, event.seq)
        self._outbox.clear()
        self._parked.clear()
        self._on_end(self)  # dropped now; the notice goes out when the socket lets it
        self._wakeup.set()

    async def run(self, store: EventStore) -> None:
        """Replay, go live, deliver until cancelled or overflowed."""
        try:
            with self.scope:
                if not self.live:
                    await self._replay(store)
                    for event in self._parked:  # no await from here to `live = True`
                        self._queue(event)
                    self._parked.clear()
                    self.live = True
                while True:
                    while self._outbox:
                        await self._deliver(self._outbox.popleft())
                    if self.overflowed is not None:
                        await self._send_overflow()
                        return
                    await self._wakeup.wait()
                    self._wakeup = anyio.Event()
        finally:
            self._on_end(self)

    async def _replay(self, store: EventStore) -> None:
        params = {k: v for k, v in msgspec.structs.asdict(self.filter).items() if v is not None}
        params["limit"] = _REPLAY_PAGE
        cursor: str | None = None
        while self.overflowed is None:
            page = await anyio.to_thread.run_sync(store.query, {**params, "cursor": cursor})
            for event in page.events:
                self._queued[event.conversation_id] = event.seq
                await self._deliver(event)
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def _deliver(self, event: Event) -> None:
        await self._send(encode(notification("log.event", LogEventParams(subscription=self.id, event=event))))
        self._sent[event.conversation_id] = event.seq

    async def fail(self) -> None:
        """This subscription broke (its replay met a damaged log, say): end it alone, and
        tell the client where to resume, as an overflow does."""
        self._on_end(self)
        if self.overflowed is None:
            self.overflowed = {}
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self._send_overflow(reason="error")

    async def _send_overflow(self, reason: Literal["overflow", "error"] = "overflow") -> None:
        assert self.overflowed is not None
        resume = {cid: seq + 1 for cid, seq in self._sent.items()}
        for cid, seq in self.overflowed.items():
            resume.setdefault(cid, seq)
        self.overflowed = resume
        params = LogOverflowParams(subscription=self.id, resume_from=resume, reason=reason)
        theirs = self.filter.conversation_id
        if theirs is not None:
            params.conversation_id = theirs
            params.from_seq = self.overflowed.get(theirs, self.filter.from_seq or 1)
        log.warning("daemon.subscriber_overflow", subscription=self.id, resume_from=self.overflowed)
        await self._send(encode(notification("log.overflow", params)))


class Hub:
    """Every live subscription of the daemon; commits are published to it in order.

    Subscriptions are filed by the conversation they follow (``None``: all of them), so a
    commit costs work for the subscribers that can want it, not for every subscriber."""

    def __init__(self) -> None:
        self.subscriptions: dict[int, Subscription] = {}
        self._by_conversation: dict[str | None, dict[int, Subscription]] = {}
        self._next = 0

    def new_id(self) -> int:
        self._next += 1
        return self._next

    def add(self, sub: Subscription) -> None:
        self.subscriptions[sub.id] = sub
        self._by_conversation.setdefault(sub.filter.conversation_id, {})[sub.id] = sub

    def remove(self, sub: Subscription) -> None:
        if self.subscriptions.pop(sub.id, None) is None:
            return
        cid = sub.filter.conversation_id
        filed = self._by_conversation.get(cid)
        if filed is not None:
            filed.pop(sub.id, None)
            if not filed:
                del self._by_conversation[cid]

    def _interested(self, cid: str) -> list[Subscription]:
        subs = list(self._by_conversation.get(cid, {}).values())
        return subs + list(self._by_conversation.get(None, {}).values())

    def publish(self, events: list[Event]) -> None:
        by_cid: dict[str, list[Event]] = {}
        for event in events:
            by_cid.setdefault(event.conversation_id, []).append(event)
        for cid, group in by_cid.items():
            for sub in list(self._by_conversation.get(cid, {}).values()):
                for event in group:
                    sub.offer(event)
        for sub in list(self._by_conversation.get(None, {}).values()):  # all of them, in commit order
            for event in events:
                sub.offer(event)

    def forget(self, cid: str) -> None:
        """Conversation ``cid`` was deleted (see :meth:`Subscription.forget`)."""
        for sub in self._interested(cid):
            sub.forget(cid)

    def notify(self, cid: str, method: str, params: Callable[[int], msgspec.Struct]) -> None:
        """Tell every subscriber of conversation ``cid`` something that is not an event;
        ``params(subscription)`` makes the notification's params for each."""
        for sub in self._interested(cid):
            if sub.send_now is not None:
                sub.send_now(encode(notification(method, params(sub.id))))
