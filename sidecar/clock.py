"""Time as a dependency.

Everything that reads the time (timestamps, the watchdog, grants, rate limits) takes a
:class:`Clock`, so tests can drive time by hand and run in milliseconds.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int:
        """Wall-clock time in nanoseconds since the Unix epoch (may step backwards)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never go backwards."""
        ...


class SystemClock:
    """The real clocks of the machine."""

    def now_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to; wall time may be set backwards to test skew."""

    def __init__(self, start_ns: int = 1_790_000_000_000_000_000) -> None:
        self._lock = threading.Lock()
        self._wall_ns = start_ns
        self._mono = 0.0

    def now_ns(self) -> int:
        with self._lock:
            return self._wall_ns

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        with self._lock:
            self._wall_ns += int(seconds * 1_000_000_000)
            self._mono += seconds

    def set_wall(self, ns: int) -> None:
        """Step the wall clock to ``ns`` (possibly backwards), as NTP might."""
        with self._lock:
            self._wall_ns = ns


SYSTEM_CLOCK = SystemClock()
