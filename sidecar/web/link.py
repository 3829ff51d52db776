"""The console's connection to the daemon, shared by its requests and remade when lost."""

from __future__ import annotations

from typing import Any

import anyio
from sidecar_client import AsyncClient


class DaemonDown(ConnectionError):
    """No daemon answered on the socket (its message says what happened)."""


class DaemonLink:
    """Calls to the daemon over one :class:`AsyncClient` (many in flight at once).

    A call that finds the connection lost connects again once before giving up with
    :class:`DaemonDown`, so a daemon restart costs the console one failed request at most.
    Subscriptions are not made here: each live page gets a connection of its own
    (:mod:`sidecar.web.stream`), so a slow page holds up nobody else.
    """

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._client: AsyncClient | None = None
        self._lock = anyio.Lock()

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        for attempt in (1, 2):
            client = await self._connected()
            try:
                return await client.call(method, params)
            except ConnectionError as exc:
                await self._drop(client)
                if attempt == 2:
                    raise DaemonDown(str(exc)) from exc
        raise AssertionError("unreachable")

    async def _connected(self) -> AsyncClient:
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await AsyncClient.connect(self.socket_path)
                except ConnectionError as exc:
                    raise DaemonDown(str(exc)) from exc
            return self._client

    async def _drop(self, client: AsyncClient) -> None:
        async with self._lock:
            if self._client is client:
                self._client = None
        with anyio.CancelScope(shield=True):
            await client.close()

    async def close(self) -> None:
        async with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await client.close()
