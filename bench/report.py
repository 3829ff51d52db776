"""The benchmarks' shared parts: settings, tables printed as they fill, timing helpers.

Every figure goes beside a baseline measured in the same run, because these machines are
noisy: a ratio taken in one run means something, an absolute number from another day less so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Config:
    """What one run measures; ``--quick`` shrinks every dimension so a check takes a minute."""

    quick: bool = False
    clients: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)
    events_per_point: int = 8000  # the same total at every client count, split evenly
    log_sizes: Sequence[int] = (10_000, 100_000, 1_000_000)
    summary_sizes: Sequence[int] = (100, 1_000, 10_000)
    task_sizes: Sequence[int] = (100, 1_000, 10_000, 100_000)
    calls: int = 1000  # calls per timing round of a cheap query
    out: Path = RESULTS
    tmp: Path = Path("/tmp")
    before_tree: Path | None = None  # jetstream_restart: the same starts on another checkout's code too

    @classmethod
    def quick_run(cls, **overrides: Any) -> Config:
        small = {
            "quick": True,
            "clients": (1, 4, 16),
            "events_per_point": 600,
            "log_sizes": (1_000, 10_000),
            "summary_sizes": (100, 1_000),
            "task_sizes": (100, 1_000, 10_000),
            "calls": 200,
        }
        return cls(**{**small, **overrides})


class Table:
    """A markdown table whose rows are also printed as they come, so a long run shows progress."""

    def __init__(self, title: str, columns: Sequence[str]) -> None:
        self.title = title
        self.columns = list(columns)
        self.rows: list[list[str]] = []
        print(f"\n{title}\n| " + " | ".join(self.columns) + " |", flush=True)

    def row(self, *cells: object) -> None:
        texts = [str(c) for c in cells]
        self.rows.append(texts)
        print("| " + " | ".join(texts) + " |", flush=True)

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


@dataclass
class Section:
    """One measurement: its tables, plots, notes, and the raw figures (for results.json)."""

    title: str
    command: str
    intro: str = ""
    tables: list[Table] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def table(self, title: str, columns: Sequence[str]) -> Table:
        t = Table(title, columns)
        self.tables.append(t)
        return t

    def note(self, text: str) -> None:
        print(f"note: {text}", flush=True)
        self.notes.append(text)

    def target(self, what: str, met: bool) -> None:
        """A target from the issues: shown as met or missed, never asserted (timing belongs here, not in tests)."""
        self.note(f"target {what}: {'met' if met else 'NOT met'}")

    def markdown(self) -> str:
        parts = [f"## {self.title}", "", f"`{self.command}`", ""]
        if self.intro:
            parts += [self.intro, ""]
        for t in self.tables:
            parts += [t.markdown(), ""]
        parts += [f"![{p}]({p})" for p in self.plots]
        if self.plots:
            parts.append("")
        parts += [f"- {n}" for n in self.notes]
        return "\n".join(parts).rstrip() + "\n"


# --- timing ----------------------------------------------------------------------------------


def best_time(fn: Callable[[], object], rounds: int = 5) -> float:
    """The fastest of ``rounds`` runs, in seconds: the least disturbed by a noisy machine."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def per_call(fn: Callable[[], object], calls: int, rounds: int = 3) -> float:
    """Seconds per call: the best of ``rounds`` rounds of ``calls`` calls each."""

    def batch() -> None:
        for _ in range(calls):
            fn()

    return best_time(batch, rounds) / calls


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- formatting ------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    """A duration in milliseconds, with enough digits for anything from 1 us to minutes."""
    v = seconds * 1e3
    if v >= 100:
        return f"{v:,.0f} ms"
    if v >= 10:
        return f"{v:.1f} ms"
    if v >= 1:
        return f"{v:.2f} ms"
    return f"{v:.3f} ms"


def ratio(value: float, base: float) -> str:
    return f"{value / base:.1f}x" if base else "-"


def count(n: int) -> str:
    """10^k for round powers of ten (the sweeps' sizes), else with separators."""
    k = len(str(n)) - 1
    return f"10^{k}" if n == 10**k and k >= 2 else f"{n:,}"
