"""``context.build``: prompt context for a conversation, within a token budget."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from sidecar.api.common import CID, UNREADABLE, registry
from sidecar.api.session import Session
from sidecar.context.build import Context
from sidecar.log.events import ConversationId


class ContextParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    budget_tokens: Annotated[int, Meta(ge=1)]
    system_prompt: str = ""


@registry.method(
    "context.build",
    ContextParams,
    Context,
    "Prompt layers for a conversation, within the budget.",
    errors={-32006: UNREADABLE},
    example={"conversation_id": CID, "budget_tokens": 2000, "system_prompt": "You are a helpful narrator."},
)
async def context_build(p: ContextParams, s: Session) -> Context:
    return await s.services.context.build(p.conversation_id, p.budget_tokens, p.system_prompt)
