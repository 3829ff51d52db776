"""A loopback stand-in for an OpenAI-compatible chat-completions server (llama.cpp, vLLM)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def reply_json(handler: BaseHTTPRequestHandler, doc: object) -> None:
    """Answer 200 with ``doc`` as a JSON body."""
    payload = json.dumps(doc).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


class FakeLLM:
    """Answers ``verdict`` to plain requests and streams ``reply`` in ``pieces`` to streaming ones.

    ``mode`` may be "ok", "garbage" (not JSON) or "hang" (never answers until closed)."""

    def __init__(self) -> None:
        self.verdict = '{"speak_now": true, "reason": "worth telling"}'
        self.pieces = ["All ", "tasks ", "are ", "on track."]
        self.mode = "ok"
        self.requests: list[dict] = []
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    self.send_error(404)
                    return
                fake.requests.append(body)
                if fake.mode == "hang":
                    fake.release.wait(30)
                    return
                if body.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for piece in fake.pieces:
                        chunk = {"choices": [{"delta": {"content": piece}}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                    self.wfile.write(b"data: [DONE]\n\n")
                    return
                content = "no json here" if fake.mode == "garbage" else fake.verdict
                reply_json(self, {"choices": [{"message": {"role": "assistant", "content": content}}]})

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@contextmanager
def running() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.release.set()
        fake.server.shutdown()
        fake.server.server_close()
