"""``chat.user_message``: the user speaks."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from sidecar.api.common import CID, STORAGE, registry
from sidecar.api.session import Session
from sidecar.log.events import AppendResult, ConversationId, NewEvent


class UserMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    text: Annotated[str, Meta(min_length=1)]
    data: dict[str, Any] = {}


@registry.method(
    "chat.user_message",
    UserMessage,
    AppendResult,
    "The user speaks: a user.message, visibility user.",
    errors={-32006: STORAGE},
    example={"conversation_id": CID, "text": "How is the build going?"},
)
async def chat_user_message(p: UserMessage, s: Session) -> AppendResult:
    event = NewEvent(
        conversation_id=p.conversation_id,
        type="user.message",
        visibility="user",
        level="milestone",
        data={**p.data, "text": p.text},
    )
    return (await s.services.appender.append_valid([event]))[0]
