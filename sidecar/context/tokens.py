"""Counting tokens: pluggable, with a cautious default that needs no model."""

from __future__ import annotations

import math
from typing import Protocol


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
