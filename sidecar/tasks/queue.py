"""What ``tasks.claim`` takes from: the ready tasks by priority then age, and the held
leases by deadline, each in a heap, so a claim or an expiry sweep costs O(log n), not a scan
of the graph.

The heaps are lazy: an entry is checked against the graph when it reaches the top and
dropped when it no longer holds (the task was claimed, changed priority, got a new
dependency...). What must never happen is a ready task with no entry, so every change that
can make a task ready pushes one: a change to the task itself, a dependency finishing, and an
ancestor becoming unblocked (all its pending descendants are pushed again). After a change
the graph could not keep (a failed write), the service rebuilds the queue from the graph.

Pure, like the graph: no clock, no files.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from sidecar.log.timestamps import format_timestamp, timestamp_ns
from sidecar.tasks.graph import TaskGraph
from sidecar.tasks.model import Task

Entry = tuple[int, str, str]  # priority, created_at, id: the claim order


class ClaimQueue:
    """The ready index and the lease deadlines of one graph."""

    def __init__(self) -> None:
        self.by_type: dict[str, list[Entry]] = {}  # a heap per task type
        self.deadlines: list[tuple[str, str]] = []  # (RFC 3339 deadline, id) of held tasks
        self.dependents: dict[str, set[str]] = {}  # id -> the tasks that depend on it
        self.children: dict[str, set[str]] = {}  # id -> its child tasks
        self.pending = 0  # how many tasks are pending (back-pressure)

    def rebuild(self, graph: TaskGraph) -> None:
        """From scratch (start-up, an outside edit, a write that failed): O(n log n)."""
        self.__init__()  # type: ignore[misc]
        for task in graph.tasks.all():
            self._link(task)
        for task in graph.tasks.all():
            self._admit(task)

    def changed(self, graph: TaskGraph, before: Task | None, after: Task) -> None:
        """Take in one change the graph just made (``before`` None: created)."""
        if before is not None:
            self._unlink(before)
            self.pending -= before.status == "pending"
        self._link(after)
        self._admit(after)
        if before is None or (before.status, before.dependency_ids) == (after.status, after.dependency_ids):
            return
        # Its status or dependencies changed: what waited on it, and below it, may be ready now
        # (a dependent, and the children of a dependent, which waited with their parent).
        if after.status == "done":
            for dependent in self.dependents.get(after.id, ()):
                self._push_all(graph, [dependent, *self._descendants(dependent)])
        self._push_all(graph, self._descendants(after.id))

    def removed(self, task: Task) -> None:
        """Undo the creation of ``task`` (a change that was not kept); its heap entry, if
        any, is dropped when it surfaces."""
        self._unlink(task)
        self.pending -= task.status == "pending"

    def take(self, graph: TaskGraph, types: Iterable[str] | None) -> Task | None:
        """The best ready task of ``types`` (any type: None), its entry removed; or None."""
        names = list(self.by_type) if types is None else [t for t in dict.fromkeys(types) if t in self.by_type]
        while True:
            best: str | None = None
            for name in names:
                heap = self.by_type[name]
                while heap and not self._valid(graph, heap[0]):
                    heapq.heappop(heap)
                if heap and (best is None or heap[0] < self.by_type[best][0]):
                    best = name
            if best is None:
                return None
            entry = heapq.heappop(self.by_type[best])
            return graph.tasks[entry[2]]

    def due(self, now: str) -> list[str]:
        """The held tasks whose lease or timeout deadline is at or before ``now``, entries removed
        (the caller checks each against the graph: a renewal leaves a stale entry behind)."""
        out = []
        while self.deadlines and self.deadlines[0][0] <= now:
            out.append(heapq.heappop(self.deadlines)[1])
        return out

    def next_deadline(self) -> str | None:
        return self.deadlines[0][0] if self.deadlines else None

    def hold(self, task: Task) -> None:
        """A held task's next deadline: its lease, or its timeout when that comes first."""
        if task.lease_expires_at is not None:
            heapq.heappush(self.deadlines, (deadline_of(task), task.id))

    # --- inside ----------------------------------------------------------------------------------

    def _admit(self, task: Task) -> None:
        if task.status == "pending":
            self.pending += 1
            heapq.heappush(self.by_type.setdefault(task.type, []), (task.priority, task.created_at, task.id))
        elif task.status == "running" and task.lease_owner is not None:
            self.hold(task)

    def _push_all(self, graph: TaskGraph, ids: Iterable[str]) -> None:
        for task_id in ids:
            task = graph.tasks.get(task_id)
            if task is not None and task.status == "pending":
                heapq.heappush(self.by_type.setdefault(task.type, []), (task.priority, task.created_at, task.id))

    def _valid(self, graph: TaskGraph, entry: Entry) -> bool:
        task = graph.tasks.get(entry[2])
        return (
            task is not None
            and task.status == "pending"
            and (task.priority, task.created_at) == entry[:2]
            and graph.is_ready(task)
        )

    def _descendants(self, task_id: str) -> list[str]:
        out: list[str] = []
        stack = list(self.children.get(task_id, ()))
        seen = set(stack)
        while stack:
            node = stack.pop()
            out.append(node)
            for child in self.children.get(node, ()):
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return out

    def _link(self, task: Task) -> None:
        for dep in task.dependency_ids:
            self.dependents.setdefault(dep, set()).add(task.id)
        if task.parent_id is not None:
            self.children.setdefault(task.parent_id, set()).add(task.id)

    def _unlink(self, task: Task) -> None:
        for dep in task.dependency_ids:
            self.dependents.get(dep, set()).discard(task.id)
        if task.parent_id is not None:
            self.children.get(task.parent_id, set()).discard(task.id)


def deadline_of(task: Task) -> str:
    """When a held task must next be looked at: its lease's end, or its timeout if sooner."""
    assert task.lease_expires_at is not None
    if task.timeout_s is not None and task.claimed_at is not None:
        return min(task.lease_expires_at, _plus(task.claimed_at, task.timeout_s))
    return task.lease_expires_at


def _plus(timestamp: str, seconds: float) -> str:
    return format_timestamp(timestamp_ns(timestamp) + int(seconds * 1_000_000_000))
