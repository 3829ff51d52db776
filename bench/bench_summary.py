"""Summaries and context: compression on realistic agent traffic, and build times.

    python bench/bench_summary.py

Target (issue "Task graph, summaries and budgeted context"): with keep_recent=5 the summary
is at least 5x fewer tokens than the raw events, with every task id, error and decision
still visible. Times are printed beside a baseline from the same run: encoding the raw events.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from report import Report, best_time  # noqa: E402

from sidecar.context.build import build_context  # noqa: E402
from sidecar.context.tokens import DEFAULT_COUNTER  # noqa: E402
from sidecar.log.summarize import SummaryState, rolling_summary  # noqa: E402
from tests.test_log_summarize import realistic  # noqa: E402

REPORT = Report("summary", width=52)


def main() -> None:
    for n in (100, 1_000, 10_000):
        evs = realistic(n)
        raw_tokens = sum(DEFAULT_COUNTER.count(json.dumps(e)) for e in evs)
        s = rolling_summary("c1", evs, keep_recent=5)
        ratio = raw_tokens / s["token_estimate"]
        md = s["markdown"]
        visible = all(e["task_id"] in md for e in evs if e["task_id"]) and all(
            f"#{e['seq']} " in md for e in evs if e["type"] in ("agent.error", "agent.decision")
        )
        verdict = ("OK (>= 5x)" if ratio >= 5 else "BELOW 5x") + (
            ", all ids/errors/decisions visible" if visible else ", SOMETHING MISSING"
        )
        REPORT.row(f"compression, {n:,} events, keep_recent=5", f"{ratio:.1f}x", f"{raw_tokens:,} tok raw", verdict)
        base = best_time(lambda evs=evs: [json.dumps(e) for e in evs])
        t_sum = best_time(lambda evs=evs: rolling_summary("c1", evs, keep_recent=5))
        REPORT.row(f"rolling_summary, {n:,} events", f"{t_sum * 1e3:.1f} ms", f"{base * 1e3:.1f} ms encode", "")
        state = SummaryState("c1")
        for e in evs:
            state.add(e)
        t_inc = best_time(lambda state=state: state.render(keep_recent=5))
        t_add = best_time(lambda state=state, last=evs[-1]: state.add({**last, "seq": state.last_seq + 1}), rounds=50)
        REPORT.row(
            f"incremental: render after {n:,} events",
            f"{t_inc * 1e3:.2f} ms",
            f"{t_sum * 1e3:.1f} ms full",
            "independent of the log's length",
        )
        REPORT.row("incremental: fold in one new event", f"{t_add * 1e6:.1f} us", "-", "")
        t_ctx = best_time(lambda evs=evs: build_context("c1", evs, budget_tokens=4000, system_prompt="Be brief."))
        REPORT.row(
            f"build_context(4000 tokens), {n:,} events", f"{t_ctx * 1e3:.1f} ms", f"{base * 1e3:.1f} ms encode", ""
        )
    REPORT.write()


if __name__ == "__main__":
    main()
