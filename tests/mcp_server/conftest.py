"""Fixtures for ``sidecar mcp``: a real daemon, and the MCP server as a real subprocess
driven through the SDK's own client (``mcp.client.stdio`` and ``ClientSession``)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import mcp.types as types
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.daemon.conftest import child_env, daemon, start_daemon  # noqa: F401


class Notes:
    """The server's notifications as they arrive, to wait on with a deadline."""

    def __init__(self) -> None:
        self.updated: list[str] = []
        self._changed = anyio.Event()

    async def handle(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            self.updated.append(str(message.params.uri))
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_updated(self, uri: str, count: int = 1, timeout: float = 15.0) -> None:
        with anyio.fail_after(timeout):
            while self.updated.count(uri) < count:
                await self._changed.wait()


@asynccontextmanager
async def mcp_session(socket_path: str, errlog: Path) -> AsyncIterator[tuple[ClientSession, Notes]]:
    """``sidecar mcp --socket S`` as a subprocess, initialized."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "sidecar", "mcp", "--socket", socket_path], env=child_env()
    )
    notes = Notes()
    with open(errlog, "w") as err:
        async with (
            stdio_client(params, errlog=err) as (read, write),
            ClientSession(read, write, message_handler=notes.handle) as session,
        ):
            with anyio.fail_after(20):
                await session.initialize()
            yield session, notes
