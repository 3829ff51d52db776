"""Counting tokens: pluggable, with a cautious default that needs no model."""

from __future__ import annotations

import json
import math
import urllib.parse
import urllib.request
from typing import Protocol

import structlog

log = structlog.get_logger("sidecar.context")


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


class LlamaCppTokenizer:
    """Exact counts from a llama.cpp server's ``POST /tokenize``, cached by text.

    Falls back to ``fallback`` (and says so once in the log) when the server does not answer,
    so a counter never stops a prompt from being built."""

    def __init__(self, url: str, *, timeout_s: float = 2.0, fallback: TokenCounter | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/") + "/tokenize"
        self.timeout_s = timeout_s
        self.fallback = fallback or ByteEstimate()
        self._cache: dict[str, int] = {}
        self.failed = False

    def count(self, text: str) -> int:
        if not text:
            return 0
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        try:
            tokens = self._ask(text)
        except (OSError, ValueError, KeyError) as exc:
            if not self.failed:
                self.failed = True
                log.warning("context.tokenize_failed", url=self.url, error=str(exc), fallback="byte estimate")
            return self.fallback.count(text)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[text] = tokens
        return tokens

    def _ask(self, text: str) -> int:
        request = urllib.request.Request(
            self.url,
            data=json.dumps({"content": text}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - http(s) only
            return len(json.loads(response.read())["tokens"])

    def available(self) -> bool:
        """Whether the server offers /tokenize (asked once, at start)."""
        try:
            self._ask("probe")
        except (OSError, ValueError, KeyError):
            return False
        return True
