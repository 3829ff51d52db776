"""The task schema: one ``msgspec.Struct`` each for a task, a new task and a change."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from sidecar.log.events import WHOLE, ConversationId

Status = Literal["pending", "running", "blocked", "done", "failed", "cancelled"]
ACTIVE: frozenset[str] = frozenset({"pending", "running", "blocked"})
TERMINAL: frozenset[str] = frozenset({"done", "failed", "cancelled"})
# The events that record a task change, each with the whole task after it in data.task.
TASK_EVENT_TYPES = ("task.created", "task.updated", "task.claimed", "task.lease_expired", "task.timed_out")
# Not a change: a task's newest version written again before retention (or a deletion) drops
# the event that held it, so the log alone still gives every task (sidecar.tasks.retention).
TASK_CARRIED = "task.carried"
TASK_RECORD_TYPES = (*TASK_EVENT_TYPES, TASK_CARRIED)

# Where a status may go. Leaving a terminal state takes an explicit reopen (back to pending).
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "blocked", "done", "failed", "cancelled"}),
    "running": frozenset({"pending", "blocked", "done", "failed", "cancelled"}),
    "blocked": frozenset({"pending", "running", "failed", "cancelled"}),
    "done": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}

TaskId = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}" + WHOLE,
        description="1 to 128 characters: letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
    ),
]
Priority = Annotated[int, Meta(ge=0, le=1000)]
Attempts = Annotated[int, Meta(ge=1, le=1000, description="how many claims a task may have before it fails")]
TimeoutS = Annotated[float, Meta(gt=0, le=31_536_000, description="seconds a claimed task may run")]
LeaseS = Annotated[int, Meta(ge=1, le=3600, description="seconds, 1 to 3600")]
AgentId = Annotated[str, Meta(min_length=1, max_length=256)]


class Task(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A unit of work. Lower ``priority`` comes first; every change bumps ``version``."""

    id: TaskId
    type: str
    status: Status = "pending"
    owner: str | None = None
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    created_at: str
    updated_at: str
    parent_id: TaskId | None = None
    dependency_ids: list[TaskId] = []
    conversation_id: ConversationId | None = None
    priority: Priority = 2
    version: int = 1
    # Orchestration (tasks.claim): who holds the task and until when, and its attempts.
    lease_owner: str | None = None
    lease_expires_at: str | None = None
    attempts: int = 0
    max_attempts: Attempts = 3
    timeout_s: TimeoutS | None = None
    claimed_at: str | None = None  # when the current claim began: timeout_s counts from it
    lease_s: LeaseS | None = None  # the holder's last lease: what a heartbeat renews it by


class NewTask(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What ``tasks.create`` takes: a task's own fields, ``outputs`` included; the graph sets
    ``created_at``, ``updated_at`` and ``version``."""

    type: Annotated[str, Meta(min_length=1, max_length=128)]
    id: TaskId | None = None
    owner: str | None = None
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    parent_id: TaskId | None = None
    dependency_ids: list[TaskId] = []
    conversation_id: ConversationId | None = None
    priority: Priority = 2
    status: Status = "pending"
    max_attempts: Attempts = 3
    timeout_s: TimeoutS | None = None


class TaskPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What ``tasks.update`` may change; ``reopen`` lets a finished task go back to pending."""

    id: TaskId
    expected_version: int | None = None
    status: Status | None = None
    owner: str | None = None
    inputs: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    parent_id: TaskId | None = None
    dependency_ids: list[TaskId] | None = None
    priority: Priority | None = None
    max_attempts: Attempts | None = None
    timeout_s: TimeoutS | None = None
    reopen: bool = False
    agent_id: AgentId | None = None  # the lease holder: needed to change status or outputs while held


class Claim(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``tasks.claim``: the best ready task (of ``types``, when given) for ``agent_id``."""

    agent_id: AgentId
    types: list[Annotated[str, Meta(min_length=1, max_length=128)]] | None = None
    lease_s: LeaseS = 30


class Renew(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``tasks.renew``: the holder extends its lease (by ``lease_s``; absent: by its last)."""

    id: TaskId
    agent_id: AgentId
    lease_s: LeaseS | None = None


class Release(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``tasks.release``: the holder gives the task back (pending, the attempt refunded)."""

    id: TaskId
    agent_id: AgentId


class GraphFile(msgspec.Struct, kw_only=True):
    """``tasks.graph.json``: the tasks and a version that counts every saved change."""

    tasks: list[Task] = []
    version: int = 0
