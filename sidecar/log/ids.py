"""Time-ordered event ids (UUIDv7, RFC 9562) and the compact key the id index uses."""

from __future__ import annotations

import os
import random
import threading


class Uuid7Factory:
    """Makes UUIDv7 strings that sort by creation time, even within one millisecond.

    The 12-bit ``rand_a`` field carries a counter (RFC 9562 method 1) that restarts at a
    random point each millisecond, so ids from one process are strictly increasing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0
        # Ids must be unique, not secret: a generator seeded from the OS avoids a syscall per id.
        self._random = random.Random(os.urandom(32))
        os.register_at_fork(after_in_child=self._reseed)  # a forked child must not repeat our ids

    def _reseed(self) -> None:
        self._random.seed(os.urandom(32))
        self._last_ms = -1

    def new(self, unix_ms: int) -> str:
        with self._lock:
            if unix_ms <= self._last_ms:
                unix_ms = self._last_ms
                self._counter += 1
                if self._counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                    unix_ms += 1
                    self._counter = 0
            else:
                self._counter = self._random.getrandbits(11)
            self._last_ms = unix_ms
            counter = self._counter
            rand_b = self._random.getrandbits(62)
        value = (unix_ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


new_event_id = Uuid7Factory().new
