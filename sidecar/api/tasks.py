"""``tasks.*``: the task graph: create, update, get, list."""

from __future__ import annotations

import msgspec

from sidecar.api.common import CID, GRAPH_UNUSABLE, TOO_BIG, registry
from sidecar.api.session import Session
from sidecar.rpc.dispatch import NoParams
from sidecar.tasks.model import NewTask, Status, Task, TaskId, TaskPatch


class TaskRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: TaskId


class ListActive(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    statuses: list[Status] | None = None


class Tasks(msgspec.Struct, kw_only=True):
    tasks: list[Task]


@registry.method(
    "tasks.create",
    NewTask,
    Task,
    "Add a task; its links must exist and make no cycle.",
    errors={-32006: GRAPH_UNUSABLE + ", or it cannot be written; nothing changed"},
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
        -32001: "expected_version is given and the task is at another version",
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
