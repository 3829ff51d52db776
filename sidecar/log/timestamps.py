"""RFC 3339 timestamps in the one spelling the log uses: UTC, microseconds, ``Z``.

Fixed width means plain string comparison orders them in time, which the log relies on
for binary search and merging.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from sidecar.errors import InvalidParams

_FORMAT = "%Y-%m-%dT%H:%M:%S"


def format_timestamp(ns: int) -> str:
    """``ns`` since the epoch as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{_second(seconds)}.{rest // 1000:06d}Z"


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    """The part down to the second: every commit within one second shares it."""
    return datetime.fromtimestamp(seconds, UTC).strftime(_FORMAT)


def normalize_timestamp(value: str | datetime) -> str:
    """Any RFC 3339 / ISO 8601 time (a naive one is taken as UTC) in the log's spelling."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidParams(f"not an RFC 3339 timestamp: {value!r}") from None
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise InvalidParams(f"a timestamp must be a string, not {type(value).__name__}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    p = parsed.astimezone(UTC)
    return f"{p.year:04d}-{p.month:02d}-{p.day:02d}T{p.hour:02d}:{p.minute:02d}:{p.second:02d}.{p.microsecond:06d}Z"


def timestamp_ns(value: str) -> int:
    """A timestamp in the log's spelling as nanoseconds since the epoch (microsecond precision)."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    whole = int(parsed.replace(microsecond=0).timestamp())
    return whole * 1_000_000_000 + parsed.microsecond * 1000
