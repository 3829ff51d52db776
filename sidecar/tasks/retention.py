"""Retention never makes a task unrecoverable (contract §14).

Before the archive keeper drops a conversation's oldest segments, or a conversation is
deleted, every task whose newest version is only in what goes is written again as a
``task.carried`` event: into the same conversation for retention, into ``system`` for a
deletion. So ``sidecar rebuild-tasks`` gives the same graph after as before. Each carried
event's id is derived from what it carries, so a pass repeated after a crash writes nothing
twice.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import structlog

from sidecar.log.events import NewEvent
from sidecar.log.store import EventStore
from sidecar.tasks.history import task_events, task_of
from sidecar.tasks.model import TASK_CARRIED, Task

log = structlog.get_logger("sidecar.tasks")

_NAMESPACE = uuid.UUID("7d3b1f0e-5c0a-4e21-9a57-2f0c8b6d4e19")
CHUNK = 1000  # carried events per append: the writer's batch stays bounded


def carry_forward(store: EventStore, conversation_id: str, through_seq: int, *, into: str | None = None) -> int:
    """Write ``task.carried`` for each task whose newest version in ``conversation_id`` is
    at or below ``through_seq`` (into ``into``, else the same conversation); returns how many.
    Durable when it returns: the caller drops the old events only then."""
    events = carried_events(store, conversation_id, through_seq, into=into)
    for i in range(0, len(events), CHUNK):
        store.append_many(events[i : i + CHUNK])
    return len(events)


def carried_events(
    store: EventStore, conversation_id: str, through_seq: int, *, into: str | None = None
) -> list[NewEvent]:
    """The ``task.carried`` events :func:`carry_forward` writes (for a caller that appends
    them its own way: the daemon, through its storage backend), in chunks of :data:`CHUNK`."""
    dropped: dict[str, tuple[Task, int]] = {}
    kept: dict[str, int] = {}
    for event in task_events(store, conversation_id=conversation_id):
        task = task_of(event)
        if task is None:
            continue
        if event.seq <= through_seq:
            seen = dropped.get(task.id)
            if seen is None or task.version >= seen[0].version:
                dropped[task.id] = (task, event.seq)
        else:
            kept[task.id] = max(kept.get(task.id, -1), task.version)
    target = into or conversation_id
    events = [
        _carried(target, conversation_id, task, seq)
        for task, seq in dropped.values()
        if kept.get(task.id, -1) < task.version
    ]
    if events:
        log.info(
            "tasks.carried", conversation_id=conversation_id, into=target, tasks=len(events), through_seq=through_seq
        )
    return events


def _carried(target: str, source: str, task: Task, seq: int) -> NewEvent:
    data: dict[str, Any] = {"task": msgspec.to_builtins(task), "from": {"conversation_id": source, "seq": seq}}
    return NewEvent(
        conversation_id=target,
        type=TASK_CARRIED,
        id=str(uuid.uuid5(_NAMESPACE, f"{source}\0{seq}\0{task.id}\0{task.version}")),
        visibility="internal",
        level="detail",
        task_id=task.id,
        data=data,
    )
