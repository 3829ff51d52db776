"""Both clients bound the line they accept: by default ``DEFAULT_MAX_LINE_BYTES``, or what
``max_line_bytes`` says. The peer here is a small Unix-socket server that answers each request
with a line of a chosen length (the daemon itself never sends one over its
``[server] max_reply_bytes``)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from sidecar_client import DEFAULT_MAX_LINE_BYTES, AsyncClient, Client, ConnectionLost, ProtocolError
from sidecar_client.codec import Codec


def reply_of(req_id: int, length: int) -> bytes:
    """A valid reply to ``req_id`` whose line is exactly ``length`` bytes, newline excluded."""
    bare = json.dumps({"jsonrpc": "2.0", "id": req_id, "result": ""}, separators=(",", ":")).encode()
    assert length >= len(bare)
    return bare[:-2] + b"x" * (length - len(bare)) + b'"}\n'


class LineServer:
    """Answers every request line on every connection with ``reply_of(id, length(n))``, n
    counting the requests; a client that stops reading just breaks its connection."""

    def __init__(self, path: str, length: Callable[[int], int]) -> None:
        self.path = path
        self.length = length
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.count = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            reader = conn.makefile("rb")
            try:
                for line in reader:
                    self.count += 1
                    conn.sendall(reply_of(json.loads(line)["id"], self.length(self.count)))
            except OSError:
                pass  # the client closed on us: it refused the line

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def line_server(tmp_path: Path) -> Iterator[Callable[[Callable[[int], int]], LineServer]]:
    servers: list[LineServer] = []

    def start(length: Callable[[int], int]) -> LineServer:
        server = LineServer(str(tmp_path / f"lines{len(servers)}.sock"), length)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


LIMIT = 4096


def test_the_default_bound_is_64_mib_and_the_codec_alone_has_none(daemon) -> None:
    assert DEFAULT_MAX_LINE_BYTES == 64 * 1024 * 1024
    with Client(daemon.socket_path) as c:
        assert c._codec.max_line_bytes == DEFAULT_MAX_LINE_BYTES
    with Client(daemon.socket_path, max_line_bytes=None) as c:
        assert c._codec.max_line_bytes is None
        assert c.sys_health()["status"] == "ok"

    async def main() -> None:
        async with await AsyncClient.connect(daemon.socket_path) as a:
            assert a._codec.max_line_bytes == DEFAULT_MAX_LINE_BYTES
            assert (await a.sys_health())["status"] == "ok"
        async with await AsyncClient.connect(daemon.socket_path, max_line_bytes=10) as a:
            assert a._codec.max_line_bytes == 10

    anyio.run(main)
    assert Codec().max_line_bytes is None


def test_sync_client_takes_a_line_at_the_limit_and_refuses_one_byte_more(line_server) -> None:
    server = line_server(lambda n: LIMIT if n == 1 else LIMIT + 1)
    with Client(server.path, max_line_bytes=LIMIT, timeout=10) as c:
        assert c.call("x.y") == json.loads(reply_of(1, LIMIT))["result"]  # exactly LIMIT bytes: taken
        with pytest.raises(ProtocolError, match=f"over {LIMIT} bytes"):
            c.call("x.y")
        with pytest.raises(ConnectionLost):  # the connection cannot be trusted any more
            c.call("x.y")


def test_async_client_takes_a_line_at_the_limit_and_refuses_one_byte_more(line_server) -> None:
    server = line_server(lambda n: LIMIT if n == 1 else LIMIT + 1)

    async def main() -> None:
        async with await AsyncClient.connect(server.path, max_line_bytes=LIMIT) as a:
            assert await a.call("x.y") == json.loads(reply_of(1, LIMIT))["result"]
            with pytest.raises(ProtocolError, match=f"over {LIMIT} bytes"):
                await a.call("x.y")
            with pytest.raises(ProtocolError):  # every later call
                await a.call("x.y")

    anyio.run(main)


def test_the_default_bound_refuses_a_line_over_64_mib(line_server) -> None:
    """The default, through a real client: a reply one byte over it is refused, and the
    client stops reading there instead of holding all of it."""
    server = line_server(lambda n: DEFAULT_MAX_LINE_BYTES + 1)
    with Client(server.path, timeout=30) as c, pytest.raises(ProtocolError, match=f"over {DEFAULT_MAX_LINE_BYTES}"):
        c.call("x.y")
