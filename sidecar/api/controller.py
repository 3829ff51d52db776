"""``controller.*``: the gate, and the heartbeat that keeps the idle watchdog quiet."""

from __future__ import annotations

import msgspec

from sidecar.api.common import CID, ConversationRef, Ok, registry
from sidecar.api.session import Session
from sidecar.controller.loop import ControllerStatus
from sidecar.log.events import ConversationId, Label


class Heartbeat(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    agent_id: Label | None = None
    task_id: Label | None = None


@registry.method(
    "controller.status",
    ConversationRef,
    ControllerStatus,
    "The gate, and why it is open or closed.",
    errors={},
    example={"conversation_id": CID},
)
async def controller_status(p: ConversationRef, s: Session) -> ControllerStatus:
    return s.services.controller.status(p.conversation_id)


@registry.method(
    "controller.heartbeat",
    Heartbeat,
    Ok,
    "An agent is alive: keeps the idle watchdog quiet, and renews the lease of the task it names if it holds it.",
    errors={},
    example={"conversation_id": CID, "agent_id": "indexer", "task_id": "index-1"},
)
async def controller_heartbeat(p: Heartbeat, s: Session) -> Ok:
    s.services.controller.heartbeat(p.conversation_id, p.task_id)
    if p.task_id is not None and p.agent_id is not None:
        await s.services.tasks.heartbeat(p.task_id, p.agent_id)
    return Ok()
