"""A circuit breaker: stop asking a server that keeps failing, and ask again with back-off.

A hung or failing LLM server must cost each caller a fast, clear failure, not a timeout each
(contract §9). After ``failures`` consecutive failures the breaker opens: calls fail fast for
``backoff_s``. Then it lets exactly one trial call through (half-open): a success closes it, a
failure opens it again for twice as long, up to ``max_backoff_s``. Time comes from an injected
:class:`~sidecar.clock.Clock`, so tests drive the back-off without sleeping. Thread-safe: the
token counter uses it from worker threads, the chat client from the event loop.
"""

from __future__ import annotations

import threading
from typing import Literal

import structlog

from sidecar.clock import SYSTEM_CLOCK, Clock

log = structlog.get_logger("sidecar.llm")

State = Literal["closed", "open", "half-open"]
Ticket = Literal["call", "trial"]  # what allow() let through: an ordinary call, or the one trial


class Breaker:
    """Consecutive failures open it; a trial call after the back-off closes or re-opens it."""

    def __init__(
        self,
        name: str,
        clock: Clock = SYSTEM_CLOCK,
        *,
        failures: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.name = name
        self.clock = clock
        self.threshold = failures
        self.base_backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._lock = threading.Lock()
        self._failures = 0  # consecutive, since the last success
        self._opens = 0  # consecutive openings: the back-off doubles with each
        self._open_until: float | None = None  # None: closed
        self._trial = False  # the one half-open call is out

    @property
    def state(self) -> State:
        with self._lock:
            return self._state()

    def _state(self) -> State:
        if self._open_until is None:
            return "closed"
        if self._trial or self.clock.monotonic() >= self._open_until:
            return "half-open"
        return "open"

    def retry_in(self) -> float:
        """Seconds until the next trial call may go (0 when calls may go now)."""
        with self._lock:
            if self._open_until is None:
                return 0.0
            return max(0.0, self._open_until - self.clock.monotonic())

    def allow(self) -> Ticket | None:
        """A ticket when a call may go now, to hand back to :meth:`settle`; None: fail fast."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return "call"
            if state == "half-open" and not self._trial:
                self._trial = True
                return "trial"
            return None

    def settle(self, ticket: Ticket, ok: bool | None) -> None:
        """The outcome of an allowed call: ``True`` worked, ``False`` failed, ``None`` no verdict
        (cancelled, or stopped by its caller), which frees a half-open trial for the next call."""
        with self._lock:
            trial = ticket == "trial"
            if trial:
                self._trial = False
            if ok is None:
                return
            if ok:
                if self._open_until is not None:
                    log.info("llm.breaker_closed", breaker=self.name)
                self._failures = self._opens = 0
                self._open_until = None
                return
            self._failures += 1
            if trial or (self._open_until is None and self._failures >= self.threshold):
                backoff = min(self.max_backoff_s, self.base_backoff_s * 2**self._opens)
                self._opens += 1
                self._open_until = self.clock.monotonic() + backoff
                log.warning("llm.breaker_open", breaker=self.name, failures=self._failures, retry_in_s=backoff)
