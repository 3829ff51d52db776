"""``sidecar.log.summarize``: the embedded summary API under the name the contract (§7) gives
it. The code is in :mod:`sidecar.summary`."""

from __future__ import annotations

from sidecar.summary.files import load_snapshot, load_summary, persist_summary
from sidecar.summary.state import Summary, rolling_summary, summarize, summary_ref

__all__ = ["Summary", "load_snapshot", "load_summary", "persist_summary", "rolling_summary", "summarize", "summary_ref"]
