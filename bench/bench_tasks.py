"""Task graph benchmark: ``ready()`` on 10^2 .. 10^5 tasks, beside a naive baseline.

    python bench/bench_tasks.py

Target (issue "Task graph, summaries and budgeted context"): ready() on 10,000 tasks under
5 ms. The baseline recomputes every task's blocked state without sharing work between tasks.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import Report, best_time  # noqa: E402

from sidecar.task_graph import NewTask, TaskGraph, TaskPatch  # noqa: E402

REPORT = Report("tasks", width=44)


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


def main() -> None:
    for n in (100, 1_000, 10_000, 100_000):
        g = build(n)
        assert [t.id for t in g.ready()] == naive_ready(g)
        ours = best_time(g.ready, 20 if n <= 10_000 else 5)
        base = best_time(lambda g=g: naive_ready(g), 3)
        verdict = ""
        if n == 10_000:
            verdict = "OK (< 5 ms)" if ours < 0.005 else "ABOVE 5 ms"
        REPORT.row(f"ready() on {n:,} tasks", f"{ours * 1e3:.2f} ms", f"{base * 1e3:.2f} ms", verdict)
    REPORT.write()


if __name__ == "__main__":
    main()
