"""One client connection: its reader, its in-flight requests, its subscriptions, its replies.

A :class:`Connection` is an asyncio :class:`~asyncio.Protocol`: the transport hands it bytes
as they arrive and it answers in the same callback wherever it can, so that a request costs
a parse, a call and a write, not a task and its trips through the event loop:

- ``log.append`` joins the next commit batch and is answered from the batch's completion
  (``registry.fast``), all of a batch's answers in one turn of the loop;
- ``inline`` methods (``sys.health``, ``log.get``...) and every malformed request are
  answered in place (:meth:`Registry.call_now`);
- anything else, and whatever would have to wait, runs in a task of its own.

Whatever is answered in one turn leaves in one write. A :class:`Connection` is also the
:class:`~sidecar.api.session.Session` its requests' handlers see; it reaches the daemon only
through :class:`Host`, the few things it needs from it.
"""

from __future__ import annotations

import asyncio
import socket
import time
import typing
from collections import deque
from typing import Any, Protocol

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup

from sidecar.api import registry
from sidecar.api.log import SubscribeParams
from sidecar.api.session import Services
from sidecar.daemon.config import Config
from sidecar.daemon.subscriptions import Hub, Subscription
from sidecar.errors import ConflictError, InvalidParams, OverloadedError
from sidecar.log.filter import as_filter
from sidecar.notifications import SysShutdownParams
from sidecar.rpc.dispatch import BATCH_CONCURRENCY, reply_line
from sidecar.rpc.protocol import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    Framer,
    FrameTooLarge,
    Invalid,
    Limits,
    Message,
    Request,
    encode,
    error_response,
    notification,
    parse_message,
)

log = structlog.get_logger("sidecar.daemon")


class Host(Protocol):
    """What a connection uses of the daemon that serves it."""

    config: Config  # read at each use: SIGHUP replaces sections
    services: Services
    hub: Hub
    limits: Limits
    stopping: bool
    debug: bool
    requests: int

    def fault(self, where: str) -> None: ...


SEND_QUEUE_BYTES = 1024 * 1024  # per connection: past this, replies and notifications wait
FLUSH_BYTES = 64 * 1024  # queued in one turn past this, replies are handed to the transport at once


