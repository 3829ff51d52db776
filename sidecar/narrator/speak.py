"""Speaking to the user: the one way a ``narrator.message`` is written, with a speak grant."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from sidecar.controller.grants import GrantBook
from sidecar.errors import GateClosedError, SidecarError
from sidecar.log.events import AppendResult, NewEvent

_GRANTS = uuid.UUID("6f1c2a52-8d0e-4f57-9a43-2b7f0c9e5d18")  # the namespace of narrator.message ids

Append = Callable[[list[NewEvent]], Awaitable[list[AppendResult]]]


async def speak(grants: GrantBook, append: Append, cid: str, grant_id: str, text: str) -> AppendResult:
    """Say ``text`` to the user with a grant: the one way a narrator.message is written."""
    grant = grants.redeem(cid, grant_id)
    event = NewEvent(
        id=message_id(grant_id),
        conversation_id=cid,
        type="narrator.message",
        visibility="user",
        level="milestone",
        data={"text": text, "grant_id": grant_id, "reason": grant.reason},
    )
    try:
        said = (await append([event]))[0]
    except SidecarError:
        grants.unredeem(grant)  # nothing was said: the grant still stands
        raise
    if said.duplicate:  # said already with this grant, through another daemon (jetstream)
        raise GateClosedError(
            f"no valid speak grant for {cid!r}: grant is used",
            {"reason": "used", "grant_id": grant_id, "conversation_id": cid},
        )
    return said


def message_id(grant_id: str) -> str:
    """The id of the one narrator.message a grant allows: the same on every daemon, so the
    log's idempotent ids make the grant single use across daemons too."""
    return str(uuid.uuid5(_GRANTS, grant_id))
