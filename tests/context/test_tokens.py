"""Token counters: the estimate, and exact counts from a llama.cpp-style /tokenize on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sidecar_client import Client

from sidecar.context.tokens import ByteEstimate, LlamaCppTokenizer
from tests.controller.fake_llm import reply_json


class FakeLlama(BaseHTTPRequestHandler):
    """Speaks llama.cpp's /tokenize: one token per whitespace-separated word."""

    calls = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/tokenize":
            self.send_error(404)
            return
        type(self).calls += 1
        reply_json(self, {"tokens": list(range(len(body["content"].split())))})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def llama() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLlama)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_byte_estimate_errs_high() -> None:
    counter = ByteEstimate()
    assert counter.count("") == 0
    assert counter.count("abcd") == 2  # 4 bytes / 4 * 1.15, rounded up
    assert counter.count("é" * 100) >= 50  # UTF-8 bytes, not characters


def test_exact_counts_are_cached(llama: str) -> None:
    counter = LlamaCppTokenizer(llama)
    assert counter.available()
    FakeLlama.calls = 0
    assert counter.count("one two three") == 3
    assert counter.count("one two three") == 3
    assert FakeLlama.calls == 1


def test_falls_back_when_the_server_is_gone(llama: str) -> None:
    counter = LlamaCppTokenizer("http://127.0.0.1:9")  # discard port: nothing listens
    assert not counter.available()
    assert counter.count("abcd") == ByteEstimate().count("abcd") and counter.failed


def test_the_daemon_counts_with_the_llm_server(start_daemon, llama: str) -> None:
    d = start_daemon(config_text=f'[llm]\nurl = "{llama}"\n')
    with Client(d.socket_path) as c:
        c.call("log.append", {"conversation_id": "c1", "type": "a.b", "data": {"msg": "hello there"}})
        ctx = c.call("context.build", {"conversation_id": "c1", "budget_tokens": 100, "system_prompt": "be very brief"})
    system = ctx["layers"][0]
    assert system["tokens"] == 3  # three words, as the server counts them
    assert "llama.cpp /tokenize" in d.stderr()


def test_the_daemon_falls_back_without_tokenize(start_daemon) -> None:
    d = start_daemon(config_text='[llm]\nurl = "http://127.0.0.1:9"\n')
    with Client(d.socket_path) as c:
        ctx = c.call("context.build", {"conversation_id": "c1", "budget_tokens": 100, "system_prompt": "be very brief"})
    assert ctx["layers"][0]["tokens"] == ByteEstimate().count("be very brief")
    assert "byte estimate" in d.stderr()
