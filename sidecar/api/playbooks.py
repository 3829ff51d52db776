"""``playbooks.*``: the error playbooks in force, and the one that applies to an event."""

from __future__ import annotations

import msgspec

from sidecar.api.common import EVENT_ID, registry
from sidecar.api.log import EventRef, event_by_id
from sidecar.api.session import Session
from sidecar.playbooks.library import Playbook, PlaybookInfo
from sidecar.rpc.dispatch import NoParams


class PlaybookList(msgspec.Struct, kw_only=True):
    playbooks: list[PlaybookInfo]


@registry.method(
    "playbooks.list",
    NoParams,
    PlaybookList,
    "The error playbooks in force: the shipped ones, with data/playbooks/ over them.",
    errors={},
    example={},
    inline=True,
)
async def playbooks_list(p: NoParams, s: Session) -> PlaybookList:
    return PlaybookList(playbooks=s.services.playbooks.list())


@registry.method(
    "playbooks.match",
    EventRef,
    Playbook | None,
    "The playbook that applies to an event (by its type, task outcome or data.code), or null.",
    errors={-32002: "no event has that id"},
    example={"event_id": EVENT_ID},
    inline=True,
)
async def playbooks_match(p: EventRef, s: Session) -> Playbook | None:
    return s.services.playbooks.match(await event_by_id(s, p.event_id))
