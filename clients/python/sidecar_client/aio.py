"""The async client, on anyio: many calls in flight over one connection, matched by id.

There is no background task: whichever caller is waiting reads the next line for everyone
(and wakes the others), so ``await AsyncClient.connect(path)`` needs no task group.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from anyio.abc import SocketStream

from sidecar_client._common import default_socket_path, result_of, unavailable_message
from sidecar_client.errors import ConnectionLost, DaemonUnavailable, RpcError


class AsyncClient:
    """``client = await AsyncClient.connect(path)``; ``await client.call(...)``; ``await client.close()``."""

    def __init__(self, stream: SocketStream, socket_path: str) -> None:
        self.socket_path = socket_path
        self._stream = stream
        self._ids = itertools.count(1)
        self._replies: dict[int, dict[str, Any]] = {}
        self._waiting: set[int] = set()
        self._subs: dict[int, deque[dict[str, Any]]] = {}
        self._buffer = b""
        self._lines: deque[bytes] = deque()
        self._reading = False
        self._changed = anyio.Condition()
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
        """Return once ``ready()``, reading lines for everyone while nobody else is."""
        while not ready():
            if self._closed is not None:
                raise self._closed
            if self._reading:
                async with self._changed:
                    await self._changed.wait()
                continue
            self._reading = True
            try:
                message = await self._read_message()
            finally:
                self._reading = False
                async with self._changed:
                    self._changed.notify_all()
            if message is not None:
                self._dispatch(message)

    async def _read_message(self) -> dict[str, Any] | None:
        while not self._lines:
            try:
                data = await self._stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._closed = self._closed or ConnectionLost(f"the daemon on {self.socket_path} closed the connection")
                raise self._closed from None
            *lines, self._buffer = (self._buffer + data).split(b"\n")
            self._lines.extend(line for line in lines if line.strip())
        return json.loads(self._lines.popleft())

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" in message:
            if message["id"] in self._waiting:
                self._replies[message["id"]] = message
            return
        if message.get("method") == "sys.shutdown":
            for queue in self._subs.values():
                queue.append(message)
            return
        queue = self._subs.get((message.get("params") or {}).get("subscription"))
        if queue is not None:
            queue.append(message)

    # --- calls -----------------------------------------------------------------------------------

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Call ``method``; many calls may be in flight at once."""
        if self._closed is not None:
            raise self._closed
        req_id = next(self._ids)
        self._waiting.add(req_id)
        line = json.dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params or {}}).encode()
        try:
            async with self._send_lock:
                try:
                    await self._stream.send(line + b"\n")
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                    raise ConnectionLost(f"lost the connection to {self.socket_path}: {exc}") from exc
            await self._pump(lambda: req_id in self._replies)
            return result_of(self._replies.pop(req_id))
        finally:
            self._waiting.discard(req_id)
            self._replies.pop(req_id, None)

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a notification: no answer is owed."""
        line = json.dumps({"jsonrpc": "2.0", "method": method, "params": params or {}}).encode()
        async with self._send_lock:
            await self._stream.send(line + b"\n")

    async def subscribe(self, params: dict[str, Any] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Events as they come (``async for``); leaving the loop unsubscribes."""
        sub = (await self.call("log.subscribe", params or {}))["subscription"]
        queue: deque[dict[str, Any]] = deque()
        self._subs[sub] = queue
        try:
            while True:
                await self._pump(lambda: bool(queue))
                message = queue.popleft()
                method = message.get("method")
                if method == "sys.shutdown":
                    return
                if method == "log.overflow":
                    raise RpcError(-32005, "subscription dropped: the reader fell too far behind", message["params"])
                yield message["params"]["event"]
        finally:
            self._subs.pop(sub, None)
            if self._closed is None:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.call("log.unsubscribe", {"subscription": sub})
                    except (RpcError, ConnectionError):
                        pass
