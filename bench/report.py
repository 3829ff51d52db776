"""The benchmarks' shared output: rows printed as they come, then a markdown table."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


class Report:
    def __init__(self, name: str, width: int = 60) -> None:
        self.name = name
        self.width = width
        self.rows: list[tuple[str, str, str, str]] = []

    def row(self, what: str, value: str, baseline: str, verdict: str) -> None:
        """One figure, beside the baseline measured in the same run."""
        self.rows.append((what, value, baseline, verdict))
        print(f"{what:<{self.width}} {value:>16}   baseline {baseline:>18}   {verdict}", flush=True)

    def baseline(self, what: str, runs: list[float]) -> float:
        """Report the baseline runs (before and after the rest); the faster one counts, so a
        noisy moment can only make our ratios look worse, never better."""
        best = max(runs)
        self.row(what, f"{best:,.0f}", " / ".join(f"{r:,.0f}" for r in runs), "the baseline: the faster run counts")
        return best

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        lines = ["| what | figure | baseline (same run) | verdict |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        path = RESULTS / f"{self.name}.md"
        path.write_text("\n".join(lines) + "\n")
        print(f"\nwritten to {path}")
        return path


def best_time(fn: Callable[[], object], rounds: int = 5) -> float:
    """The fastest of ``rounds`` runs, in seconds: the least disturbed by a noisy machine."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
