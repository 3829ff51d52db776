"""``tasks.*``: the task graph: create, update, get, list; and claims under leases."""

from __future__ import annotations

import msgspec

from sidecar.api.common import CID, GRAPH_UNUSABLE, TOO_BIG, in_thread, registry
from sidecar.api.session import Session
from sidecar.errors import NotFoundError
from sidecar.log.timestamps import normalize_timestamp
from sidecar.rpc.dispatch import NoParams
from sidecar.tasks import history
from sidecar.tasks.history import TaskVersion
from sidecar.tasks.model import Claim, NewTask, Release, Renew, Status, Task, TaskId, TaskPatch


class TaskRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: TaskId


class ListActive(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    statuses: list[Status] | None = None


class Tasks(msgspec.Struct, kw_only=True):
    tasks: list[Task]


class Claimed(msgspec.Struct, kw_only=True):
    task: Task | None  # null: no ready task (of those types)


@registry.method(
    "tasks.create",
    NewTask,
    Task,
    "Add a task; its links must exist and make no cycle.",
    errors={
        -32005: "[tasks] max_pending tasks are pending already (back-pressure); nothing changed",
        -32006: GRAPH_UNUSABLE + ", or it cannot be written; nothing changed",
    },
    example={"type": "index.repo", "id": "index-1", "inputs": {"repo": "."}, "conversation_id": CID, "priority": 1},
)
async def tasks_create(p: NewTask, s: Session) -> Task:
    return await s.services.tasks.create(p)


@registry.method(
    "tasks.update",
    TaskPatch,
    Task,
    "Change a task; expected_version makes it conditional.",
    errors={
        -32001: "expected_version is given and the task is at another version; or its lease is held and "
        "agent_id is not the holder's (changing status or outputs)",
        -32002: "no task has that id",
        -32006: GRAPH_UNUSABLE + ", or it cannot be written; nothing changed",
    },
    example={"id": "index-1", "expected_version": 1, "status": "running", "owner": "indexer"},
)
async def tasks_update(p: TaskPatch, s: Session) -> Task:
    return await s.services.tasks.update(p)


@registry.method(
    "tasks.get",
    TaskRef,
    Task,
    "One task by id; -32002 when there is none.",
    errors={-32002: "no task has that id", -32006: GRAPH_UNUSABLE},
    example={"id": "index-1"},
)
async def tasks_get(p: TaskRef, s: Session) -> Task:
    return s.services.tasks.get(p.id)


@registry.method(
    "tasks.list_active",
    ListActive,
    Tasks,
    "Tasks in the given statuses (default: the active ones).",
    errors={-32005: TOO_BIG, -32006: GRAPH_UNUSABLE},
    example={"statuses": ["running", "blocked"]},
)
async def tasks_list_active(p: ListActive, s: Session) -> Tasks:
    return Tasks(tasks=s.services.tasks.graph.list_active(p.statuses))


@registry.method(
    "tasks.ready",
    NoParams,
    Tasks,
    "Pending tasks whose dependencies are all done, best first.",
    errors={-32005: TOO_BIG, -32006: GRAPH_UNUSABLE},
    example={},
)
async def tasks_ready(p: NoParams, s: Session) -> Tasks:
    return Tasks(tasks=s.services.tasks.graph.ready())


HOLDER_ONLY = "the task is not held by agent_id (its lease ran out, or another agent holds it)"


@registry.method(
    "tasks.claim",
    Claim,
    Claimed,
    "Take the best ready task (lowest priority number, then oldest) under a lease; null when none.",
    errors={-32006: GRAPH_UNUSABLE + ", or it cannot be written; nothing changed"},
    example={"agent_id": "indexer", "types": ["index.repo"], "lease_s": 30},
)
async def tasks_claim(p: Claim, s: Session) -> Claimed:
    return Claimed(task=await s.services.tasks.claim(p))


@registry.method(
    "tasks.renew",
    Renew,
    Task,
    "The holder extends its lease by lease_s from now (no new version, no event).",
    errors={-32001: HOLDER_ONLY, -32002: "no task has that id", -32006: GRAPH_UNUSABLE},
    example={"id": "index-1", "agent_id": "indexer", "lease_s": 30},
)
async def tasks_renew(p: Renew, s: Session) -> Task:
    return await s.services.tasks.renew(p)


@registry.method(
    "tasks.release",
    Release,
    Task,
    "The holder gives the task back: pending again, the attempt refunded.",
    errors={-32001: HOLDER_ONLY, -32002: "no task has that id", -32006: GRAPH_UNUSABLE},
    example={"id": "index-1", "agent_id": "indexer"},
)
async def tasks_release(p: Release, s: Session) -> Task:
    return await s.services.tasks.release(p)


class History(msgspec.Struct, kw_only=True):
    versions: list[TaskVersion]


class AtParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    timestamp: str  # RFC 3339; a naive time is UTC


@registry.method(
    "tasks.history",
    TaskRef,
    History,
    "Every recorded version of a task, oldest first, each with the seq and timestamp of its event.",
    errors={-32002: "no task event names that id"},
    example={"id": "index-1"},
)
async def tasks_history(p: TaskRef, s: Session) -> History:
    known = s.services.tasks.graph.tasks.get(p.id)
    where = (known.conversation_id or "system") if known is not None else None
    versions = await in_thread(history.history, s.services.store, p.id, where)
    if not versions:
        raise NotFoundError(f"no task event names task {p.id!r}", {"id": p.id})
    return History(versions=versions)


@registry.method(
    "tasks.at",
    AtParams,
    Tasks,
    "Every task as it stood at a time: the log's task events up to it, replayed.",
    errors={},
    example={"timestamp": "2026-11-23T10:00:00Z"},
)
async def tasks_at(p: AtParams, s: Session) -> Tasks:
    return Tasks(tasks=await in_thread(history.at, s.services.store, normalize_timestamp(p.timestamp)))
