"""One client connection: its reader, its in-flight requests, its subscriptions, its replies.

A :class:`Connection` is the :class:`~sidecar.api.session.Session` its requests' handlers
see. It reaches the daemon only through :class:`Host`, the few things it needs from it.
"""

from __future__ import annotations

from typing import Protocol

import anyio
import msgspec
import structlog
from anyio.abc import SocketStream, TaskGroup

from sidecar.api import registry
from sidecar.api.log import SubscribeParams
from sidecar.api.session import Services
from sidecar.daemon.config import Config
from sidecar.daemon.subscriptions import Hub, Subscription
from sidecar.errors import OverloadedError
from sidecar.log.filter import as_filter
from sidecar.notifications import SysShutdownParams
from sidecar.rpc.dispatch import BATCH_CONCURRENCY
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


class _Slots:
    """A counting limit that yields to the event loop only when it must wait.

    (``anyio.Semaphore.acquire`` checkpoints twice even when a slot is free: on the hot
    path of every request that is two trips through the event loop for nothing.)
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._freed: anyio.Event | None = None  # exists only while someone waits

    async def acquire(self) -> None:
        while self.free <= 0:
            if self._freed is None:
                self._freed = anyio.Event()
            await self._freed.wait()
        self.free -= 1

    def release(self) -> None:
        self.free += 1
        if self._freed is not None:
            self._freed.set()
            self._freed = None

    async def drained(self) -> None:
        """Until every slot is free again (nothing in flight)."""
        while self.free < self.size:
            if self._freed is None:
                self._freed = anyio.Event()
            await self._freed.wait()


class Connection:
    """One client: its reader, its in-flight requests, its subscriptions, its send queue.

    Replies and notifications go into a bounded queue that one writer task flushes, many
    lines per write. A slow client fills only its own queue: its requests then wait, the
    reader stops reading from it, and its subscriptions overflow; nobody else notices.
    """

    def __init__(self, daemon: Host, stream: SocketStream, peer: tuple[int, int, int], number: int) -> None:
        self.daemon = daemon
        self.services = daemon.services
        self.stream = stream
        self.peer = peer
        self.number = number
        self.subscriptions: dict[int, Subscription] = {}
        self.reading = anyio.CancelScope()
        self.closed = False
        self._subs_tg: TaskGroup | None = None
        self._outbox: list[bytes] = []
        self._queued = 0
        self._has_output = anyio.Event()
        self._room: anyio.Event | None = None  # exists only while a sender waits for room
        self._finishing = False
        self.slots = _Slots(daemon.config.server.max_inflight)  # requests in flight

    async def send(self, data: bytes) -> None:
        """Queue one line for the writer; waits while this connection's queue is full."""
        while self._queued >= SEND_QUEUE_BYTES and not self.closed:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        self.send_now(data)

    @property
    def stopping(self) -> bool:
        return self.daemon.stopping

    def answered(self, reply: bytes | None) -> None:
        """A fast-path request is done: its reply (if any) is queued and its slot freed."""
        if reply is not None:
            self.send_now(reply)
        self.slots.release()

    def send_now(self, data: bytes) -> None:
        """Queue one line without waiting: for answers, whose number ``slots`` bounds."""
        if self.closed:
            return
        self._outbox.append(data)
        self._queued += len(data)
        self._has_output.set()

    async def _writer(self) -> None:
        while True:
            if not self._outbox:
                if self._finishing or self.closed:
                    return
                await self._has_output.wait()
                self._has_output = anyio.Event()
                continue
            chunk = b"".join(self._outbox)
            self._outbox.clear()
            self._queued = 0
            self._wake_senders()
            try:
                await self.stream.send(chunk)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                self.closed = True
                self._wake_senders()
                self.reading.cancel()
                return

    def _wake_senders(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None

    def subscribe(self, params: SubscribeParams) -> int:
        limit = self.daemon.config.server.max_subscriptions
        if len(self.subscriptions) >= limit:
            raise OverloadedError(
                f"this connection has {len(self.subscriptions)} subscriptions, the most max_subscriptions allows",
                {"max_subscriptions": limit},
            )
        fields = {k: v for k, v in msgspec.structs.asdict(params).items() if v is not None}
        flt = as_filter(fields)
        hub = self.daemon.hub
        sub = Subscription(
            hub.new_id(), flt, self.send, self.daemon.config.server.subscriber_queue, self._ended, self.send_now
        )
        hub.add(sub)
        self.subscriptions[sub.id] = sub
        assert self._subs_tg is not None, "subscribe is answered only while serve() runs"
        self._subs_tg.start_soon(self._run_subscription, sub)
        return sub.id

    async def _run_subscription(self, sub: Subscription) -> None:
        """A subscription that fails (say, its replay meets a damaged log) ends alone: it
        tells its client where to resume, and the connection and daemon go on."""
        try:
            await sub.run(self.services.store)
        except Exception:
            self.daemon.fault("subscription")
            log.exception("daemon.subscription_failed", connection=self.number, subscription=sub.id)
            await sub.fail()

    def unsubscribe(self, sub_id: int) -> bool:
        sub = self.subscriptions.get(sub_id)
        if sub is None:
            return False
        sub.scope.cancel()
        self._ended(sub)
        return True

    def _ended(self, sub: Subscription) -> None:
        self.daemon.hub.remove(sub)
        self.subscriptions.pop(sub.id, None)

    async def serve(self) -> None:
        log.debug("daemon.connection_open", connection=self.number, pid=self.peer[0], uid=self.peer[1])
        framer = Framer(self.daemon.config.server.max_message_bytes)
        try:
            async with anyio.create_task_group() as io:
                io.start_soon(self._writer)
                async with anyio.create_task_group() as subs:
                    self._subs_tg = subs
                    async with anyio.create_task_group() as requests:
                        with self.reading:
                            await self._read(framer, requests)
                        await self.slots.drained()  # answers still owed by fast paths
                    # Reading is over (end of stream, bad framing, or shutdown); in-flight
                    # requests have finished above. Subscriptions end with the connection.
                    if self.daemon.stopping and self.subscriptions:
                        note = SysShutdownParams(reason="daemon stopping")
                        await self.send(encode(notification("sys.shutdown", note)))
                    subs.cancel_scope.cancel()
                self._finishing = True  # the writer flushes what is queued, then ends
                self._has_output.set()
        finally:
            for sub in list(self.subscriptions.values()):
                self._ended(sub)
            self.closed = True
            await self.stream.aclose()
            log.debug("daemon.connection_closed", connection=self.number)

    def _idle(self) -> bool:
        return not self.subscriptions and self.slots.free == self.slots.size

    async def _receive(self, framer: Framer) -> bytes | None:
        """The next bytes from the peer; ``None`` once it is gone, or has timed out (told why).

        A line begun must be finished within ``line_timeout_s``; with ``idle_timeout_s`` set,
        a connection with nothing in flight and nothing subscribed is closed after that long."""
        server = self.daemon.config.server
        while True:
            timeout = server.line_timeout_s if framer.pending else (server.idle_timeout_s or None)
            try:
                if timeout is None:  # the hot path: no cancel scope to set up
                    return await self.stream.receive(65536)
                with anyio.move_on_after(timeout):
                    return await self.stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return None
            if framer.pending or self._idle():
                break  # otherwise busy (answering, or subscribed): not idle, wait again
        what = "a line begun but not finished" if framer.pending else "an idle connection"
        message = f"Invalid Request: {what} for {timeout:g} s; closing"
        await self.send(encode(error_response(None, INVALID_REQUEST, message)))
        log.info("daemon.connection_timeout", connection=self.number, reason=what, seconds=timeout)
        return None

    async def _read(self, framer: Framer, requests: TaskGroup) -> None:
        limits = self.daemon.limits
        while True:
            data = await self._receive(framer)
            if data is None:
                return
            try:
                lines = framer.feed(data)
            except FrameTooLarge:
                limit_bytes = framer.max_message_bytes
                reason = f"Invalid Request: message larger than max_message_bytes ({limit_bytes}); closing"
                await self.send(encode(error_response(None, INVALID_REQUEST, reason)))
                log.warning("daemon.message_too_large", connection=self.number, limit=limit_bytes)
                return
            for line in lines:
                await self.slots.acquire()  # back-pressure: stop reading while too many are in flight
                self.daemon.requests += 1
                message = parse_message(line, limits)
                if self.daemon.debug:
                    methods = [getattr(item, "method", None) for item in message.items]
                    log.debug("daemon.request", connection=self.number, methods=methods)
                first = message.items[0]
                if not message.batch and isinstance(first, Request):
                    fast = registry.fast.get(first.method)
                    if fast is not None and fast(first, self):
                        continue  # taken: it answers, and frees its slot, when done
                weight = 1
                if message.batch:  # a batch holds as many slots as it runs members at once
                    weight = min(len(message.items), BATCH_CONCURRENCY, self.slots.size)
                    for _ in range(weight - 1):
                        await self.slots.acquire()
                requests.start_soon(self._handle, message, weight)

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
            for _ in range(weight):
                self.slots.release()
