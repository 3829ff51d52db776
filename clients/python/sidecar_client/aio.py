"""The async client, on anyio: many calls in flight over one connection, matched by id.

There is no background task: whichever caller is waiting reads the next line for everyone
(and wakes the others), so ``await AsyncClient.connect(path)`` needs no task group.
"""

from __future__ import annotations

import inspect
import itertools
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from anyio.abc import SocketStream

from sidecar_client._common import default_socket_path, result_of, route_notification, unavailable_message
from sidecar_client.client import NotificationHandler
from sidecar_client.errors import ConnectionLost, DaemonUnavailable, RpcError
from sidecar_client.methods import AsyncMethods

_STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class AsyncClient(AsyncMethods):
    """``client = await AsyncClient.connect(path)``; ``await client.call(...)``; ``await client.close()``."""

    def __init__(self, stream: SocketStream, socket_path: str) -> None:
        self.socket_path = socket_path
        self._stream = stream
        self._ids = itertools.count(1)
        self._replies: dict[int, dict[str, Any]] = {}
        self._waiting: set[int] = set()
        self._subscribing: set[int] = set()  # ids of log.subscribe requests in flight
        self._subs: dict[int, deque[dict[str, Any]]] = {}
        self._buffer = b""
        self._lines: deque[bytes] = deque()
        self._reading = False
        self._read_done = anyio.Event()  # set when the current reader has read (or failed)
        self._send_lock = anyio.Lock()
        self._closed: ConnectionError | None = None

    @classmethod
    async def connect(cls, socket_path: str | None = None) -> AsyncClient:
        path = socket_path or default_socket_path()
        try:
            stream = await anyio.connect_unix(path)
        except OSError as exc:
            raise DaemonUnavailable(unavailable_message(path, exc)) from exc
        return cls(stream, path)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = self._closed or ConnectionLost("the client was closed")
        await self._stream.aclose()

    # --- reading, by whoever waits -------------------------------------------------------------

    async def _pump(self, ready: Callable[[], bool]) -> None:
        """Return once ``ready()``, reading lines for everyone while nobody else is.

        One caller at a time reads one message, dispatches it, then wakes every other waiter
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
                self._dispatch(await self._read_message())
            finally:
                self._reading = False
                self._read_done.set()

    async def _read_message(self) -> dict[str, Any]:
        while not self._lines:
            try:
                data = await self._stream.receive(65536)
            except (anyio.EndOfStream, *_STREAM_ERRORS):
                self._closed = self._closed or ConnectionLost(f"the daemon on {self.socket_path} closed the connection")
                raise self._closed from None
            *lines, self._buffer = (self._buffer + data).split(b"\n")
            self._lines.extend(line for line in lines if line.strip())
        return json.loads(self._lines.popleft())

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" in message:
            req_id = message["id"]
            if req_id in self._waiting:
                self._replies[req_id] = message
                if req_id in self._subscribing and isinstance(message.get("result"), dict):
                    # Events follow this answer at once, maybe read by another caller before
                    # the subscriber runs again: their queue must exist from now on.
                    self._subs.setdefault(message["result"].get("subscription"), deque())
            return
        route_notification(message, self._subs)

    # --- calls -----------------------------------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        if self._closed is not None:
            raise self._closed
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        async with self._send_lock:
            try:
                await self._stream.send(line)
            except _STREAM_ERRORS as exc:
                raise ConnectionLost(f"lost the connection to {self.socket_path}: {exc}") from exc

    async def _request(self, method: str, params: dict[str, Any] | None, subscribing: bool = False) -> dict[str, Any]:
        """Send one request and wait for its answer (the reply object, error or result)."""
        req_id = next(self._ids)
        self._waiting.add(req_id)
        if subscribing:
            self._subscribing.add(req_id)
        try:
            await self._send({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params or {}})
            await self._pump(lambda: req_id in self._replies)
            return self._replies.pop(req_id)
        finally:
            self._waiting.discard(req_id)
            self._subscribing.discard(req_id)
            late = self._replies.pop(req_id, None)  # answered, but the caller was cancelled
            if subscribing and late is not None and isinstance(late.get("result"), dict):
                await self._abandon(late["result"].get("subscription"))

    async def _abandon(self, sub: Any) -> None:
        """Drop a subscription nobody will read (its subscriber is gone)."""
        self._subs.pop(sub, None)
        if self._closed is None:
            with anyio.CancelScope(shield=True):
                try:
                    await self.notify("log.unsubscribe", {"subscription": sub})
                except ConnectionError:
                    pass

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Call ``method``; many calls may be in flight at once."""
        return result_of(await self._request(method, params))

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a notification: no answer is owed."""
        await self._send({"jsonrpc": "2.0", "method": method, "params": params or {}})

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
        sub = result_of(await self._request("log.subscribe", params or {}, subscribing=True))["subscription"]
        queue = self._subs.setdefault(sub, deque())
        try:
            while True:
                await self._pump(lambda: bool(queue))
                message = queue.popleft()
                method = message.get("method")
                got = message.get("params")
                body: dict[str, Any] = got if isinstance(got, dict) else {}
                if method == "log.event" and isinstance(body.get("event"), dict):
                    yield body["event"]
                    continue
                if on_notification is not None:
                    told = on_notification(str(method), body)
                    if inspect.isawaitable(told):
                        await told
                if method == "sys.shutdown":
                    return
                if method == "log.overflow":
                    raise RpcError(-32005, "subscription dropped: the reader fell too far behind", body)
        finally:
            self._subs.pop(sub, None)
            if self._closed is None:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.call("log.unsubscribe", {"subscription": sub})
                    except (RpcError, ConnectionError):
                        pass
