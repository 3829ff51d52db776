"""The task graph in memory: referential integrity, no cycles, legal transitions, readiness.

Pure: no files, no clock of its own (timestamps are passed in), so every rule is tested
directly and the daemon and the file API share one implementation.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec

from sidecar.errors import ConflictError, InvalidParams, NotFoundError
from sidecar.log.timestamps import format_timestamp, timestamp_ns
from sidecar.tasks.model import ACTIVE, TERMINAL, TRANSITIONS, GraphFile, NewTask, Task, TaskPatch
from sidecar.tasks.taskmap import TaskMap


class TaskGraph:
    """Tasks by id, with the rules every change must pass."""

    def __init__(self, tasks: Iterable[Task] = (), version: int = 0) -> None:
        self.tasks = TaskMap()
        self.version = version
        for task in tasks:
            self.tasks[task.id] = task
        self.check()

    # --- reading ---------------------------------------------------------------------------------

    def get(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise NotFoundError(f"no task {task_id!r}", {"id": task_id})
        return task

    def list_active(self, statuses: Iterable[str] | None = None) -> list[Task]:
        wanted = set(statuses) if statuses is not None else ACTIVE
        return sorted((t for t in self.tasks.all() if t.status in wanted), key=_order)

    def ready(self) -> list[Task]:
        """Pending tasks whose dependencies are all done and whose parents are not blocked,
        highest priority (lowest number) first, then oldest.

        A parent is blocked when its status is ``blocked`` or one of its dependencies is not
        done; its children, and theirs, wait with it (beads' meaning of "ready")."""
        tasks = self.tasks
        not_done = {t.id for t in tasks.all() if t.status != "done"}
        blocked: dict[str, bool] = {}  # memo along parent chains

        def is_blocked(task: Task) -> bool:
            chain: list[str] = []
            verdict = False
            node: Task | None = task
            while node is not None:
                known = blocked.get(node.id)
                if known is not None:
                    verdict = known
                    break
                chain.append(node.id)
                if node.status == "blocked" or not not_done.isdisjoint(node.dependency_ids):
                    verdict = True
                    break
                node = tasks[node.parent_id] if node.parent_id else None
            for tid in chain:
                blocked[tid] = verdict
            return verdict

        out = [
            t
            for t in tasks.all()
            if t.status == "pending"
            and (not_done.isdisjoint(t.dependency_ids) if t.parent_id is None else not is_blocked(t))
        ]
        out.sort(key=_ORDER)
        return out

    def is_ready(self, task: Task) -> bool:
        """``task`` is pending, its dependencies are done, and no ancestor is blocked (as
        :meth:`ready` means it, for one task: O(dependencies + depth))."""
        if task.status != "pending":
            return False
        node: Task | None = task
        while node is not None:
            if node is not task and node.status == "blocked":
                return False
            if any(self.tasks[d].status != "done" for d in node.dependency_ids if d in self.tasks):
                return False
            node = self.tasks.get(node.parent_id) if node.parent_id else None
        return True

    # --- changing --------------------------------------------------------------------------------

    def create(self, new: NewTask, now: str) -> Task:
        task_id = new.id or str(uuid.uuid4())
        if task_id in self.tasks:
            raise InvalidParams(f"task {task_id!r} already exists", {"reason": "duplicate id", "id": task_id})
        if new.status not in ("pending", "running", "blocked"):
            raise InvalidParams(f"a new task cannot start as {new.status!r}", {"reason": "illegal status"})
        task = Task(
            id=task_id,
            type=new.type,
            status=new.status,
            owner=new.owner,
            inputs=new.inputs,
            outputs=new.outputs,
            created_at=now,
            updated_at=now,
            parent_id=new.parent_id,
            dependency_ids=list(dict.fromkeys(new.dependency_ids)),
            conversation_id=new.conversation_id,
            priority=new.priority,
            max_attempts=new.max_attempts,
            timeout_s=new.timeout_s,
        )
        self._check_links(task)
        self.tasks[task_id] = task
        self.version += 1
        return task

    def update(self, patch: TaskPatch, now: str) -> Task:
        old = self.get(patch.id)
        if patch.expected_version is not None and patch.expected_version != old.version:
            raise ConflictError(
                f"task {old.id!r} is at version {old.version}, not {patch.expected_version}",
                {"id": old.id, "expected_version": patch.expected_version, "version": old.version},
            )
        changes: dict[str, object] = {}
        for field in ("owner", "inputs", "outputs", "parent_id", "priority", "max_attempts", "timeout_s"):
            value = getattr(patch, field)
            if value is not None:
                changes[field] = value
        if patch.dependency_ids is not None:
            changes["dependency_ids"] = list(dict.fromkeys(patch.dependency_ids))
        moves = patch.status is not None and patch.status != old.status
        if (old.lease_owner is not None or patch.agent_id is not None) and (moves or patch.outputs is not None):
            # held: only its holder; and an agent naming itself must hold it (a late result
            # from an agent whose lease ran out must not finish a task someone else may hold)
            self._check_holder(old, patch.agent_id, "change its status or outputs")
        if moves:
            assert patch.status is not None
            self._check_transition(old, patch.status, patch.reopen)
            changes["status"] = patch.status
            changes.update(_NO_LEASE)  # finished, failed, given back...: the lease ends with the claim
            if patch.reopen:
                changes["attempts"] = 0
        task = msgspec.structs.replace(old, **changes, updated_at=max(now, old.updated_at), version=old.version + 1)
        self._check_links(task)
        self.tasks[task.id] = task
        self.version += 1
        return task

    # --- orchestration (tasks.claim) ---------------------------------------------------------------

    def claim(self, task_id: str, agent_id: str, lease_s: int, now_ns: int) -> Task:
        """The ready task ``task_id`` (the queue chose it) becomes ``agent_id``'s, leased."""
        old = self.get(task_id)
        now = format_timestamp(now_ns)
        task = msgspec.structs.replace(
            old,
            status="running",
            owner=agent_id,
            lease_owner=agent_id,
            lease_expires_at=format_timestamp(now_ns + lease_s * 1_000_000_000),
            lease_s=lease_s,
            claimed_at=now,
            attempts=old.attempts + 1,
            updated_at=max(now, old.updated_at),
            version=old.version + 1,
        )
        return self._put(task)

    def renew(self, task_id: str, agent_id: str, lease_s: int | None, now_ns: int, *, grace: bool = False) -> Task:
        """The holder's lease runs ``lease_s`` (None: its last) from now. Only the deadline
        changes: no version, no event (a heartbeat renews too, and often). A lease that has
        run out cannot be renewed, even before the sweep takes the task back (``grace``: a
        restart renews every held lease, run out or not)."""
        old = self.get(task_id)
        self._check_holder(old, agent_id, "renew its lease")
        if not grace and (old.lease_expires_at or "") <= format_timestamp(now_ns):
            raise ConflictError(
                f"the lease of task {task_id!r} ran out at {old.lease_expires_at}; claim it again",
                {"id": task_id, "lease_owner": old.lease_owner, "lease_expires_at": old.lease_expires_at},
            )
        lease_s = lease_s or old.lease_s or 30
        expires = format_timestamp(now_ns + lease_s * 1_000_000_000)
        return self._put(msgspec.structs.replace(old, lease_expires_at=expires, lease_s=lease_s), bump=False)

    def release(self, task_id: str, agent_id: str, now_ns: int) -> Task:
        """The holder gives the task back: pending, and the attempt does not count."""
        old = self.get(task_id)
        self._check_holder(old, agent_id, "release it")
        now = format_timestamp(now_ns)
        task = msgspec.structs.replace(
            old,
            status="pending",
            attempts=max(0, old.attempts - 1),
            updated_at=max(now, old.updated_at),
            version=old.version + 1,
            **_NO_LEASE,
        )
        return self._put(task)

    def expire(self, task_id: str, now_ns: int) -> tuple[Task, str] | None:
        """If ``task_id``'s timeout or lease has run out by ``now_ns``: the task after, and the
        event that records it (``task.timed_out``, ``task.lease_expired``); else None."""
        old = self.tasks.get(task_id)
        if old is None or old.status != "running" or old.lease_expires_at is None:
            return None
        now = format_timestamp(now_ns)
        changes: dict[str, Any]
        if old.timeout_s is not None and old.claimed_at is not None and now_ns >= _after(old.claimed_at, old.timeout_s):
            kind, changes = "task.timed_out", {"status": "failed", "outputs": {**old.outputs, "error": "timeout"}}
        elif now >= old.lease_expires_at:
            kind = "task.lease_expired"
            if old.attempts >= old.max_attempts:
                error = f"the lease ran out {old.attempts} times (max_attempts {old.max_attempts})"
                changes = {"status": "failed", "outputs": {**old.outputs, "error": error}}
            else:
                changes = {"status": "pending"}
        else:
            return None
        task = msgspec.structs.replace(
            old, **changes, **_NO_LEASE, updated_at=max(now, old.updated_at), version=old.version + 1
        )
        return self._put(task), kind

    def restore(self, before: Task | None, after: Task) -> None:
        """Undo the change that made ``after`` (the service refused it after the fact)."""
        if before is None:
            del self.tasks[after.id]
        else:
            self.tasks[after.id] = before
        self.version -= 1

    def _put(self, task: Task, bump: bool = True) -> Task:
        self.tasks[task.id] = task
        self.version += bump
        return task

    @staticmethod
    def _check_holder(task: Task, agent_id: str | None, to: str) -> None:
        if task.lease_owner is None or agent_id != task.lease_owner:
            holder = f"held by {task.lease_owner!r}" if task.lease_owner else "not held by anyone"
            raise ConflictError(
                f"task {task.id!r} is {holder}: only its holder may {to} (pass agent_id)",
                {"id": task.id, "lease_owner": task.lease_owner, "agent_id": agent_id},
            )

    # --- rules -----------------------------------------------------------------------------------

    @staticmethod
    def _check_transition(task: Task, status: str, reopen: bool) -> None:
        if task.status in TERMINAL:
            if reopen and status == "pending":
                return
            hint = " (pass reopen: true to send it back to pending)" if status in ("pending", "running") else ""
            raise InvalidParams(
                f"task {task.id!r} is {task.status}; it cannot become {status}{hint}",
                {"reason": "illegal transition", "from": task.status, "to": status},
            )
        if status not in TRANSITIONS[task.status]:
            raise InvalidParams(
                f"task {task.id!r} cannot go from {task.status} to {status}",
                {"reason": "illegal transition", "from": task.status, "to": status},
            )

    def _check_links(self, task: Task) -> None:
        """Parent and dependencies exist, and neither graph (parents, dependencies) has a cycle."""
        for ref, kind in [(task.parent_id, "parent"), *((d, "dependency") for d in task.dependency_ids)]:
            if ref is None:
                continue
            if ref == task.id:
                raise InvalidParams(
                    f"task {task.id!r} cannot be its own {kind}", {"reason": "cycle", "cycle": [task.id, task.id]}
                )
            if ref not in self.tasks:
                raise InvalidParams(
                    f"{kind} {ref!r} of task {task.id!r} does not exist", {"reason": f"unknown {kind}", "id": ref}
                )
        cycle = self._path(task.parent_id, task.id, lambda t: [t.parent_id] if t.parent_id else [])
        if cycle is None:
            cycle = next(
                (
                    c
                    for d in task.dependency_ids
                    if (c := self._path(d, task.id, lambda t: t.dependency_ids)) is not None
                ),
                None,
            )
        if cycle is not None:
            names = [task.id, *cycle]
            raise InvalidParams(f"that would make a cycle: {' -> '.join(names)}", {"reason": "cycle", "cycle": names})

    def _path(self, start: str | None, target: str, edges) -> list[str] | None:  # type: ignore[no-untyped-def]
        """A path of ids from ``start`` to ``target`` following ``edges``, if one exists."""
        if start is None:
            return None
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen = {start}
        while stack:
            node, path = stack.pop()
            if node == target:
                return path
            current = self.tasks.get(node)
            if current is None:
                continue
            for nxt in edges(current):
                if nxt is not None and nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    def check(self) -> None:
        """Validate a whole graph (from a file): every link resolves, no cycle anywhere."""
        saved = self.tasks
        self.tasks = TaskMap()
        try:
            pending = dict(saved)
            while pending:  # insert in an order where references come first
                progressed = False
                for task_id, task in list(pending.items()):
                    refs = [r for r in [task.parent_id, *task.dependency_ids] if r is not None]
                    if all(r in self.tasks for r in refs):
                        self._check_links(task)
                        self.tasks[task_id] = task
                        del pending[task_id]
                        progressed = True
                if not progressed:
                    task = next(iter(pending.values()))
                    missing = [r for r in [task.parent_id, *task.dependency_ids] if r and r not in saved]
                    if missing:
                        raise InvalidParams(
                            f"task {task.id!r} names unknown task {missing[0]!r}",
                            {"reason": "unknown reference", "id": missing[0]},
                        )
                    self.tasks.update(pending)
                    raise InvalidParams(
                        "the graph has a cycle among " + ", ".join(sorted(pending)),
                        {"reason": "cycle", "cycle": sorted(pending)},
                    )
        except BaseException:
            self.tasks = saved
            raise
        self.tasks = saved

    def copy(self) -> TaskGraph:
        """A graph to change without touching this one (tasks are immutable: shared)."""
        clone = TaskGraph.__new__(TaskGraph)
        clone.tasks = self.tasks.copy()
        clone.version = self.version
        return clone

    def to_file(self) -> GraphFile:
        return GraphFile(tasks=sorted(self.tasks.all(), key=lambda t: (t.created_at, t.id)), version=self.version)


_ORDER = operator.attrgetter("priority", "created_at", "id")
_NO_LEASE: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None, "claimed_at": None}


def _after(timestamp: str, seconds: float) -> int:
    return timestamp_ns(timestamp) + int(seconds * 1_000_000_000)


def _order(task: Task) -> tuple[int, str, str]:
    return _ORDER(task)
