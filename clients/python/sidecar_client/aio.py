"""The async client, on anyio: many calls in flight over one connection, matched by id.

There is no background task: whichever caller is waiting reads for everyone
(and wakes the others), so ``await AsyncClient.connect(path)`` needs no task group.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from anyio.abc import SocketStream

from sidecar_client._common import default_socket_path, unavailable_message
from sidecar_client.client import NotificationHandler
from sidecar_client.codec import DEFAULT_MAX_LINE_BYTES, Codec, Event, Reply
from sidecar_client.errors import ConnectionLost, DaemonUnavailable, ProtocolError, RpcError
from sidecar_client.methods import AsyncMethods

_STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class AsyncClient(AsyncMethods):
    """``client = await AsyncClient.connect(path)``; ``await client.call(...)``; ``await client.close()``.

    ``max_line_bytes``: the longest line accepted from the daemon, newline excluded (default
    :data:`~sidecar_client.codec.DEFAULT_MAX_LINE_BYTES`, 64 MiB, four times the daemon's
    default ``[server] max_reply_bytes``; ``None``: no bound). A longer line raises
    :class:`~sidecar_client.errors.ProtocolError` in every waiting caller, and the
    connection is not used again.
    """

    def __init__(
        self, stream: SocketStream, socket_path: str, *, max_line_bytes: int | None = DEFAULT_MAX_LINE_BYTES
    ) -> None:
        self.socket_path = socket_path
        self._stream = stream
        self._codec = Codec(max_line_bytes)  # the framing, the ids and the subscriptions' queues
        self._replies: dict[int, Reply] = {}  # answers read by one caller for another
        self._reading = False
        self._read_done = anyio.Event()  # set when the current reader has read (or failed)
        self._send_lock = anyio.Lock()
        self._closed: ConnectionError | None = None

    @classmethod
    async def connect(
        cls, socket_path: str | None = None, *, max_line_bytes: int | None = DEFAULT_MAX_LINE_BYTES
    ) -> AsyncClient:
        """Connect to the daemon on ``socket_path`` (default:
        :func:`~sidecar_client.default_socket_path`); ``max_line_bytes`` as for the class."""
        path = socket_path or default_socket_path()
        try:
            stream = await anyio.connect_unix(path)
        except OSError as exc:
            raise DaemonUnavailable(unavailable_message(path, exc)) from exc
        return cls(stream, path, max_line_bytes=max_line_bytes)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = self._closed or ConnectionLost("the client was closed")
        await self._stream.aclose()

    # --- reading, by whoever waits -------------------------------------------------------------

    async def _pump(self, ready: Callable[[], bool]) -> None:
        """Return once ``ready()``, reading for everyone while nobody else is.

        One caller at a time reads what comes, dispatches it, then wakes every other waiter
        (``Event.set`` cannot be cancelled, so a reader that is cancelled still wakes them);
        each of them checks whether its answer came, and one takes over the reading.
        """
        while not ready():
            if self._closed is not None:
                raise self._closed
            if self._reading:
                await self._read_done.wait()
                continue
            self._reading = True
            self._read_done = anyio.Event()
            try:
                # Dispatched before anyone else may read: nobody starts reading for a
                # message that is already in hand.
                for event in await self._read_events():
                    if isinstance(event, Reply) and event.id is not None:
                        self._replies[event.id] = event
                    # Notifications are queued by the codec; a reply with a null id answers
                    # nobody here: the connection closes after it.
            finally:
                self._reading = False
                self._read_done.set()

    async def _read_events(self) -> list[Event]:
        """The messages the next bytes complete: at least one."""
        while True:
            try:
                data = await self._stream.receive(65536)
            except (anyio.EndOfStream, *_STREAM_ERRORS):
                self._closed = self._closed or ConnectionLost(f"the daemon on {self.socket_path} closed the connection")
                raise self._closed from None
            try:
                events = self._codec.feed(data)
            except ProtocolError as exc:
                self._closed = self._closed or exc
                raise
            if events:
                return events

    # --- calls -----------------------------------------------------------------------------------

    async def _send(self, line: bytes) -> None:
        if self._closed is not None:
            raise self._closed
        async with self._send_lock:
            try:
                await self._stream.send(line)
            except _STREAM_ERRORS as exc:
                raise ConnectionLost(f"lost the connection to {self.socket_path}: {exc}") from exc

    async def _request(self, req_id: int, line: bytes) -> Reply:
        """Send one request and wait for its reply (error or result)."""
        try:
            await self._send(line)
            await self._pump(lambda: req_id in self._replies)
            return self._replies.pop(req_id)
        finally:
            self._codec.abandon(req_id)  # a reply that comes later is dropped
            late = self._replies.pop(req_id, None)  # answered, but the caller was cancelled
            if late is not None and late.opened_subscription:
                await self._abandon(late.result.get("subscription"))

    async def _abandon(self, sub: Any) -> None:
        """Drop a subscription nobody will read (its subscriber is gone)."""
        self._codec.close_subscription(sub)
        if self._closed is None:
            with anyio.CancelScope(shield=True):
                try:
                    await self.notify("log.unsubscribe", {"subscription": sub})
                except ConnectionError:
                    pass

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Call ``method``; many calls may be in flight at once."""
        return (await self._request(*self._codec.request(method, params))).unwrap()

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a notification: no answer is owed."""
        await self._send(self._codec.notification(method, params))

    async def subscribe(
        self, params: dict[str, Any] | None = None, *, on_notification: NotificationHandler | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Events as they come (``async for``); leaving the loop unsubscribes.

        Yields events only, as :meth:`Client.subscribe <sidecar_client.Client.subscribe>`
        does: the subscription's other notifications (``narrator.delta``, ``log.overflow``,
        ``sys.shutdown``, any later kind) go to ``on_notification(method, params)`` when given
        (a plain function or a coroutine function) and are skipped otherwise; ``log.overflow``
        then raises :class:`RpcError` -32005 and ``sys.shutdown`` ends the iteration.
        """
        # The codec opens the subscription's queue as the answer is read (maybe by another
        # caller): the events that follow it at once are kept.
        sub = (await self._request(*self._codec.subscribe_request(params or {}))).unwrap()["subscription"]
        try:
            while True:
                await self._pump(lambda: self._codec.queued(sub) > 0)
                note = self._codec.next_notification(sub)
                assert note is not None  # queued() said so
                if note.event is not None:
                    yield note.event
                    continue
                if on_notification is not None:
                    told = on_notification(note.method, note.params)
                    if inspect.isawaitable(told):
                        await told
                if note.ends_subscription():  # sys.shutdown; log.overflow raises RpcError -32005
                    return
        finally:
            self._codec.close_subscription(sub)
            if self._closed is None:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.call("log.unsubscribe", {"subscription": sub})
                    except (RpcError, ConnectionError):
                        pass
