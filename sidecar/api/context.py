"""``context.build``: prompt context for a conversation, within a token budget."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from sidecar.api.common import CID, SEARCH_OFF, UNREADABLE, registry
from sidecar.api.session import Session
from sidecar.context.build import Context
from sidecar.log.events import ConversationId
from sidecar.search.query import SearchQuery
from sidecar.tasks.model import TaskId


class ContextParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    budget_tokens: Annotated[int, Meta(ge=1)]
    system_prompt: str = ""
    query: SearchQuery | None = None  # a related layer: the older events that match it best
    focus_task_id: TaskId | None = None  # a tasks layer around this task (two dependency hops)


@registry.method(
    "context.build",
    ContextParams,
    Context,
    "Prompt layers for a conversation, within the budget; query adds the related older events, "
    "focus_task_id the tasks around one.",
    errors={-32002: "focus_task_id names no task", -32003: SEARCH_OFF, -32006: UNREADABLE},
    example={"conversation_id": CID, "budget_tokens": 2000, "system_prompt": "You are a helpful narrator."},
)
async def context_build(p: ContextParams, s: Session) -> Context:
    return await s.services.context.build(
        p.conversation_id, p.budget_tokens, p.system_prompt, query=p.query, focus_task_id=p.focus_task_id
    )
