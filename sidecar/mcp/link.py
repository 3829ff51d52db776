"""The MCP server's one connection to the daemon: opened lazily, reopened after a restart.

A call while the daemon is down fails with :class:`DaemonDown`, whose message says so in
words a model (or its user) can act on; the next call after the daemon is back reconnects.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream
from sidecar_client import AsyncClient


class DaemonDown(Exception):
    """The daemon is not answering on the socket (down, restarting, or never started)."""


def _peer_closed(stream: SocketStream) -> bool:
    """Whether the daemon closed this connection already (a restart while we were idle).

    A peek never consumes bytes, so it cannot steal a reply from a caller reading them."""
    sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # open, nothing to read
    except OSError:
        return True


class DaemonLink:
    """``await link.call(method, params)``; ``link.subscribe(params)``; ``await link.close()``."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._client: AsyncClient | None = None
        self._stream: SocketStream | None = None
        self._lock = anyio.Lock()

    def down_message(self, exc: BaseException) -> str:
        return (
            f"the sidecar daemon is not answering on {self.socket_path}: {exc}. "
            "Nothing was done if the daemon was down; start it (`sidecar serve`) or wait for it to "
            "restart, then try again (the MCP server reconnects by itself)."
        )

    async def client(self) -> AsyncClient:
        """The open connection, made (or remade, when the daemon closed it) on demand."""
        async with self._lock:
            if self._client is not None and self._stream is not None and _peer_closed(self._stream):
                await self._close_current()
            if self._client is None:
                try:
                    self._stream = await anyio.connect_unix(self.socket_path)
                except OSError as exc:
                    raise DaemonDown(self.down_message(exc)) from exc
                self._client = AsyncClient(self._stream, self.socket_path)
            return self._client

    async def forget(self, client: AsyncClient) -> None:
        """Drop ``client`` after it failed, so the next call connects afresh."""
        async with self._lock:
            if self._client is client:
                await self._close_current()

    async def _close_current(self) -> None:
        client, self._client, self._stream = self._client, None, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await client.close()
                except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One daemon call; :class:`DaemonDown` when the daemon is not there (RpcError passes)."""
        client = await self.client()
        try:
            return await client.call(method, params)
        except ConnectionError as exc:
            await self.forget(client)
            raise DaemonDown(self.down_message(exc)) from exc

    async def subscribe(self, params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """``log.subscribe`` on the shared connection; :class:`DaemonDown` when it breaks."""
        client = await self.client()
        try:
            async for event in client.subscribe(params):
                yield event
        except ConnectionError as exc:
            await self.forget(client)
            raise DaemonDown(self.down_message(exc)) from exc

    async def close(self) -> None:
        async with self._lock:
            await self._close_current()
