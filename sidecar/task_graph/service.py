"""The daemon's task graph: in memory for reads, every change durable before it is answered.

Changes queue up and one writer applies them as a batch (flush-when-idle, like the event
log): under the graph's exclusive flock it re-reads the file if someone else changed it,
applies the batch's changes on top, and replaces the file once. So 1,000 updates are a few
rewrites, a change by another process is never overwritten, and each caller hears about
its own change only once it is on disk.

Edits made by hand or by other processes are noticed (watchfiles) and taken in when valid;
an invalid file is never taken in: it is kept in ``archive/`` and the last good graph is
written back.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
import structlog
import watchfiles

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.errors import SidecarError, StorageError
from sidecar.log.events import NewEvent
from sidecar.log.timestamps import format_timestamp
from sidecar.task_graph.graph import TaskGraph
from sidecar.task_graph.model import TERMINAL, NewTask, Task, TaskPatch
from sidecar.task_graph.store import GRAPH_FILE, locked, read_graph, write_graph

log = structlog.get_logger("sidecar.tasks")

AuditSink = Callable[[list[NewEvent]], Awaitable[Any]]


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class _Change:
    """One queued create or update, and what became of it."""

    __slots__ = ("what", "result", "error", "before")

    def __init__(self, what: NewTask | TaskPatch) -> None:
        self.what = what
        self.result: Task | None = None
        self.error: SidecarError | None = None
        self.before: Task | None = None

    def apply(self, graph: TaskGraph, now: str) -> None:
        try:
            if isinstance(self.what, NewTask):
                self.result = graph.create(self.what, now)
            else:
                self.before = graph.tasks.get(self.what.id)
                self.result = graph.update(self.what, now)
        except SidecarError as exc:
            self.error = exc


class TaskService:
    """Owns ``tasks.graph.json`` for the daemon."""

    def __init__(self, data_dir: str, audit: AuditSink | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.path = os.path.join(data_dir, GRAPH_FILE)
        self.archive_dir = os.path.join(data_dir, "archive")
        self.audit = audit
        self.clock = clock
        self.graph = TaskGraph()
        self._stamp: tuple[int, int, int] | None = None
        self._queue: list[_Change] = []
        self._wakeup = anyio.Event()
        self._flushed: anyio.Event = anyio.Event()
        self.writes = 0

    # --- start-up --------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the graph at start; an invalid file stops the start with a clear error."""
        with locked(self.path, exclusive=False):
            self.graph = read_graph(self.path)
            self._stamp = _stamp(self.path)

    # --- reads -----------------------------------------------------------------------------------

    def get(self, task_id: str) -> Task:
        return self.graph.get(task_id)

    # --- changes ---------------------------------------------------------------------------------

    async def create(self, new: NewTask) -> Task:
        return await self._submit(_Change(new))

    async def update(self, patch: TaskPatch) -> Task:
        return await self._submit(_Change(patch))

    async def _submit(self, change: _Change) -> Task:
        self._queue.append(change)
        flushed = self._flushed
        self._wakeup.set()
        while change.result is None and change.error is None:
            await flushed.wait()
            flushed = self._flushed
        if change.error is not None:
            raise change.error
        assert change.result is not None
        return change.result

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer task: apply and persist each batch of changes; take in outside edits."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            task_status.started()
            while True:
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                batch, self._queue = self._queue, []
                flushed, self._flushed = self._flushed, anyio.Event()
                if batch:
                    with anyio.CancelScope(shield=True):
                        await self._flush(batch)
                else:
                    with anyio.CancelScope(shield=True):
                        await self._take_in_outside_edit()
                flushed.set()

    async def _flush(self, batch: list[_Change]) -> None:
        outside = await anyio.to_thread.run_sync(self._apply_and_write, batch)
        if outside is not None:
            await self._audit_changes(*outside, source="file")
        await self._audit(batch)

    def _apply_and_write(self, batch: list[_Change]) -> tuple[TaskGraph, TaskGraph] | None:
        """In a worker thread, under the exclusive lock: rebase on the file, apply, write."""
        now = format_timestamp(self.clock.now_ns())
        outside = None
        with locked(self.path, exclusive=True):
            base = self.graph
            if _stamp(self.path) != self._stamp:  # someone else wrote: build on their graph
                try:
                    fresh = read_graph(self.path)
                    outside = (self.graph, fresh)
                    base = fresh
                except SidecarError as exc:
                    self._refuse_file(exc)
            graph = base.copy()
            for change in batch:
                change.apply(graph, now)
            if any(c.result is not None for c in batch) or outside is not None:
                try:
                    write_graph(self.path, graph)
                except OSError as exc:
                    error = StorageError(f"could not write {self.path}: {exc.strerror}; nothing changed")
                    for change in batch:
                        if change.error is None:
                            change.error, change.result = error, None
                    return None
                self._stamp = _stamp(self.path)
                self.writes += 1
            self.graph = graph
        return outside

    async def _take_in_outside_edit(self) -> None:
        outside = await anyio.to_thread.run_sync(self._reload_if_changed)
        if outside is not None:
            await self._audit_changes(*outside, source="file")

    def _reload_if_changed(self) -> tuple[TaskGraph, TaskGraph] | None:
        with locked(self.path, exclusive=True):
            if _stamp(self.path) == self._stamp:
                return None  # our own write, or nothing
            try:
                fresh = read_graph(self.path)
            except SidecarError as exc:
                self._refuse_file(exc)
                return None
            old, self.graph = self.graph, fresh
            self._stamp = _stamp(self.path)
            log.info("tasks.file_taken_in", path=self.path, tasks=len(fresh.tasks))
            return old, fresh

    def _refuse_file(self, exc: SidecarError) -> None:
        """Keep the broken file in the archive and put our valid graph back (lock held)."""
        kept = os.path.join(self.archive_dir, f"{GRAPH_FILE}.{format_timestamp(self.clock.now_ns())}.invalid")
        try:
            shutil.copyfile(self.path, kept)
        except OSError:
            kept = "(could not be copied)"
        log.error("tasks.file_refused", path=self.path, reason=exc.message, kept_in=kept)
        write_graph(self.path, self.graph)
        self._stamp = _stamp(self.path)

    async def _watch(self) -> None:
        """Wake the writer when the graph file changes on disk."""
        directory = os.path.dirname(self.path)
        name = os.path.basename(self.path)
        async for _ in watchfiles.awatch(
            directory,
            watch_filter=lambda _change, path: os.path.basename(path) == name,
            recursive=False,
            rust_timeout=200,  # how promptly a cancelled watch lets go (shutdown)
        ):
            self._wakeup.set()

    # --- the audit trail ---------------------------------------------------------------------------

    async def _audit(self, batch: list[_Change]) -> None:
        events = [_audit_event(c.result, c.before, source="rpc") for c in batch if c.result is not None]
        await self._emit([e for e in events if e is not None])

    async def _audit_changes(self, old: TaskGraph, new: TaskGraph, *, source: str) -> None:
        events = []
        for task_id, task in new.tasks.items():
            before = old.tasks.get(task_id)
            if before != task:
                events.append(_audit_event(task, before, source=source, kind="task.updated"))
        await self._emit([e for e in events if e is not None])

    async def _emit(self, events: list[NewEvent]) -> None:
        if events and self.audit is not None:
            try:
                await self.audit(events)
            except SidecarError as exc:
                log.error("tasks.audit_failed", error=exc.message)


def _audit_event(task: Task, before: Task | None, *, source: str, kind: str | None = None) -> NewEvent | None:
    """``task.created`` / ``task.updated`` for a task that belongs to a conversation."""
    if task.conversation_id is None:
        return None
    kind = kind or ("task.created" if before is None else "task.updated")
    changed = sorted(f for f in task.__struct_fields__ if getattr(task, f) != getattr(before, f)) if before else []
    return NewEvent(
        conversation_id=task.conversation_id,
        type=kind,
        visibility="status",
        level="milestone" if task.status in TERMINAL else "state",
        agent_id=task.owner,
        task_id=task.id,
        data={"task": msgspec.to_builtins(task), "changed": changed, "source": source},
    )
