"""``sidecar web``: bind, print the URL with its token, serve until SIGTERM or Ctrl-C.

The socket is bound and listening before the URL is printed, so whoever reads the line
(a person, a test, the screenshot script) can connect at once, and ``--port 0`` shows the
port the system picked. SIGTERM and Ctrl-C end the live streams at once (the pages
reconnect to the next console), let the other requests finish, and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn

from sidecar.web.app import create_app
from sidecar.web.guard import Guard

log = logging.getLogger("sidecar.web")


class ConsoleServer(uvicorn.Server):
    """uvicorn's server, told when a stop signal comes, and exiting 0 after it (uvicorn
    itself raises the signal again once it has shut down, which would exit 143)."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        with contextlib.suppress(RuntimeError):  # no loop yet: nothing is open to end
            asyncio.get_running_loop().call_soon_threadsafe(self.on_exit)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def url(host: str, port: int, token: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={token}"


def serve(socket_path: str, host: str, port: int) -> int:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(
            f"sidecar web: warning: {host} is not a loopback address; anyone who can reach it and "
            "has the token can read and write the chat",
            file=sys.stderr,
        )
    try:
        sock = bind("127.0.0.1" if host == "localhost" else host, port)
    except OSError as exc:
        print(f"sidecar web: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    port = sock.getsockname()[1]
    token = secrets.token_urlsafe(32)
    app, stream = create_app(socket_path, Guard(host, port, token))
    config = uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    print(f"sidecar web: {url(host, port, token)}", flush=True)
    print(f"sidecar web: serving the daemon on {socket_path}; Ctrl-C stops", file=sys.stderr, flush=True)
    ConsoleServer(config, stream.close).run(sockets=[sock])
    return 0
