"""``summary.*``: rolling summaries, persisted summaries and their snapshots."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from sidecar.api.common import CID, TOO_BIG, UNREADABLE, ConversationRef, in_thread, registry
from sidecar.api.session import Session
from sidecar.errors import NotFoundError
from sidecar.log.events import ConversationId, Event
from sidecar.log.store import EventStore
from sidecar.summary.files import load_snapshot, load_summary, persist_summary
from sidecar.summary.state import RING, Summary, summarize


class SummaryParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    keep_recent: Annotated[int, Meta(ge=0, le=1000)] = 5
    max_tokens: Annotated[int, Meta(ge=1)] | None = None


class SnapshotRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    summary_ref: Annotated[
        str, Meta(pattern="^[0-9a-f]{64}$(?!\n)", description="64 lowercase hex digits, as a summary_ref is")
    ]


class Snapshot(msgspec.Struct, kw_only=True):
    conversation_id: str
    summary_ref: str
    markdown: str


def _all_events(store: EventStore, cid: str) -> list[Event]:
    return store.query(conversation_id=cid, limit=None).events


async def _summarize(p: SummaryParams, s: Session) -> Summary:
    if p.keep_recent <= RING:  # the incremental state serves it, without reading the log
        state = await s.services.summaries.state(p.conversation_id)
        return state.render(keep_recent=p.keep_recent, max_tokens=p.max_tokens, counter=s.services.counter)

    def work() -> Summary:
        return summarize(
            p.conversation_id,
            _all_events(s.services.store, p.conversation_id),
            keep_recent=p.keep_recent,
            max_tokens=p.max_tokens,
            counter=s.services.counter,
        )

    return await in_thread(work)


@registry.method(
    "summary.rolling",
    SummaryParams,
    Summary,
    "Older events as markdown bullets, the newest whole.",
    errors={-32005: TOO_BIG, -32006: UNREADABLE},
    example={"conversation_id": CID, "keep_recent": 5, "max_tokens": 800},
)
async def summary_rolling(p: SummaryParams, s: Session) -> Summary:
    return await _summarize(p, s)


@registry.method(
    "summary.persist",
    SummaryParams,
    Summary,
    "summary.rolling, written to data/summaries/.",
    errors={-32005: TOO_BIG, -32006: UNREADABLE + ", or the summary cannot be written"},
    example={"conversation_id": CID, "keep_recent": 5},
)
async def summary_persist(p: SummaryParams, s: Session) -> Summary:
    summary = await _summarize(p, s)
    path = await in_thread(lambda: persist_summary(p.conversation_id, summary, data_dir=s.services.store.data_dir))
    return msgspec.structs.replace(summary, path=path)


@registry.method(
    "summary.get",
    ConversationRef,
    Summary,
    "The last persisted summary; -32002 when none.",
    errors={
        -32002: "the conversation has no persisted summary",
        -32005: TOO_BIG,
        -32006: "the summary file is damaged or not ours",
    },
    example={"conversation_id": CID},
)
async def summary_get(p: ConversationRef, s: Session) -> Summary:
    found = await in_thread(lambda: load_summary(p.conversation_id, data_dir=s.services.store.data_dir))
    if found is None:
        raise NotFoundError(f"no persisted summary for {p.conversation_id!r}", {"conversation_id": p.conversation_id})
    return found


@registry.method(
    "summary.snapshot",
    SnapshotRef,
    Snapshot,
    "The persisted summary a summary_ref names, forever.",
    errors={
        -32002: "no persisted summary of the conversation has that summary_ref",
        -32005: TOO_BIG,
        -32006: "the snapshot file is damaged or not ours",
    },
    example={"conversation_id": CID, "summary_ref": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
)
async def summary_snapshot(p: SnapshotRef, s: Session) -> Snapshot:
    markdown = await in_thread(
        lambda: load_snapshot(p.conversation_id, p.summary_ref, data_dir=s.services.store.data_dir)
    )
    if markdown is None:
        raise NotFoundError(f"no snapshot {p.summary_ref} for {p.conversation_id!r}", {"summary_ref": p.summary_ref})
    return Snapshot(conversation_id=p.conversation_id, summary_ref=p.summary_ref, markdown=markdown)
