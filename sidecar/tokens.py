"""Counting tokens: pluggable, with a cautious default that needs no model."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import sys
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Protocol

import structlog

from sidecar.breaker import Breaker
from sidecar.clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:  # httpx is imported on first use: the embedded log library counts without it
    import httpx

log = structlog.get_logger("sidecar.context")

TOKENIZE_TIMEOUT_S = 2.0  # one /tokenize, start to end: counting is cheap, a slow answer is a sick server
_MAX_TOKENIZE_BYTES = 16 * 1024 * 1024  # one /tokenize answer (a token id list); past it, the estimate
_CACHE_ENTRIES = 4096


class TokenCounter(Protocol):
    def count(self, text: str) -> int:
        """How many tokens ``text`` costs (an upper bound is fine; an underestimate is not)."""
        ...


class ByteEstimate:
    """UTF-8 bytes / 4, plus a safety margin: real tokenizers average 3.5-4.5 bytes a token on
    English and JSON, so this rarely underestimates; the margin covers the rest."""

    def __init__(self, bytes_per_token: float = 4.0, margin: float = 1.15) -> None:
        self.bytes_per_token = bytes_per_token
        self.margin = margin

    def count(self, text: str) -> int:
        if not text:
            return 0
        return math.ceil(len(text.encode()) / self.bytes_per_token * self.margin)


DEFAULT_COUNTER: TokenCounter = ByteEstimate()


def fit(text: str, max_tokens: int, counter: TokenCounter) -> str:
    """The last resort: cut the text itself (a tenth at a time, from the end) until it fits."""
    while text and counter.count(text) > max_tokens:
        text = text[: max(0, int(len(text) * 0.9) - 1)]
    return text


def on_event_loop() -> bool:
    """Whether the caller runs on an event loop's thread, where nothing may block."""
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    return trio is not None and trio.lowlevel.in_trio_run()


class _Unsupported(Exception):
    """The server answered, but has no /tokenize."""


class LlamaCppTokenizer:
    """Exact counts from a llama.cpp server's ``POST /tokenize``, cached by text.

    ``count`` is called from worker threads (context building) and from the event loop
    (summaries, the narrator prompt). Only worker threads ask the server, each ask bounded by
    ``timeout_s`` start to end and guarded by a circuit breaker; on the event loop, and whenever
    the server cannot answer, the count comes from the cache or from ``fallback``. So a hung
    server never blocks the loop, and never stops a prompt from being built. Whether the server
    has a /tokenize at all is found out on first use, so start-up never waits on it."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = TOKENIZE_TIMEOUT_S,
        fallback: TokenCounter | None = None,
        api_key: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        breaker: Breaker | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/") + "/tokenize"
        netloc = parsed.netloc.rpartition("@")[2]  # for the log: no credentials
        self.shown = urllib.parse.urlunsplit(parsed._replace(netloc=netloc)).rstrip("/") + "/tokenize"
        self.timeout_s = timeout_s
        self.fallback = fallback or ByteEstimate()
        self.breaker = breaker or Breaker("tokenize", clock)
        if api_key is not None and not (api_key.isascii() and api_key.isprintable() and " " not in api_key):
            raise ValueError("the API key is not printable ASCII without spaces")  # and never shown
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._transport = transport
        self._cache: dict[bytes, int] = {}
        self._client: httpx.Client | None = None  # made in a worker thread, on first use
        self._client_lock = threading.Lock()
        self.failed = False  # a failure was logged (once per run of failures)
        self.unsupported = False  # the server has no /tokenize: the estimate from now on

    def count(self, text: str) -> int:
        if not text:
            return 0
        key = hashlib.blake2b(text.encode(errors="surrogatepass"), digest_size=16).digest()
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if self.unsupported or on_event_loop():
            return self.fallback.count(text)
        ticket = self.breaker.allow()
        if ticket is None:
            return self.fallback.count(text)
        import httpx

        verdict: bool | None = None
        try:
            tokens = self._ask(text)
            verdict = True
        except _Unsupported:
            verdict = True  # it answered: nothing wrong with the server
            self.unsupported = True
            log.warning("context.tokenizer", kind="byte estimate", reason=f"no /tokenize at {self.shown}")
            return self.fallback.count(text)
        except (httpx.HTTPError, OSError, ValueError, KeyError, TypeError) as exc:
            verdict = False
            if not self.failed:
                self.failed = True
                log.warning("context.tokenize_failed", url=self.shown, error=str(exc), fallback="byte estimate")
            return self.fallback.count(text)
        finally:
            self.breaker.settle(ticket, verdict)
        if self.failed:
            self.failed = False
            log.info("context.tokenize_back", url=self.shown)
        if len(self._cache) >= _CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = tokens
        return tokens

    def _http(self) -> httpx.Client:
        import httpx

        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(
                    headers=self._headers,
                    timeout=httpx.Timeout(self.timeout_s),
                    trust_env=False,  # the server is beside us: no proxy from the environment
                    follow_redirects=False,
                    transport=self._transport,
                )
            return self._client

    def _ask(self, text: str) -> int:
        """The server's count for ``text``; blocks for up to about ``timeout_s`` (never call it on
        the event loop)."""
        deadline = time.monotonic() + self.timeout_s
        with self._http().stream("POST", self.url, json={"content": text}) as response:
            if response.status_code in (404, 405, 501):
                raise _Unsupported
            if response.status_code != 200:
                raise ValueError(f"/tokenize answered {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():  # each read within timeout_s, all of them by the deadline
                body += chunk
                if len(body) > _MAX_TOKENIZE_BYTES:
                    raise ValueError("/tokenize answered too much")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"/tokenize took over {self.timeout_s:g} s")
        tokens = json.loads(body)["tokens"]
        if not isinstance(tokens, list):
            raise TypeError("/tokenize answered no token list")
        return len(tokens)

    def available(self) -> bool:
        """Whether the server answers /tokenize now. Blocks up to ``timeout_s``: worker threads
        and tests only, never the event loop."""
        if on_event_loop():
            raise RuntimeError("LlamaCppTokenizer.available() would block the event loop")
        import httpx

        try:
            self._ask("probe")
        except (_Unsupported, httpx.HTTPError, OSError, ValueError, KeyError, TypeError):
            return False
        return True

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
