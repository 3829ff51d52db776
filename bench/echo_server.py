"""The floor of a round trip: a minimal asyncio server that hands every byte back.

    python bench/echo_server.py SOCKET [uvloop|asyncio]

``bench_log`` times ``sys.health`` against it, on the same kind of socket and the same event
loop as the daemon, so the difference is the daemon's own work per request. It says
READY=1 on ``$NOTIFY_SOCKET`` once it listens, and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def main(path: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(Echo, path)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    notify = os.environ.get("NOTIFY_SOCKET")
    if notify:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", notify)
    async with server:
        await stop


if __name__ == "__main__":
    path, kind = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "asyncio")
    if kind == "uvloop":
        import uvloop

        uvloop.run(main(path))
    else:
        asyncio.run(main(path))
