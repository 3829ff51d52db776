"""Queries over many conversations: filter, merge in time order, page with a cursor.

Events come out in ``(timestamp, conversation_id, seq)`` order, which is seq order inside a
conversation (timestamps never decrease there) and a stable total order across them. The
cursor is that key of the last event returned, so paging is exact however the log grows.
"""

from __future__ import annotations

import base64
import heapq
from collections.abc import Callable, Iterator
from typing import Annotated

import msgspec
import structlog
from msgspec import Meta

from sidecar.errors import InvalidParams
from sidecar.log.events import ConversationId, Event, EventType, Label, Level, Page, Visibility, decode_event
from sidecar.log.reader import Snapshot
from sidecar.log.timestamps import normalize_timestamp

log = structlog.get_logger("sidecar.log")

Limit = Annotated[int, Meta(ge=1, le=100_000)]
SortKey = tuple[str, str, int]


class EventFilter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which events: every field is optional and ranges are inclusive (``log.subscribe``)."""

    conversation_id: ConversationId | None = None
    start: str | None = None
    end: str | None = None
    types: list[EventType] | None = None
    agent_ids: list[Label] | None = None
    turn_start: int | None = None
    turn_end: int | None = None
    visibility: Visibility | list[Visibility] | None = None
    levels: list[Level] | None = None
    from_seq: Annotated[int, Meta(ge=1)] | None = None


class QueryFilter(EventFilter, kw_only=True, forbid_unknown_fields=True):
    """An :class:`EventFilter` with paging (``log.query``): a page size and a cursor."""

    limit: Limit | None = 1000
    cursor: str | None = None


def as_filter(obj: QueryFilter | dict[str, object]) -> QueryFilter:
    if isinstance(obj, QueryFilter):
        obj = {k: v for k, v in msgspec.structs.asdict(obj).items() if v is not None}
    try:
        flt = msgspec.convert(obj, QueryFilter)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid query: {exc}") from None
    if flt.start is not None:
        flt.start = normalize_timestamp(flt.start)
    if flt.end is not None:
        flt.end = normalize_timestamp(flt.end)
    return flt


def encode_cursor(key: SortKey) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(["v1", *key])).decode().rstrip("=")


def decode_cursor(cursor: str) -> SortKey:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        tag, ts, cid, seq = msgspec.json.decode(raw, type=tuple[str, str, str, int])
        if tag != "v1":
            raise ValueError(tag)
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise InvalidParams("invalid cursor: pass back a next_cursor exactly as it was returned") from None
    return ts, cid, seq


class Matcher:
    """The filter compiled: a cheap byte test that may only say no, then the exact test."""

    def __init__(self, flt: QueryFilter) -> None:
        vis = flt.visibility
        self.visibility = {vis} if isinstance(vis, str) else set(vis) if vis else None
        self.types = set(flt.types) if flt.types else None
        self.agents = set(flt.agent_ids) if flt.agent_ids else None
        self.levels = set(flt.levels) if flt.levels else None
        self.turn_start, self.turn_end = flt.turn_start, flt.turn_end
        # Lines are written by msgspec, so a field's bytes are exactly encode(value).
        needles: list[list[bytes]] = []
        if self.types:
            needles.append([b'"type":' + msgspec.json.encode(t) for t in self.types])
        if self.visibility:
            needles.append([b'"visibility":' + msgspec.json.encode(v) for v in self.visibility])
        if self.agents:
            needles.append([b'"agent_id":' + msgspec.json.encode(a) for a in self.agents])
        self.needles = needles

    def maybe(self, line: bytes) -> bool:
        return all(any(n in line for n in group) for group in self.needles)

    def exact(self, ev: Event) -> bool:
        if self.types is not None and ev.type not in self.types:
            return False
        if self.visibility is not None and ev.visibility not in self.visibility:
            return False
        if self.agents is not None and ev.agent_id not in self.agents:
            return False
        if self.levels is not None and ev.level not in self.levels:
            return False
        if self.turn_start is not None or self.turn_end is not None:
            if ev.turn is None:
                return False
            if self.turn_start is not None and ev.turn < self.turn_start:
                return False
            if self.turn_end is not None and ev.turn > self.turn_end:
                return False
        return True


def decode_lines(lines: list[bytes], cid: str) -> list[Event]:
    """Decode lines read from a log, skipping (and reporting) any that do not parse."""
    out: list[Event] = []
    for line in lines:
        try:
            out.append(decode_event(line))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("log.bad_line_skipped", conversation_id=cid, error=str(exc), line=line[:200])
    return out


def run_query(flt: QueryFilter, cids: list[str], snapshot: Callable[[str], Snapshot]) -> Page:
    """One page of events matching ``flt`` across ``cids``, in time order."""
    after = decode_cursor(flt.cursor) if flt.cursor else None
    start = flt.start
    if after is not None and (start is None or after[0] > start):
        start = after[0]
    if flt.end is not None and start is not None and start > flt.end:
        return Page(events=[])
    match = Matcher(flt)
    limit = flt.limit
    if flt.conversation_id is not None:
        cids = [flt.conversation_id]
    snaps = [snapshot(cid) for cid in cids]
    try:
        streams = [_stream(s, start, flt.end, flt.from_seq, match) for s in snaps if not s.empty]
        out: list[Event] = []
        more = False
        for key, event in heapq.merge(*streams, key=lambda item: item[0]):
            if after is not None and key <= after:
                continue
            if limit is not None and len(out) >= limit:
                more = True
                break
            out.append(event)
    finally:
        for s in snaps:
            s.close()
    cursor = None
    if more:
        last = out[-1]
        cursor = encode_cursor((last.timestamp, last.conversation_id, last.seq))
    return Page(events=out, next_cursor=cursor)


def _stream(
    snap: Snapshot, start: str | None, end: str | None, from_seq: int | None, match: Matcher
) -> Iterator[tuple[SortKey, Event]]:
    cid = snap.cid
    for line in snap.lines_from(timestamp=start, until=end, seq=from_seq):
        if not match.maybe(line):
            continue
        for event in decode_lines([line], cid):
            if match.exact(event) and (from_seq is None or event.seq >= from_seq):
                yield (event.timestamp, cid, event.seq), event
