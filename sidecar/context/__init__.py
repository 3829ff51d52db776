"""Prompt context within a token budget (``sidecar.context.build``).

The token counters live below both this package and the summarizer, in :mod:`sidecar.tokens`;
they are re-exported here for callers that import them from ``sidecar.context``.
"""

from __future__ import annotations

from sidecar.tokens import DEFAULT_COUNTER, ByteEstimate, TokenCounter

__all__ = ["DEFAULT_COUNTER", "ByteEstimate", "TokenCounter"]
