"""Task graph: ``ready()`` on 10^2 .. 10^5 tasks, beside a naive baseline.

    python bench/bench_tasks.py [--quick]     # this section alone (run_all.py --only tasks)

Target (issue "Task graph, summaries and budgeted context"): ready() on 10,000 tasks under
5 ms. The baseline recomputes every task's blocked state without sharing work between tasks.
"""

from __future__ import annotations

import random

from plots import Panel, Series, figure
from report import Config, Section, best_time, count, ms

from sidecar.tasks import NewTask, TaskGraph, TaskPatch


def build(n: int, seed: int = 1) -> TaskGraph:
    """A realistic graph: a few dependencies on earlier tasks, some parents, a third done."""
    rng = random.Random(seed)
    g = TaskGraph()
    for i in range(n):
        deps = [f"t{rng.randrange(i)}" for _ in range(rng.randint(0, 3))] if i else []
        parent = f"t{rng.randrange(i)}" if i and rng.random() < 0.3 else None
        g.create(
            NewTask(type="work", id=f"t{i}", dependency_ids=deps, parent_id=parent, priority=rng.randint(0, 4)),
            f"2026-11-23T10:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:06d}Z",
        )
    for i in rng.sample(range(n), n // 3):
        g.update(TaskPatch(id=f"t{i}", status="done"), "2026-11-23T11:00:00.000000Z")
    return g


def naive_ready(g: TaskGraph) -> list[str]:
    def blocked(tid: str) -> bool:
        t = g.tasks[tid]
        if t.status == "blocked" or any(g.tasks[d].status != "done" for d in t.dependency_ids):
            return True
        return t.parent_id is not None and blocked(t.parent_id)

    ready = [t for t in g.tasks.values() if t.status == "pending" and not blocked(t.id)]
    return [t.id for t in sorted(ready, key=lambda t: (t.priority, t.created_at, t.id))]


def run(cfg: Config) -> list[Section]:
    sec = Section(
        "Task graph: ready()",
        "./dev bench --only tasks" + (" --quick" if cfg.quick else ""),
        "`TaskGraph.ready()` on a random graph (up to 3 dependencies per task, a parent for 30% of "
        "tasks, a third done), the best of several runs, beside a naive baseline that recomputes each "
        "task's blocked state without sharing any work.",
    )
    t = sec.table("ready()", ["tasks", "`ready()`", "baseline: naive", "vs baseline"])
    ours: list[float] = []
    naive: list[float] = []
    for n in cfg.task_sizes:
        g = build(n)
        assert [t.id for t in g.ready()] == naive_ready(g)
        ours.append(best_time(g.ready, 20 if n <= 10_000 else 5))
        naive.append(best_time(lambda g=g: naive_ready(g), 3))
        t.row(f"{n:,}", ms(ours[-1]), ms(naive[-1]), f"{naive[-1] / ours[-1]:.1f}x faster")
    sizes = list(cfg.task_sizes)
    if 10_000 in sizes:
        sec.target("`ready()` on 10,000 tasks under 5 ms", ours[sizes.index(10_000)] < 0.005)
    if len(sizes) > 1:
        sec.note(f"{count(sizes[-1])} / {count(sizes[0])} tasks: `ready()` takes {ours[-1] / ours[0]:,.0f}x as long")
    sec.data = {"tasks": sizes, "ready": ours, "naive": naive}
    sec.plots.append(
        figure(
            cfg.out / "tasks.png",
            [
                Panel(
                    "Task graph: ready()",
                    "tasks",
                    "ms",
                    [
                        Series("ready()", sizes, [v * 1e3 for v in ours]),
                        Series("naive (baseline)", sizes, [v * 1e3 for v in naive], "k--"),
                    ],
                    logx=True,
                    logy=True,
                )
            ],
        )
    )
    return [sec]


if __name__ == "__main__":
    import sys

    import run_all

    run_all.main(["--only", "tasks", *sys.argv[1:]])
