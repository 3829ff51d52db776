"""The task graph as a projection of the log: every task change is an event carrying the whole
task (``task.created``, ``task.updated``, ``task.claimed``, ``task.lease_expired``,
``task.timed_out``), in its conversation or in ``system``, and ``task.carried`` keeps a
task's newest version in the log when retention drops the event that held it. From those events alone come a
task's history, the graph as it stood at any time, and the whole graph again
(``sidecar rebuild-tasks``) when ``tasks.graph.json`` is gone.

Reading is paged through :meth:`EventStore.query`, so memory holds one page and the tasks,
never the log. Events that do not carry a usable task (hand-written, damaged, or cut down to
fit the log's event size) are skipped, never trusted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import msgspec
import structlog

from sidecar.log.events import Event
from sidecar.log.store import EventStore
from sidecar.tasks.graph import TaskGraph
from sidecar.tasks.model import TASK_RECORD_TYPES, Task
from sidecar.tasks.store import JOURNAL_SUFFIX, GraphFileError, locked, read_graph, write_graph

log = structlog.get_logger("sidecar.tasks")

PAGE = 1000


class TaskVersion(Task, kw_only=True):
    """A task as it stood after one change, and the event that recorded it."""

    seq: int
    timestamp: str
    event_type: str


def task_events(store: EventStore, *, conversation_id: str | None = None, until: str | None = None) -> Iterator[Event]:
    """The task events of one conversation (or all), in time order, up to ``until`` (inclusive)."""
    params: dict[str, object] = {"types": list(TASK_RECORD_TYPES), "limit": PAGE}
    if conversation_id is not None:
        params["conversation_id"] = conversation_id
    if until is not None:
        params["end"] = until
    cursor: str | None = None
    while True:
        page = store.query({**params, "cursor": cursor})
        yield from page.events
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def task_of(event: Event) -> Task | None:
    """The whole task an event carries, or None when it carries none we can use."""
    data = event.data if isinstance(event.data, dict) else {}
    if data.get("omitted"):
        return None  # cut down to fit the log: not the whole task
    try:
        return msgspec.convert(data.get("task"), Task)
    except msgspec.ValidationError:
        return None


def project(events: Iterator[Event]) -> dict[str, Task]:
    """Each task at its highest version among ``events`` (the later event wins a tie)."""
    tasks: dict[str, Task] = {}
    for event in events:
        task = task_of(event)
        if task is not None and (task.id not in tasks or task.version >= tasks[task.id].version):
            tasks[task.id] = task
    return tasks


def history(store: EventStore, task_id: str, conversation_id: str | None) -> list[TaskVersion]:
    """Every recorded version of a task, oldest first, from its conversation's log (None: every
    conversation's, for a task the graph does not know)."""
    out: list[TaskVersion] = []
    for event in task_events(store, conversation_id=conversation_id):
        task = task_of(event) if event.task_id == task_id else None
        if task is not None and task.id == task_id and not (out and out[-1].version == task.version):
            fields = msgspec.structs.asdict(task)
            out.append(TaskVersion(**fields, seq=event.seq, timestamp=event.timestamp, event_type=event.type))
    return out


def at(store: EventStore, timestamp: str) -> list[Task]:
    """Every task as it stood after the task events at or before ``timestamp``, oldest first."""
    return sorted(project(task_events(store, until=timestamp)).values(), key=lambda t: (t.created_at, t.id))


def rebuild(store: EventStore) -> TaskGraph:
    """The whole graph from the log alone; its version counts the changes it was built from."""
    events = 0

    def counted() -> Iterator[Event]:
        nonlocal events
        for event in task_events(store):
            events += 1
            yield event

    tasks = project(counted())
    return TaskGraph(tasks.values(), events)


def rebuild_missing(store: EventStore, path: str) -> int | None:
    """At start: when the graph is gone (no file and no journal, or only the empty file a
    new data directory starts with) but the log holds task events, write the graph the log
    gives (under the graph's lock); the tasks rebuilt, or None when there was nothing to do."""
    with locked(path, exclusive=True):
        if os.path.lexists(path + JOURNAL_SUFFIX):
            return None
        if os.path.lexists(path):
            try:
                kept = read_graph(path)
            except GraphFileError:
                return None  # not ours to replace: the service refuses it by name
            if kept.tasks or kept.version:
                return None
        graph = rebuild(store)
        if not graph.tasks:
            return None
        write_graph(path, graph)
    log.warning("tasks.rebuilt_from_log", path=path, tasks=len(graph.tasks), events=graph.version)
    return len(graph.tasks)