class Connection(asyncio.Protocol):
    """One client: its reader, its in-flight requests, its subscriptions, its send queue.

    At most ``max_inflight`` requests are in flight: past that, lines wait and the transport
    stops reading. Replies and notifications go through the transport's buffer, bounded at
    ``SEND_QUEUE_BYTES``: past that, the general path and subscriptions wait for it to drain.
    A slow client thus fills only its own queue: its requests wait, we stop reading from it,
    and its subscriptions overflow; nobody else notices.
    """

    def __init__(self, daemon: Host, sock: socket.socket, peer: tuple[int, int, int], number: int) -> None:
        self.daemon = daemon
        self.services = daemon.services
        self.peer = peer
        self.number = number
        self.subscriptions: dict[int, Subscription] = {}
        self._held_groups: dict[int, tuple[str, str]] = {}  # subscription -> (group, conversation) it holds
        self.closed = False
        self._sock: socket.socket | None = sock  # until the transport takes it
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._framer = Framer(daemon.config.server.max_message_bytes)
        self._lines: deque[bytes] = deque()  # complete lines not yet taken
        self._held: tuple[Message, int] | None = None  # parsed, waiting for room (a batch)
        self._pumping = False
        self._reading = True  # until end of stream, bad framing, a timeout or shutdown
        self._paused = False  # the transport is told to stop reading (back-pressure)
        self._last_data = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._timing_line = False  # the timer is a line's (else an idle connection's)
        self._outbox: list[bytes] = []  # lines for the next write
        self._outbox_bytes = 0
        self._flush_soon = False
        self._writable = True  # the transport's buffer is below its high-water mark
        self._room: anyio.Event | None = None  # exists only while a sender waits for room
        self._idle: anyio.Event | None = None  # exists only while serve() waits for answers
        self._done_reading = anyio.Event()
        self._lost = anyio.Event()
        self._size = daemon.config.server.max_inflight
        self.free = self._size  # request slots: a batch takes up to BATCH_CONCURRENCY
        self._requests: TaskGroup | None = None
        self._subs: TaskGroup | None = None

    # --- the Session ---------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.daemon.stopping

    def answered(self, reply: bytes | None) -> None:
        """A fast-path request is done: its reply (if any) is queued and its slot freed."""
        if reply is not None:
            self.send_now(reply)
        self._release(1)

    def subscribe(self, params: SubscribeParams) -> int:
        limit = self.daemon.config.server.max_subscriptions
        if len(self.subscriptions) >= limit:
            raise OverloadedError(
                f"this connection has {len(self.subscriptions)} subscriptions, the most max_subscriptions allows",
                {"max_subscriptions": limit},
            )
        fields = {k: v for k, v in msgspec.structs.asdict(params).items() if v is not None and k != "group"}
        held = None
        if params.group is not None:
            held = self._group_start(params, fields)
        flt = as_filter(fields)
        hub = self.daemon.hub
        sub = Subscription(
            hub.new_id(), flt, self.send, self.daemon.config.server.subscriber_queue, self._ended, self.send_now
        )
        if held is not None:
            self._held_groups[sub.id] = held
            self.services.groups.hold(*held, sub)
        hub.add(sub)
        self.subscriptions[sub.id] = sub
        assert self._subs is not None, "subscribe is answered only while serve() runs"
        self._subs.start_soon(self._run_subscription, sub)
        return sub.id

    def _group_start(self, params: SubscribeParams, fields: dict[str, object]) -> tuple[str, str]:
        """A group's subscription: one conversation, one live subscriber, from after its ack."""
        assert params.group is not None
        if params.conversation_id is None:
            raise InvalidParams(
                "a group's subscription names its conversation_id", {"field": "conversation_id", "group": params.group}
            )
        key = (params.group, params.conversation_id)
        groups = self.services.groups
        if groups.holders.get(key) is not None:
            raise ConflictError(
                f"group {params.group!r} already has a live subscriber for {params.conversation_id!r}; "
                "one at a time, until its connection closes",
                {"group": params.group, "conversation_id": params.conversation_id},
            )
        acked = groups.get(*key)
        fields["from_seq"] = acked + 1 if acked is not None else params.from_seq or 1
        return key

    def unsubscribe(self, sub_id: int) -> bool:
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            return False
        sub.scope.cancel()
        self._ended(sub)
        return True

    # --- sending -------------------------------------------------------------------------------

    def send_now(self, data: bytes) -> None:
        """Queue one line without waiting (for answers, whose number the slots bound); it
        leaves with everything else queued in this turn of the loop, in one write."""
        if self.closed:
            return
        self._outbox.append(data)
        self._outbox_bytes += len(data)
        if self._outbox_bytes >= FLUSH_BYTES:
            self._flush()  # a big turn: the transport's buffer (and its back-pressure) takes over
        elif not self._flush_soon:
            self._flush_soon = True
            self._loop.call_soon(self._flush)

    async def send(self, data: bytes) -> None:
        """Queue one line; waits while this connection's send buffer is full."""
        while not self._writable and not self.closed:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        self.send_now(data)

    def _flush(self) -> None:
        self._flush_soon = False
        if self._outbox and not self.closed and self._transport is not None:
            out, self._outbox, self._outbox_bytes = self._outbox, [], 0
            self._transport.writelines(out)

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._wake_senders()
        if self._held is not None or self._lines:
            self._pump()

    def _wake_senders(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None

    # --- reading -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = typing.cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.set_write_buffer_limits(high=SEND_QUEUE_BYTES)
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception:  # a bug: this connection is dropped, every other one is served
            self.daemon.fault("connection")
            log.exception("daemon.connection_failed", connection=self.number)
            self.stop_reading()
            if self._transport is not None:
                self._transport.abort()

    def _received(self, data: bytes) -> None:
        if not self._reading:
            return
        self._last_data = time.monotonic()
        try:
            lines = self._framer.feed(data)
        except FrameTooLarge:
            limit_bytes = self._framer.max_message_bytes
            reason = f"Invalid Request: message larger than max_message_bytes ({limit_bytes}); closing"
            self.send_now(encode(error_response(None, INVALID_REQUEST, reason)))
            log.warning("daemon.message_too_large", connection=self.number, limit=limit_bytes)
            self.stop_reading()
            return
        if lines:
            self._lines.extend(lines)
            self._pump()
            if self._outbox:
                self._flush()  # what was answered in place leaves now, in one write
        if self._timer is None or (self._framer.pending and not self._timing_line):
            self._arm_timer()  # (an idle connection's timer gives way to a line's shorter one)

    def eof_received(self) -> bool:
        self.stop_reading()
        return True  # half-open: what is in flight is still answered

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._outbox.clear()
        self.stop_reading()
        self._wake_senders()
        self._lost.set()

    def stop_reading(self) -> None:
        """Take no more requests (end of stream, shutdown...); those in flight are answered."""
        if not self._reading:
            return
        self._reading = False
        self._lines.clear()
        self._held = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None and not self.closed and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        self._done_reading.set()

    def _pump(self) -> None:
        """Take waiting lines while there are free slots and the send buffer has room; stop
        reading while there are not (answers given in place would otherwise pile up unsent
        for a client that does not read them)."""
        if self._pumping:
            return  # an answer given while taking a line: the loop below goes on
        self._pumping = True
        try:
            while self._reading and self._writable and (self._held is not None or self._lines):
                if self._held is None:
                    self._held = self._parse(self._lines.popleft())
                message, weight = self._held
                if self.free < weight:
                    break
                self._held = None
                self._take(message, weight)
        finally:
            self._pumping = False
        waiting = self._held is not None or bool(self._lines)
        if waiting != self._paused and self._reading and self._transport is not None and not self.closed:
            self._paused = waiting
            if waiting:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    def _parse(self, line: bytes) -> tuple[Message, int]:
        self.daemon.requests += 1
        message = parse_message(line, self.daemon.limits)
        if self.daemon.debug:
            methods = [getattr(item, "method", None) for item in message.items]
            log.debug("daemon.request", connection=self.number, methods=methods)
        # a batch holds as many slots as it runs members at once
        weight = min(len(message.items), BATCH_CONCURRENCY, self._size) if message.batch else 1
        return message, weight

    def _take(self, message: Message, weight: int) -> None:
        self.free -= weight
        if not message.batch:
            first = message.items[0]
            if isinstance(first, Request):
                fast = registry.fast.get(first.method)
                if fast is not None and fast(first, self):
                    return  # taken: it answers, and frees its slot, when done
                reply = registry.call_now(first, self)
            else:
                reply = error_response(first.id, first.code, first.message)
            if reply is not None:
                self._answer_now(first, reply)
                return
        assert self._requests is not None, "lines are taken only while serve() runs"
        self._requests.start_soon(self._handle, message, weight)

    def _answer_now(self, item: Request | Invalid, reply: dict[str, Any]) -> None:
        if isinstance(item, Request) and item.is_notification:
            self.answered(None)
            return
        self.answered(reply_line(reply, self.daemon.config.server.max_reply_bytes))

    def _release(self, weight: int) -> None:
        self.free += weight
        if self._held is not None or self._lines:
            self._pump()
        elif self._idle is not None and self.free == self._size:
            self._idle.set()

    async def _handle(self, message: Message, weight: int) -> None:
        try:
            reply = await registry.handle(message, self, self.daemon.config.server.max_reply_bytes)
        except Exception:  # a bug outside any handler (encoding a reply, say): answer, go on
            self.daemon.fault("request")
            log.exception("daemon.request_failed", connection=self.number)
            first = message.items[0]
            req_id = None if message.batch or isinstance(first, Invalid) else first.id
            reply = encode(error_response(req_id, INTERNAL_ERROR, "Internal error; the daemon logged it"))
        try:
            if reply is not None:
                await self.send(reply)
        finally:
            self._release(weight)

    # --- timeouts ------------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        """One timer at most, for the nearer of: a line begun must go on arriving within
        ``line_timeout_s``; with ``idle_timeout_s`` set, a connection with nothing in flight
        and nothing subscribed is closed after that long without a line."""
        server = self.daemon.config.server
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._reading:
            return
        self._timing_line = bool(self._framer.pending)
        timeout = server.line_timeout_s if self._timing_line else server.idle_timeout_s
        if timeout:
            self._timer = self._loop.call_later(self._last_data + timeout - time.monotonic(), self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if not self._reading:
            return
        server = self.daemon.config.server
        pending = self._framer.pending
        timeout = server.line_timeout_s if pending else server.idle_timeout_s
        if not timeout:
            return
        if time.monotonic() - self._last_data < timeout:  # data came meanwhile
            self._arm_timer()
            return
        if not pending and not self._is_idle():  # busy (answering, or subscribed): wait again
            self._last_data = time.monotonic()
            self._arm_timer()
            return
        what = "a line begun but not finished" if pending else "an idle connection"
        message = f"Invalid Request: {what} for {timeout:g} s; closing"
        self.send_now(encode(error_response(None, INVALID_REQUEST, message)))
        log.info("daemon.connection_timeout", connection=self.number, reason=what, seconds=timeout)
        self.stop_reading()

    def _is_idle(self) -> bool:
        return not self.subscriptions and self.free == self._size

    # --- the connection's life -----------------------------------------------------------------

    async def serve(self) -> None:
        log.debug("daemon.connection_open", connection=self.number, pid=self.peer[0], uid=self.peer[1])
        sock, self._sock = self._sock, None
        assert sock is not None, "serve() runs once"
        try:
            async with anyio.create_task_group() as subs:
                self._subs = subs
                async with anyio.create_task_group() as requests:
                    self._requests = requests  # before the first byte can arrive
                    try:
                        await self._loop.connect_accepted_socket(lambda: self, sock)
                    except BaseException:
                        sock.close()
                        raise
                    await self._done_reading.wait()
                while self.free < self._size:  # answers still owed by the fast paths
                    self._idle = anyio.Event()
                    await self._idle.wait()
                self._idle = None
                # Reading is over (end of stream, bad framing, a timeout or shutdown), and
                # every request is answered. Subscriptions end with the connection.
                if self.daemon.stopping and self.subscriptions:
                    note = SysShutdownParams(reason="daemon stopping")
                    await self.send(encode(notification("sys.shutdown", note)))
                subs.cancel_scope.cancel()
            self._flush()
            assert self._transport is not None
            self._transport.close()  # once what is queued is written
            await self._lost.wait()
        finally:
            for sub in list(self.subscriptions.values()):
                self._ended(sub)
            self.closed = True
            if self._transport is not None and not self._lost.is_set():
                self._transport.abort()  # cancelled (the daemon's drain ran out): now
            log.debug("daemon.connection_closed", connection=self.number)

    async def _run_subscription(self, sub: Subscription) -> None:
        """A subscription that fails (say, its replay meets a damaged log) ends alone: it
        tells its client where to resume, and the connection and daemon go on."""
        try:
            await sub.run(self.services.store)
        except Exception:
            self.daemon.fault("subscription")
            log.exception("daemon.subscription_failed", connection=self.number, subscription=sub.id)
            await sub.fail()

    def _ended(self, sub: Subscription) -> None:
        self.daemon.hub.remove(sub)
        self.subscriptions.pop(sub.id, None)
        held = self._held_groups.pop(sub.id, None)
        if held is not None:
            self.services.groups.let_go(*held, sub)
