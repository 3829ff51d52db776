"""A small client for an OpenAI-compatible chat-completions server (llama.cpp, vLLM).

Plain HTTP/1.1 over anyio, enough for ``POST /v1/chat/completions`` with or without
``stream: true`` (server-sent events), so the daemon needs no HTTP library. Local LLM servers
speak plain HTTP on loopback or a private network; ``https`` is refused with a clear error.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import anyio


class LLMError(Exception):
    """The LLM server could not be reached, or answered with something unusable."""


class ChatClient:
    def __init__(self, url: str, *, model: str | None = None, timeout_s: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise LLMError(f"[llm] url must be http://host:port, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.base = parts.path.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s

    def _request(self, messages: list[dict[str, str]], stream: bool) -> bytes:
        body: dict[str, Any] = {"messages": messages, "stream": stream, "temperature": 0.2}
        if self.model:
            body["model"] = self.model
        payload = json.dumps(body).encode()
        path = f"{self.base}/v1/chat/completions"
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Accept: {'text/event-stream' if stream else 'application/json'}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode() + payload

    async def _body_chunks(self, messages: list[dict[str, str]], stream: bool) -> AsyncIterator[bytes]:
        """The response body, de-chunked, after checking the status line."""
        try:
            conn = await anyio.connect_tcp(self.host, self.port)
        except OSError as exc:
            raise LLMError(f"cannot reach the LLM server at {self.host}:{self.port}: {exc}") from exc
        async with conn:
            await conn.send(self._request(messages, stream))
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                data = await _receive(conn)
                if not data:
                    raise LLMError("the LLM server closed the connection before answering")
                buffer += data
            head, _, rest = buffer.partition(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
            if status != 200:
                raise LLMError(f"the LLM server answered {status_line!r}")
            chunked = headers.get("transfer-encoding", "").lower() == "chunked"
            if not chunked:
                if rest:
                    yield rest
                while data := await _receive(conn):
                    yield data
                return
            pending = rest
            while True:
                while b"\r\n" not in pending:
                    more = await _receive(conn)
                    if not more:
                        return
                    pending += more
                size_line, _, pending = pending.partition(b"\r\n")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                while len(pending) < size + 2:
                    more = await _receive(conn)
                    if not more:
                        raise LLMError("the LLM server cut its answer short")
                    pending += more
                yield pending[:size]
                pending = pending[size + 2 :]

    async def complete(self, messages: list[dict[str, str]]) -> str:
        """The whole reply (``stream: false``), within ``timeout_s``."""
        with anyio.fail_after(self.timeout_s):
            body = b"".join([chunk async for chunk in self._body_chunks(messages, stream=False)])
        try:
            return json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LLMError(f"not a chat-completions answer: {body[:200]!r}") from exc

    async def stream(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        """The reply piece by piece (``stream: true``); ``timeout_s`` bounds each wait."""
        buffer = b""
        chunks = self._body_chunks(messages, stream=True).__aiter__()
        while True:
            with anyio.fail_after(self.timeout_s):
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
            buffer += chunk
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    delta = json.loads(data)["choices"][0].get("delta", {}).get("content")
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    raise LLMError(f"not a chat-completions stream event: {data[:200]!r}") from exc
                if delta:
                    yield delta


async def _receive(conn: Any) -> bytes:
    try:
        return await conn.receive(65536)
    except anyio.EndOfStream:
        return b""


def parse_verdict(text: str) -> tuple[bool, str]:
    """The controller template's answer: one JSON object with ``speak_now`` and ``reason``."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise LLMError(f"no JSON object in the answer: {text[:200]!r}")
    try:
        doc = json.loads(text[start : end + 1])
    except ValueError as exc:
        raise LLMError(f"malformed JSON in the answer: {text[:200]!r}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("speak_now"), bool):
        raise LLMError(f"the answer lacks a boolean speak_now: {text[:200]!r}")
    return doc["speak_now"], str(doc.get("reason") or "llm")
