"""The daemon with its hot paths made twice as slow: what ``guard.py --self-check`` must catch.

    python bench/slowed.py serve --data-dir DIR --socket PATH

Each wrapped step spins, after it returns, for as long as it took (a change that makes the
path do its work twice over), and a request's arrival costs one more round trip's worth
(``ROUND_TRIP_S``: a ``sys.health`` round trip with both ends on one core), so a bare round trip doubles too.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any

from sidecar.cli import main
from sidecar.daemon.connection import Connection
from sidecar.log.aio import AsyncAppender
from sidecar.log.committer import Committer

ROUND_TRIP_S = 20e-6


def twice(fn: Callable[..., Any], extra_s: float = 0.0) -> Callable[..., Any]:
    @functools.wraps(fn)
    def slowed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            end = time.perf_counter() + (time.perf_counter() - start) + extra_s
            while time.perf_counter() < end:
                pass

    return slowed


Connection.data_received = twice(Connection.data_received, ROUND_TRIP_S)  # type: ignore[method-assign]
Committer._commit = twice(Committer._commit)  # type: ignore[method-assign]
AsyncAppender._take_inbox = twice(AsyncAppender._take_inbox)  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
