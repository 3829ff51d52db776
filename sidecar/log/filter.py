"""Which events a query or a subscription wants: the filter Structs, their cursor, and the
filter compiled into a :class:`Matcher`."""

from __future__ import annotations

import base64
from typing import Annotated

import msgspec
from msgspec import Meta

from sidecar.errors import InvalidParams
from sidecar.log.events import ConversationId, Event, EventType, Label, Level, Visibility
from sidecar.log.timestamps import normalize_timestamp

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
    """The filter compiled: a cheap byte test that may only say no (:meth:`maybe`), the test of
    an event's fields (:meth:`exact`), and the whole match (:meth:`matches`).

    A query reads only the conversation, seqs and time range it asks for (the cursor moves them
    on), so it needs only :meth:`exact`; an event met anywhere else (a live subscription's)
    needs :meth:`matches`."""

    def __init__(self, flt: EventFilter) -> None:
        self.conversation_id = flt.conversation_id
        self.from_seq = flt.from_seq
        self.start, self.end = flt.start, flt.end  # normalized by as_filter
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

    def matches(self, ev: Event) -> bool:
        """Whether ``ev`` matches the whole filter: conversation, ``from_seq``, time range and
        fields."""
        if self.conversation_id is not None and ev.conversation_id != self.conversation_id:
            return False
        if self.from_seq is not None and ev.seq < self.from_seq:
            return False
        if (self.start is not None and ev.timestamp < self.start) or (self.end is not None and ev.timestamp > self.end):
            return False
        return self.exact(ev)

    def exact(self, ev: Event) -> bool:
        """Whether ``ev``'s fields match: types, visibility, agents, levels and turns."""
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
