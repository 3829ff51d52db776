"""sidecar: a durable, shared memory and one disciplined voice for LLM apps and their agents."""

from __future__ import annotations

__version__ = "0.1.0"
