"""``log.search``: full-text search over the log (contract §15; the syntax is in docs/search.md)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from sidecar.api.common import CID, SEARCH_OFF, in_thread, registry
from sidecar.api.session import Session
from sidecar.log.events import ConversationId, EventType, Label
from sidecar.search.query import SearchQuery
from sidecar.search.service import SearchResult


class SearchParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    q: SearchQuery
    conversation_id: ConversationId | None = None
    types: list[EventType] | None = None
    agent_ids: list[Label] | None = None
    start: str | None = None  # timestamps, inclusive, as log.query takes them
    end: str | None = None
    limit: Annotated[int, Meta(ge=1, le=100)] = 20


@registry.method(
    "log.search",
    SearchParams,
    SearchResult,
    "Events ranked by how well they match q (BM25 over the type and the strings in data), best "
    "first, each with a snippet whose matched words are between ** and **.",
    errors={-32003: SEARCH_OFF},
    example={"q": "timeout OR refused", "conversation_id": CID, "limit": 5},
)
async def log_search(p: SearchParams, s: Session) -> SearchResult:
    search = s.services.search
    return await in_thread(
        lambda: search.search(
            p.q,
            limit=p.limit,
            conversation_id=p.conversation_id,
            types=p.types,
            agent_ids=p.agent_ids,
            start=p.start,
            end=p.end,
        )
    )
