"""A loopback stand-in for an OpenAI-compatible server (llama.cpp, vLLM): chat completions,
``/tokenize``, ``/props``, an API key, error bodies, and the ways a server goes wrong (hangs,
trickles, garbage), so the client and the daemon are tested against real HTTP."""

from __future__ import annotations

import collections
import json
import select
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def reply_json(handler: BaseHTTPRequestHandler, doc: object, status: int = 200) -> None:
    """Answer ``status`` with ``doc`` as a JSON body."""
    payload = json.dumps(doc).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer is what these tests do on purpose: no traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeLLM:
    """Answers ``verdict`` to plain chat requests and streams ``reply`` in ``pieces`` to streaming
    ones; counts one token per word at ``/tokenize``; tells ``n_ctx`` at ``/props``.

    ``mode`` (chat requests) may be "ok", "garbage" (not JSON), "hang" (no answer until the
    client hangs up or ``release`` is set), "error" (``error_status`` with ``error_body``) or
    "trickle" (a piece, or a byte, every ``trickle_s``, forever). Paths in ``hang`` hang, and
    paths in ``trickle`` trickle bytes, whatever they are.
    With ``api_key`` set, requests without ``Authorization: Bearer <api_key>`` get llama.cpp's 401.
    """

    def __init__(self) -> None:
        self.verdict = '{"speak_now": true, "reason": "worth telling"}'
        self.pieces = ["All ", "tasks ", "are ", "on track."]
        self.mode = "ok"
        self.error_status = 500
        self.error_body = b'{"error": {"code": 500, "message": "boom", "type": "server_error"}}'
        self.trickle_s = 0.05
        self.hang: set[str] = set()
        self.trickle: set[str] = set()
        self.api_key: str | None = None
        self.n_ctx: int | None = None  # None: /props answers 404 (not llama.cpp)
        self.health_status: int | None = None  # None: /health answers 404 (no such endpoint)
        self.n_ctx_top_level = False  # older llama.cpp: n_ctx beside, not inside, the settings
        self.tokenize = True
        self.requests: list[dict] = []  # chat-completions bodies
        # A streamed reply stops after this many pieces until ``resume`` is set (None: no pause),
        # so a test can look at a reply while it is still arriving.
        self.pause_after: int | None = None
        self.resume = threading.Event()
        self.authorization: list[str | None] = []  # the Authorization header of every request
        self.hits: collections.Counter[str] = collections.Counter()  # requests per path
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._arrived: dict[str, threading.Event] = collections.defaultdict(threading.Event)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as llama-server; bodies carry lengths

            def _start(self) -> bool:
                """Count the request; answer 401 when the key is wrong; hang when told to."""
                with fake._lock:
                    fake.hits[self.path] += 1
                    fake.authorization.append(self.headers.get("Authorization"))
                    fake._arrived[self.path].set()
                if fake.api_key is not None and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    error = {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}
                    reply_json(self, {"error": error}, 401)
                    return False
                if self.path in fake.hang or (fake.mode == "hang" and self.path == "/v1/chat/completions"):
                    self._hang()
                    return False
                if self.path in fake.trickle:
                    self._trickle(stream=False)
                    return False
                return True

            def _hang(self) -> None:
                """Say nothing until the client gives up (its end closes) or the test releases us."""
                self.close_connection = True
                try:
                    while not fake.release.is_set():
                        readable, _, _ = select.select([self.connection], [], [], 0.05)
                        if readable and not self.connection.recv(1):
                            return
                except OSError:
                    return  # reset by the client: it gave up too

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if not self._start():
                    return
                if self.path == "/health" and fake.health_status is not None:
                    loading = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
                    reply_json(self, {"status": "ok"} if fake.health_status == 200 else loading, fake.health_status)
                    return
                if self.path == "/props" and fake.n_ctx is not None:
                    settings = {"n_ctx": fake.n_ctx, "temperature": 0.8}
                    if fake.n_ctx_top_level:
                        reply_json(self, {"n_ctx": fake.n_ctx, "default_generation_settings": {"temperature": 0.8}})
                    else:
                        reply_json(self, {"default_generation_settings": settings, "total_slots": 1})
                    return
                reply_json(self, {"error": {"code": 404, "message": "File Not Found"}}, 404)

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._start():
                    return
                if self.path == "/tokenize" and fake.tokenize:
                    reply_json(self, {"tokens": list(range(len(body["content"].split())))})
                    return
                if self.path != "/v1/chat/completions":
                    reply_json(self, {"error": {"code": 404, "message": "File Not Found"}}, 404)
                    return
                fake.requests.append(body)
                if fake.mode == "error":
                    self.send_response(fake.error_status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(fake.error_body)))
                    self.end_headers()
                    self.wfile.write(fake.error_body)
                    return
                if fake.mode == "trickle":
                    self._trickle(stream=bool(body.get("stream")))
                    return
                if body.get("stream"):
                    self.close_connection = True
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for i, piece in enumerate(fake.pieces):
                        if i == fake.pause_after:
                            fake.resume.wait(30)
                        chunk = {"choices": [{"delta": {"content": piece}}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                    self.wfile.write(b"data: [DONE]\n\n")
                    return
                content = "no json here" if fake.mode == "garbage" else fake.verdict
                reply_json(self, {"choices": [{"message": {"role": "assistant", "content": content}}]})

            def _trickle(self, stream: bool) -> None:
                """Every read gets something soon, but the reply never ends."""
                self.close_connection = True
                self.send_response(200)
                if stream:
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                else:
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(10**9))
                self.end_headers()
                chunk = json.dumps({"choices": [{"delta": {"content": "."}}]})
                try:
                    while not fake.release.wait(fake.trickle_s):
                        self.wfile.write(f"data: {chunk}\n\n".encode() if stream else b" ")
                        self.wfile.flush()
                except OSError:
                    return  # the client hung up

            def log_message(self, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def arrived(self, path: str) -> threading.Event:
        """Set once a request for ``path`` has come in."""
        with self._lock:
            return self._arrived[path]


@contextmanager
def running() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)  # quick shutdown
    thread.start()
    try:
        yield fake
    finally:
        fake.release.set()
        fake.resume.set()
        fake.server.shutdown()
        fake.server.server_close()
