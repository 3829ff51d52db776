"""Summaries and context: compression on realistic agent traffic, and build times.

    python bench/bench_summary.py [--quick]     # this section alone (run_all.py --only summary)

Target (issue "Task graph, summaries and budgeted context"): with keep_recent=5 the summary
is at least 5x fewer tokens than the raw events, with every task id, error and decision
still visible. In-process times are printed beside encoding the raw events as JSON; the
daemon's ``summary.*`` and ``context.build`` beside a ``sys.health`` round trip and the
in-process build.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench_daemon import Daemon, call, request, round_trips
from plots import Panel, Series, figure
from report import Config, Section, best_time, ms

from sidecar.context.build import build_context
from sidecar.summary.state import SummaryState, rolling_summary
from sidecar.tokens import DEFAULT_COUNTER
from tests.summary.test_summary import realistic

BUDGET = 4000


def in_process(n: int) -> dict[str, float]:
    evs = realistic(n)
    raw_tokens = sum(DEFAULT_COUNTER.count(json.dumps(e)) for e in evs)
    s = rolling_summary("c1", evs, keep_recent=5)
    md = s["markdown"]
    visible = all(e["task_id"] in md for e in evs if e["task_id"]) and all(
        f"#{e['seq']} " in md for e in evs if e["type"] in ("agent.error", "agent.decision")
    )
    state = SummaryState("c1")
    for e in evs:
        state.add(e)
    return {
        "compression": raw_tokens / s["token_estimate"],
        "visible": float(visible),
        "encode": best_time(lambda: [json.dumps(e) for e in evs]),
        "rolling_summary": best_time(lambda: rolling_summary("c1", evs, keep_recent=5)),
        "render": best_time(lambda: state.render(keep_recent=5)),
        "fold": best_time(lambda last=evs[-1]: state.add({**last, "seq": state.last_seq + 1}), rounds=50),
        "build_context": best_time(
            lambda: build_context("c1", evs, budget_tokens=BUDGET, system_prompt="Be brief."), rounds=3
        ),
    }


def through_daemon(socket: str, n: int, calls: int) -> dict[str, float]:
    """The same traffic appended to a conversation of the daemon, then its summary and context."""
    cid = f"c{n}"
    keep = ("type", "visibility", "level", "agent_id", "task_id", "data")
    evs = [{"conversation_id": cid, **{k: e[k] for k in keep}} for e in realistic(n)]
    for i in range(0, n, 1000):
        call(socket, "log.append_many", {"events": evs[i : i + 1000]})
    summary = {"conversation_id": cid, "keep_recent": 5}
    context = {"conversation_id": cid, "budget_tokens": BUDGET, "system_prompt": "Be brief."}
    heavy = max(5, calls // 20)  # persist writes files, context.build fits a budget: fewer rounds
    return {
        "summary.rolling first": round_trips(socket, lambda i: request(i, "summary.rolling", summary), 1),
        "sys.health": round_trips(socket, lambda i: request(i, "sys.health", {}), calls),
        "summary.rolling": round_trips(socket, lambda i: request(i, "summary.rolling", summary), calls),
        "summary.persist": round_trips(socket, lambda i: request(i, "summary.persist", summary), heavy),
        "context.build": round_trips(socket, lambda i: request(i, "context.build", context), heavy),
    }


def run(cfg: Config) -> list[Section]:
    sizes = list(cfg.summary_sizes)
    sec = Section(
        "Summaries and context",
        "./dev bench --only summary" + (" --quick" if cfg.quick else ""),
        "Traffic that imitates agents (progress lines, tool calls, task changes, some errors and "
        "decisions). In-process: the best of several runs, beside encoding the raw events as JSON. "
        "Through the daemon: the same traffic appended to one conversation per size, median round "
        "trips, beside `sys.health` and the in-process `build_context`.",
    )
    local = [in_process(n) for n in sizes]
    t = sec.table(
        "In-process",
        [
            "events",
            "compression (keep_recent=5)",
            "`rolling_summary`",
            "incremental render",
            "fold in one event",
            f"`build_context({BUDGET})`",
            "baseline: encode the raw events",
        ],
    )
    for n, r in zip(sizes, local):
        t.row(
            f"{n:,}",
            f"{r['compression']:.1f}x",
            ms(r["rolling_summary"]),
            ms(r["render"]),
            f"{r['fold'] * 1e6:.1f} us",
            ms(r["build_context"]),
            ms(r["encode"]),
        )
    with tempfile.TemporaryDirectory(dir=cfg.tmp, prefix="sidecar-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with Daemon(tmp / "data", tmp / "run") as d:
            remote = [through_daemon(d.socket, n, cfg.calls) for n in sizes]
    t = sec.table(
        "Through the daemon, median round trip",
        [
            "events",
            "baseline: `sys.health`",
            "`summary.rolling`, first call",
            "`summary.rolling`",
            "`summary.persist`",
            f"`context.build({BUDGET})`",
            "baseline: in-process `build_context`",
        ],
    )
    for n, r, loc in zip(sizes, remote, local):
        t.row(
            f"{n:,}",
            ms(r["sys.health"]),
            ms(r["summary.rolling first"]),
            ms(r["summary.rolling"]),
            ms(r["summary.persist"]),
            f"{ms(r['context.build'])} ({r['context.build'] / loc['build_context']:.1f}x)",
            ms(loc["build_context"]),
        )
    sec.target(">= 5x compression at every size", all(r["compression"] >= 5 for r in local))
    sec.note(
        "every task id, error and decision visible in the summary at every size: "
        + ("yes" if all(r["visible"] for r in local) else "NO")
    )
    sec.note(
        "`summary.rolling` (keep_recent <= 256) and `context.build` are served from the daemon's "
        "incremental summary state: after the first call, neither re-reads the log."
    )
    sec.data = {
        "events": sizes,
        "in_process": {k: [r[k] for r in local] for k in local[0]},
        "daemon": {k: [r[k] for r in remote] for k in remote[0]},
    }

    def series(rows: list[dict[str, float]], key: str, label: str, style: str = "o-") -> Series:
        return Series(label, sizes, [r[key] * 1e3 for r in rows], style)

    sec.plots.append(
        figure(
            cfg.out / "summary.png",
            [
                Panel(
                    "Summaries and context, in-process",
                    "events in the conversation",
                    "ms",
                    [
                        series(local, "rolling_summary", "rolling_summary"),
                        series(local, "render", "incremental render"),
                        series(local, "build_context", f"build_context({BUDGET})"),
                        series(local, "encode", "encode raw events (baseline)", "k--"),
                    ],
                    logx=True,
                    logy=True,
                ),
                Panel(
                    "Through the daemon, median round trip",
                    "events in the conversation",
                    "ms",
                    [
                        series(remote, "summary.rolling", "summary.rolling"),
                        series(remote, "summary.persist", "summary.persist"),
                        series(remote, "context.build", "context.build"),
                        series(remote, "sys.health", "sys.health (baseline)", "k--"),
                    ],
                    logx=True,
                    logy=True,
                ),
            ],
        )
    )
    return [sec]


if __name__ == "__main__":
    import sys

    import run_all

    run_all.main(["--only", "summary", *sys.argv[1:]])
