"""``narrator.*``: the narrator's prompt, and speaking to the user with a grant."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from sidecar.api.common import CID, SEARCH_OFF, STORAGE, UNREADABLE, registry
from sidecar.api.session import Session
from sidecar.log.events import AppendResult, ConversationId
from sidecar.narrator.prompt import NarratorPrompt
from sidecar.search.query import SearchQuery
from sidecar.tasks.model import TaskId


class NarratorSay(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    grant_id: str
    text: Annotated[str, Meta(min_length=1)]


class NarratorPromptParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    budget_tokens: Annotated[int, Meta(ge=16)]
    reason: str | None = None
    query: SearchQuery | None = None  # as context.build's: a related layer
    focus_task_id: TaskId | None = None  # as context.build's: the tasks around one


@registry.method(
    "narrator.prompt",
    NarratorPromptParams,
    NarratorPrompt,
    "Chat messages for the narrator, within the budget.",
    errors={-32002: "focus_task_id names no task", -32003: SEARCH_OFF, -32006: UNREADABLE},
    example={"conversation_id": CID, "budget_tokens": 3000},
)
async def narrator_prompt(p: NarratorPromptParams, s: Session) -> NarratorPrompt:
    return await s.services.narrator.prompt(
        p.conversation_id, p.budget_tokens, p.reason, query=p.query, focus_task_id=p.focus_task_id
    )


@registry.method(
    "narrator.say",
    NarratorSay,
    AppendResult,
    "The narrator speaks, with a valid grant; else -32004.",
    errors={
        -32004: "grant_id is not a valid grant for this conversation: unknown, already used, or expired",
        -32006: STORAGE + " (the grant still stands)",
    },
    example={"conversation_id": CID, "grant_id": "g-0190a1b2", "text": "The build is green; tests are next."},
)
async def narrator_say(p: NarratorSay, s: Session) -> AppendResult:
    return await s.services.narrator.say(p.conversation_id, p.grant_id, p.text)
