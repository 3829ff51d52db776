"""The daemon's task graph: in memory for reads, every change durable before it is answered.

Changes queue up and one writer thread applies them as a batch (flush-when-idle: a
:class:`~sidecar.batcher.Batcher`, as the event log's commit thread is): under the graph's
exclusive flock it re-reads the file if someone else changed it, applies the batch's
changes on top, and replaces the file once. So 1,000 updates are a few
rewrites, a change by another process is never overwritten, and each caller hears about
its own change only once it is on disk.

Edits made by hand or by other processes are noticed (watchfiles) and taken in when valid;
an invalid file is never taken in: it is kept in ``archive/`` and the last good graph is
written back. A deleted file is written back from memory too (deleting it is not a way to
drop every task: ``tasks.update`` each to ``cancelled`` is).

A graph file that cannot be used at start (invalid, too deeply nested, a directory, a
symlink) does not stop the daemon: it is left alone, logged, and every ``tasks.*`` method
answers -32006 naming it until a valid file is put in its place, which is taken in as soon
as it appears.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import structlog
import watchfiles
from anyio.streams.memory import MemoryObjectSendStream

from sidecar.batcher import Batcher
from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.datadir import open_regular, read_regular
from sidecar.errors import InvalidParams, OverloadedError, SidecarError, StorageError
from sidecar.log.events import NewEvent
from sidecar.log.files import write_all
from sidecar.log.store import DEFAULT_MAX_EVENT_BYTES
from sidecar.log.timestamps import format_timestamp, timestamp_ns
from sidecar.tasks.graph import TaskGraph
from sidecar.tasks.model import TERMINAL, Claim, NewTask, Release, Renew, Task, TaskPatch
from sidecar.tasks.queue import ClaimQueue
from sidecar.tasks.store import (
    GRAPH_FILE,
    JOURNAL_SUFFIX,
    MAX_GRAPH_BYTES,
    GraphFileError,
    append_journal,
    locked,
    read_graph,
    remove_stale_temps,
    write_graph,
)

log = structlog.get_logger("sidecar.tasks")
DEFAULT_MAX_PENDING = 10_000  # [tasks] max_pending
SYSTEM = "system"  # the conversation of tasks that belong to none, and of back-pressure
JOURNAL_MIN, JOURNAL_MAX = 1 << 20, 64 << 20  # the journal is folded in past the file's size, within these


def _some(task: Task | None) -> Task:
    assert task is not None  # every request but a claim answers a task
    return task


Outside = tuple[TaskGraph, TaskGraph] | None  # the graph before and after an outside edit
AuditSink = Callable[[list[NewEvent]], Awaitable[Any]]


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class _BrokenGraph(TaskGraph):
    """Stands in for the graph while the file cannot be used: every read is the error."""

    def __init__(self, error: GraphFileError) -> None:
        super().__init__()
        self.error = error

    def get(self, task_id: str) -> Task:
        raise self.error

    def list_active(self, statuses: Iterable[str] | None = None) -> list[Task]:
        raise self.error

    def ready(self) -> list[Task]:
        raise self.error


class Sweep:
    """Expire the leases and timeouts that have run out (queued by the expiry timer)."""


Request = NewTask | TaskPatch | Claim | Renew | Release | Sweep


class Change:
    """One queued request, and what became of it: its answer, and the changes to audit."""

    __slots__ = ("what", "result", "error", "changes", "events", "done", "max_event_bytes")

    def __init__(self, what: Request) -> None:
        self.what = what
        self.result: Task | None = None
        self.error: SidecarError | None = None
        self.changes: list[Task] = []  # the tasks as changed, in order
        self.events: list[NewEvent] = []  # the events that record them
        self.max_event_bytes = DEFAULT_MAX_EVENT_BYTES
        self.done = anyio.Event()  # set in the event loop once it is written and audited

    def apply(self, graph: TaskGraph, queue: ClaimQueue, now_ns: int, max_pending: int, max_event_bytes: int) -> None:
        self.max_event_bytes = max_event_bytes
        try:
            self._apply(graph, queue, now_ns, max_pending)
        except SidecarError as exc:
            self.error = exc

    def _apply(self, graph: TaskGraph, queue: ClaimQueue, now_ns: int, max_pending: int) -> None:
        what, now = self.what, format_timestamp(now_ns)
        if isinstance(what, Sweep):
            for task_id in queue.due(now):
                before = graph.tasks.get(task_id)
                expired = graph.expire(task_id, now_ns)
                if expired is not None:  # else renewed since: its renewal queued the new deadline
                    self._changed(queue, graph, expired[0], before, expired[1])
            return
        if isinstance(what, Renew):
            self.result = graph.renew(what.id, what.agent_id, what.lease_s, now_ns)
            queue.hold(self.result)
            return
        if isinstance(what, NewTask):
            if what.status == "pending" and queue.pending >= max_pending:
                raise OverloadedError(
                    f"{queue.pending} tasks are pending, the most [tasks] max_pending allows; "
                    "try again once some are claimed",
                    {"pending": queue.pending, "max_pending": max_pending},
                )
            self._changed(queue, graph, graph.create(what, now), None, None)
            return
        if isinstance(what, Claim):
            chosen = queue.take(graph, what.types)
            if chosen is not None:
                self._changed(
                    queue, graph, graph.claim(chosen.id, what.agent_id, what.lease_s, now_ns), chosen, "task.claimed"
                )
            return
        before = graph.get(what.id)
        if isinstance(what, Release):
            after = graph.release(what.id, what.agent_id, now_ns)
        else:
            after = graph.update(what, now)
        self._changed(queue, graph, after, before, None)

    def _changed(self, queue: ClaimQueue, graph: TaskGraph, after: Task, before: Task | None, kind: str | None) -> None:
        actor = getattr(self.what, "agent_id", None)  # whoever asked: the event is theirs, in its clock
        event = _audit_event(
            after, before, source="rpc", kind=kind, actor=actor
        )  # made once: checked here, written after
        if not isinstance(self.what, Sweep):
            self._fits(queue, graph, after, before, kind, event)
        queue.changed(graph, before, after)
        self.changes.append(after)
        self.events.append(event)
        if not isinstance(self.what, Sweep):
            self.result = after

    def _fits(
        self, queue: ClaimQueue, graph: TaskGraph, after: Task, before: Task | None, kind: str | None, event: NewEvent
    ) -> None:
        """The log records every change with the whole task (the graph is its projection): a
        change whose event would not fit in the log is undone and refused, naming the sizes."""
        size = len(_audit_encoder.encode(event)) + _AUDIT_MARGIN
        if size <= self.max_event_bytes:
            return
        graph.restore(before, after)
        if kind == "task.claimed" and before is not None:
            queue.changed(graph, before, before)  # the claim took it off the queue: back on
        raise InvalidParams(
            f"task {after.id!r} would take {size} bytes as the event that records it, over the log's "
            f"max_event_bytes ({self.max_event_bytes}): keep big inputs and outputs elsewhere and pass a reference",
            {"field": "inputs/outputs", "id": after.id, "bytes": size, "max_event_bytes": self.max_event_bytes},
        )

    @property
    def writes(self) -> bool:
        """Whether it changed what must be on disk before it is answered (a renewal does not)."""
        return bool(self.changes)


class TaskService:
    """Owns ``tasks.graph.json`` for the daemon."""

    def __init__(
        self,
        data_dir: str,
        audit: AuditSink | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.path = os.path.join(data_dir, GRAPH_FILE)
        self.archive_dir = os.path.join(data_dir, "archive")
        self.audit = audit
        self.clock = clock
        self.max_pending = max_pending
        self.graph = TaskGraph()
        self.queue = ClaimQueue()  # the writer thread's: ready tasks and lease deadlines
        self.pending = 0  # as of the last batch, for the event loop (back-pressure, sys.stats)
        self.next_deadline: str | None = None  # the earliest lease or timeout, as of the last batch
        self.pressure = 0  # 0 below 80% of max_pending, 1 from 80%, 2 at 100%
        self.claims = 0
        self.claim_seconds = 0.0  # summed over claims, queued to answered
        self._deadlines_moved = anyio.Event()
        self.broken: GraphFileError | None = None  # the file could not be used at start
        self.max_event_bytes = max_event_bytes  # the log's ([log] max_event_bytes); lowered if it says less
        self._stamp: tuple[int, int, int] | None = None
        # None asks the writer to look at the file (an outside edit), a change to apply it.
        self._writer: Batcher[Change | None] = Batcher(self._write, f"sidecar-tasks:{self.path}")
        self._written: MemoryObjectSendStream[tuple[list[Change], Outside]] | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self.writes = 0  # batches made durable
        self.checkpoints = 0  # of them, whole-file writes
        self.journal_bytes = 0
        self.file_bytes = 0

    # --- start-up --------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the graph at start, removing the temp files of writers killed mid-write.

        A file that cannot be used is logged and left alone: the graph stays empty for the
        rest of the start-up, and once :meth:`run` begins every read answers the error."""
        try:
            with locked(self.path, exclusive=True):
                for tmp in remove_stale_temps(self.path):
                    log.warning("tasks.stale_temp_removed", path=tmp)
                self.graph = read_graph(self.path)
                if os.path.lexists(self.path + JOURNAL_SUFFIX):  # fold it in: no torn line to append after
                    write_graph(self.path, self.graph)
                self._stamp = _stamp(self.path)
                self.file_bytes = self._stamp[1] if self._stamp else 0
                self._grace()
        except (GraphFileError, OSError) as exc:
            if isinstance(exc, OSError):
                exc = GraphFileError(f"cannot write {self.path}: {exc.strerror or exc}", {"path": self.path})
            self.broken = exc
            self.graph = TaskGraph()
            log.error("tasks.file_unusable", path=self.path, error=exc.message, until="a valid file is in its place")

    def _grace(self) -> None:
        """After a restart every held lease gets a fresh ``lease_s`` from now: its holder may
        have been renewing while we were down. Then the queue is built from the graph."""
        now_ns = self.clock.now_ns()
        for task in list(self.graph.tasks.all()):
            if task.status == "running" and task.lease_owner is not None:
                self.graph.renew(task.id, task.lease_owner, task.lease_s, now_ns, grace=True)
        self._index()

    def _index(self) -> None:
        """Rebuild the queue from the graph (writer thread, or before it starts)."""
        self.queue.rebuild(self.graph)
        self._note_queue()

    def _note_queue(self) -> None:
        self.pending, self.next_deadline = self.queue.pending, self.queue.next_deadline()

    # --- reads -----------------------------------------------------------------------------------

    def get(self, task_id: str) -> Task:
        return self.graph.get(task_id)

    # --- changes ---------------------------------------------------------------------------------

    async def create(self, new: NewTask) -> Task:
        return _some(await self._submit(Change(new)))

    async def update(self, patch: TaskPatch) -> Task:
        return _some(await self._submit(Change(patch)))

    async def claim(self, claim: Claim) -> Task | None:
        started = anyio.current_time()
        task = await self._submit(Change(claim))
        self.claims += 1
        self.claim_seconds += anyio.current_time() - started
        return task

    async def renew(self, renew: Renew) -> Task:
        return _some(await self._submit(Change(renew)))

    async def release(self, release: Release) -> Task:
        return _some(await self._submit(Change(release)))

    async def heartbeat(self, task_id: str, agent_id: str) -> None:
        """A ``controller.heartbeat`` from a task's holder renews its lease by its last length;
        from anyone else it changes nothing (a heartbeat never fails)."""
        task = self.graph.tasks.get(task_id)
        if task is not None and task.lease_owner == agent_id and task.status == "running":
            with contextlib.suppress(SidecarError):
                await self._submit(Change(Renew(id=task_id, agent_id=agent_id)))

    async def sweep(self) -> None:
        """Expire what has run out by now (the expiry timer calls it; so may a test)."""
        await self._submit(Change(Sweep()))

    async def _submit(self, change: Change) -> Task | None:
        if self.broken is not None:
            raise self.broken  # never write over a file we could not read: it may hold every task
        self._writer.put([change])
        await change.done.wait()
        if change.error is not None:
            raise change.error
        return change.result

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Audit and answer each batch the writer thread has written; take in outside edits."""
        if self.broken is not None:
            self.graph = _BrokenGraph(self.broken)
        if self._writer.stopped:  # a restart after a failure: a fresh writer thread
            self._writer = Batcher(self._write, f"sidecar-tasks:{self.path}")
        send, receive = anyio.create_memory_object_stream[tuple[list[Change], Outside]](math.inf)
        self._written, self._token = send, anyio.lowlevel.current_token()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch)
                tg.start_soon(self._expire)
                task_status.started()
                async for batch, outside in receive:
                    with anyio.CancelScope(shield=True):  # written: its callers get their answer
                        if outside is not None:
                            await self._audit_changes(*outside, source="file")
                        await self._audit(batch)
                        await self._back_pressure()
                    for change in batch:
                        change.done.set()
                    self._deadlines_moved.set()
        finally:
            self._written = None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._writer.stop)

    def _write(self, items: list[Change | None]) -> None:
        """The writer thread's batch: the changes, applied and written at once; or, when
        there are none, a look at the file for an outside edit. Handed back to :meth:`run`."""
        batch = [c for c in items if c is not None]
        try:
            outside = self._apply_and_write(batch) if batch else self._reload_if_changed()
        except Exception as exc:  # a bug: every caller still gets an answer
            log.exception("tasks.write_crashed")
            outside = None
            for change in batch:
                change.error, change.result = SidecarError(f"internal error while writing: {exc!r}"), None
        if (batch or outside is not None) and self._written is not None and self._token is not None:
            written, token = self._written, self._token
            token.backend_class.run_sync_soon(written.send_nowait, ((batch, outside),), token.native_token)

    def _apply_and_write(self, batch: list[Change]) -> Outside:
        """In the writer thread, under the exclusive lock: rebase on the file, apply, write."""
        now_ns = self.clock.now_ns()
        outside = None
        try:
            with locked(self.path, exclusive=True):
                base = self.graph
                if _stamp(self.path) != self._stamp:  # someone else wrote: build on their graph
                    try:
                        fresh = read_graph(self.path, missing_ok=False)
                        outside = (self.graph, fresh)
                        base = fresh
                        self.queue.rebuild(fresh)
                    except GraphFileError as exc:
                        self._refuse_file(exc)
                graph = base.copy()
                for change in batch:
                    change.apply(graph, self.queue, now_ns, self.max_pending, self.max_event_bytes)
                self._persist(graph, batch, whole=outside is not None)
                self.graph = graph
                self._note_queue()
        except (OSError, GraphFileError) as exc:  # the lock file or the graph file is unusable
            self._index()  # the queue took changes the graph did not keep
            reason = exc.message if isinstance(exc, GraphFileError) else str(exc)
            error = StorageError(f"could not write {self.path}: {reason}; nothing changed", {"path": self.path})
            log.error("tasks.write_failed", path=self.path, error=reason)
            for change in batch:
                if change.error is None:
                    change.error, change.result = error, None
            return None
        return outside

    def _persist(self, graph: TaskGraph, batch: list[Change], *, whole: bool) -> None:
        """The batch's changed tasks, durably: appended to the journal, or, once the journal
        has grown past the file (at least 1 MiB, at most 64 MiB), the whole graph written and
        the journal emptied. So a batch costs what it changed, not the size of the graph."""
        changed = {after.id: after for c in batch for after in c.changes}
        if not changed and not whole:
            return  # renewals only: a restart gives every lease fresh time anyway
        if not whole:
            self.journal_bytes = append_journal(self.path, graph.version, changed.values())
            self.writes += 1
            if self.journal_bytes <= min(JOURNAL_MAX, max(JOURNAL_MIN, self.file_bytes)):
                return
        write_graph(self.path, graph)
        self._stamp = _stamp(self.path)
        self.file_bytes = self._stamp[1] if self._stamp else 0
        self.journal_bytes = 0
        self.writes += whole
        self.checkpoints += 1

    def _reload_if_changed(self) -> tuple[TaskGraph, TaskGraph] | None:
        """Take in a valid outside edit; refuse any other (logged), never failing."""
        try:
            with locked(self.path, exclusive=True):
                return self._reload_locked()
        except (OSError, GraphFileError) as exc:
            log.error("tasks.reload_failed", path=self.path, error=str(exc))
            return None

    def _reload_locked(self) -> tuple[TaskGraph, TaskGraph] | None:
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return None  # our own write, or nothing
        self._stamp = stamp
        if self.broken is not None:  # nothing good of ours to restore: wait for a valid file
            try:
                fresh = read_graph(self.path, missing_ok=False)
            except GraphFileError as exc:
                log.error("tasks.file_unusable", path=self.path, error=exc.message)
                return None
            self.broken = None
            log.warning("tasks.file_usable_again", path=self.path, tasks=len(fresh.tasks))
            self.graph = fresh
            self._index()
            return None  # no audit: we never knew the tasks before
        try:
            fresh = read_graph(self.path, missing_ok=False)
        except GraphFileError as exc:
            self._refuse_file(exc)
            return None
        old, self.graph = self.graph, fresh
        self._index()
        log.info("tasks.file_taken_in", path=self.path, tasks=len(fresh.tasks))
        return old, fresh

    def _refuse_file(self, exc: GraphFileError) -> None:
        """Keep the refused file in the archive and put our valid graph back (lock held).

        A deleted file is written back the same way: our graph in memory is the truth."""
        missing = exc.data.get("reason") == "missing" if isinstance(exc.data, dict) else False
        kept = "(nothing to keep)" if missing else self._keep_refused()
        log.error(
            "tasks.file_missing" if missing else "tasks.file_refused",
            path=self.path,
            reason=exc.message,
            kept_in=kept,
            written_back=len(self.graph.tasks),
        )
        try:
            write_graph(self.path, self.graph)
        except OSError as err:  # e.g. a directory in its place: reads go on from memory
            log.error("tasks.write_back_failed", path=self.path, error=str(err))
        self._stamp = _stamp(self.path)

    def _keep_refused(self) -> str:
        """A 0600 copy of the refused file in the archive (best effort: it may be no file)."""
        kept = os.path.join(self.archive_dir, f"{GRAPH_FILE}.{format_timestamp(self.clock.now_ns())}.invalid")
        try:
            data = read_regular(self.path, MAX_GRAPH_BYTES)
            fd = open_regular(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                write_all(fd, data)
            finally:
                os.close(fd)
        except OSError:
            return "(could not be copied)"
        return kept

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
            self._writer.put([None])

    async def _expire(self) -> None:
        """Sweep when the earliest lease or timeout comes due (woken when deadlines move)."""
        while True:
            moved = self._deadlines_moved = anyio.Event()
            deadline = self.next_deadline
            if deadline is None:
                await moved.wait()
                continue
            delay = (timestamp_ns(deadline) - self.clock.now_ns()) / 1e9
            if delay > 0:
                with anyio.move_on_after(delay):
                    await moved.wait()
                continue
            try:
                await self.sweep()
            except SidecarError as exc:  # the graph cannot be written: try again in a while
                log.error("tasks.sweep_failed", error=exc.message)
                await anyio.sleep(1.0)

    # --- back-pressure -------------------------------------------------------------------------------

    async def _back_pressure(self) -> None:
        """``backpressure.warning`` at 80% of ``max_pending``, ``backpressure.full`` at 100%,
        ``backpressure.cleared`` below 80% again: once per crossing, in ``system``."""
        level = 2 if self.pending >= self.max_pending else 1 if self.pending * 5 >= self.max_pending * 4 else 0
        if level == self.pressure:
            return
        kinds = ["backpressure.cleared"] if level == 0 else ["backpressure.warning", "backpressure.full"]
        kinds = kinds if level == 0 else kinds[self.pressure : level]
        self.pressure = level
        if not kinds or self.audit is None:
            return
        data = {"pending": self.pending, "max_pending": self.max_pending}
        events = [
            NewEvent(conversation_id=SYSTEM, type=k, visibility="status", level="milestone", data=data) for k in kinds
        ]
        try:
            await self.audit(events)
        except SidecarError as exc:
            log.error("tasks.backpressure_event_failed", error=exc.message)

    # --- the audit trail ---------------------------------------------------------------------------

    async def _audit(self, batch: list[Change]) -> None:
        await self._emit([event for c in batch for event in c.events])

    async def _audit_changes(self, old: TaskGraph, new: TaskGraph, *, source: str) -> None:
        changed = [(task, old.tasks.get(task.id)) for task in new.tasks.all() if old.tasks.get(task.id) != task]
        changed.sort(key=lambda pair: (pair[0].created_at, pair[0].id))  # in a stable order
        await self._emit([_audit_event(task, before, source=source, kind="task.updated") for task, before in changed])

    async def _emit(self, events: list[NewEvent]) -> None:
        """Write the audit events. Each is made to fit the log's ``max_event_bytes`` (a task
        may be bigger than an event may be), and when the batch fails, each event is tried on
        its own: one that cannot be written (a damaged conversation) costs only itself."""
        if not events or self.audit is None:
            return
        try:
            await self.audit([fit_audit_event(e, self.max_event_bytes) for e in events])
            return
        except SidecarError as exc:
            limit = exc.data.get("max_event_bytes") if isinstance(exc.data, dict) else None
            if isinstance(limit, int) and 0 < limit < self.max_event_bytes:
                self.max_event_bytes = limit  # the log's limit is lower than we assumed: learn it
            elif len(events) == 1:
                log.error("tasks.audit_failed", task_id=events[0].task_id, error=exc.message)
                return
        for event in events:
            try:
                await self.audit([fit_audit_event(event, self.max_event_bytes)])
            except SidecarError as exc:
                log.error("tasks.audit_failed", task_id=event.task_id, error=exc.message)


_AUDIT_MARGIN = 256  # for the id, seq and timestamp the log adds to an event
_KEPT_WHOLE = ("id", "status", "version", "conversation_id", "priority", "created_at", "updated_at", "parent_id")
_audit_encoder = msgspec.json.Encoder()


def fit_audit_event(event: NewEvent, limit: int) -> NewEvent:
    """``event`` made to fit in ``limit`` bytes as the log writes it.

    A task's ``inputs`` and ``outputs`` give way first, each to a note of its size
    (``tasks.get`` still has them), then every other field but the few that say what
    happened to which task (so the controller still learns that a task is done);
    ``data.omitted`` lists what was left out."""
    if len(_audit_encoder.encode(event)) + _AUDIT_MARGIN <= limit:
        return event
    data = dict(event.data)
    task = dict(data["task"])
    omitted = []
    for name in ("inputs", "outputs"):
        size = len(_audit_encoder.encode(task.get(name)))
        if size > 64:
            task[name] = {"omitted_bytes": size}
            omitted.append(name)
    fitted = msgspec.structs.replace(event, data={**data, "task": task, "omitted": omitted})
    if len(_audit_encoder.encode(fitted)) + _AUDIT_MARGIN <= limit:
        return fitted
    small = {name: task.get(name) for name in _KEPT_WHOLE}
    small["type"] = str(task.get("type", ""))[:128]
    owner = task.get("owner")
    small["owner"] = owner if isinstance(owner, str) and len(owner) <= 256 else None
    omitted += [name for name in task if name not in small]
    data = {"task": small, "changed": data.get("changed", [])[:32], "source": data.get("source"), "omitted": omitted}
    return msgspec.structs.replace(event, data=data)


def _audit_event(
    task: Task, before: Task | None, *, source: str, kind: str | None = None, actor: str | None = None
) -> NewEvent:
    """The event that records a task change, in the task's conversation, else ``system``.
    Its ``agent_id`` is the agent that asked for the change (a claim, a fenced update), else
    none: the sidecar's own (an expiry, an edit by someone who gave no agent id). So the
    event's clock counts it for whoever made it, never for an owner who did not."""
    kind = kind or ("task.created" if before is None else "task.updated")
    changed = sorted(f for f in task.__struct_fields__ if getattr(task, f) != getattr(before, f)) if before else []
    return NewEvent(
        conversation_id=task.conversation_id or SYSTEM,
        type=kind,
        visibility="status",
        level="milestone" if task.status in TERMINAL else "state",
        agent_id=actor,
        task_id=task.id,
        data={"task": msgspec.to_builtins(task), "changed": changed, "source": source},
    )
