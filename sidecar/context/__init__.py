"""Prompt context within a token budget (``sidecar.context.build``), and token counters.

Only the counters are imported here: the summarizer needs them, and the builder needs the
summarizer.
"""

from __future__ import annotations

from sidecar.context.tokens import DEFAULT_COUNTER, ByteEstimate, TokenCounter

__all__ = ["DEFAULT_COUNTER", "ByteEstimate", "TokenCounter"]
