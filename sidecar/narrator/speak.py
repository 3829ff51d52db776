"""Speaking to the user: the one way a ``narrator.message`` is written, with a speak grant."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sidecar.controller.grants import GrantBook
from sidecar.errors import SidecarError
from sidecar.log.events import AppendResult, NewEvent

Append = Callable[[list[NewEvent]], Awaitable[list[AppendResult]]]


async def speak(grants: GrantBook, append: Append, cid: str, grant_id: str, text: str) -> AppendResult:
    """Say ``text`` to the user with a grant: the one way a narrator.message is written."""
    grant = grants.redeem(cid, grant_id)
    event = NewEvent(
        conversation_id=cid,
        type="narrator.message",
        visibility="user",
        level="milestone",
        data={"text": text, "grant_id": grant_id, "reason": grant.reason},
    )
    try:
        return (await append([event]))[0]
    except SidecarError:
        grants.unredeem(grant)  # nothing was said: the grant still stands
        raise
