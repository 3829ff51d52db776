"""``log.*``: append, read, query and follow the event log."""

from __future__ import annotations

import functools
from typing import Annotated

import msgspec
from msgspec import Meta

from sidecar.api.common import CID, EVENT_ID, STORAGE, TOO_BIG, UNREADABLE, Ok, in_thread, quick_read, registry
from sidecar.api.session import Session
from sidecar.errors import ForbiddenError, InvalidParams, NotFoundError
from sidecar.log.clocks import Order
from sidecar.log.events import (
    WHOLE,
    AppendResult,
    Causality,
    ConversationId,
    ConversationInfo,
    Event,
    EventId,
    EventType,
    NewEvent,
    Page,
    Visibility,
)
from sidecar.log.filter import EventFilter, Limit, QueryFilter
from sidecar.log.request import AppendRequest
from sidecar.rpc.dispatch import BadParams, NoParams
from sidecar.rpc.protocol import Request, encode, error_response, result_response
from sidecar.summary.files import delete_summaries
from sidecar.tasks.retention import CHUNK, carried_events
from sidecar.tasks.service import SYSTEM

DECISION = "controller.decision"

APPEND_ERRORS = {
    -32001: "expected_seq is given and the conversation's last seq is another",
    -32003: "visibility is user (only chat.user_message and narrator.say write user-visible text), or the "
    "type is controller.decision (the controller's own)",
    -32006: STORAGE,
}


class AppendMany(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    events: Annotated[list[NewEvent], Meta(min_length=1, max_length=10_000)]


class TailParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    limit: Annotated[int, Meta(ge=0, le=10_000)] = 20


class Events(msgspec.Struct, kw_only=True):
    events: list[Event]


class SinceParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    timestamp: str
    limit: Limit = 1000
    cursor: str | None = None


class ByTypeParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    types: Annotated[list[EventType], Meta(min_length=1)]
    visibility: Visibility | list[Visibility] | None = None
    limit: Limit = 1000
    cursor: str | None = None


class EventRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    event_id: EventId


class CausalityParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    event_id: EventId
    max_depth: Annotated[int, Meta(ge=1, le=256)] = 16


class CompareParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    a: EventId
    b: EventId


class Comparison(msgspec.Struct, kw_only=True):
    """``before``: ``a`` happened before ``b`` (``b`` knew of it); ``concurrent``: neither knew of the other."""

    order: Order


class DeleteParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    confirm: Annotated[str, Meta(description="the conversation_id again: a deletion cannot be undone")]


class Deleted(msgspec.Struct, kw_only=True):
    """What went: ``last_seq`` is the last seq the conversation had (0: it had no log)."""

    conversation_id: str
    last_seq: int
    summaries: int  # summary files deleted
    groups: int  # consumer-group positions dropped
    tasks_carried: int  # tasks of the conversation whose newest version was written again in system


class Conversations(msgspec.Struct, kw_only=True):
    conversations: list[ConversationInfo]


GroupName = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}" + WHOLE,
        description="1 to 128 characters: letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
    ),
]


class SubscribeParams(EventFilter, kw_only=True, forbid_unknown_fields=True):
    """The filter of ``log.query`` without paging; ``from_seq`` replays history first. With a
    ``group`` (and a ``conversation_id``), it replays from just after the group's acked seq."""

    group: GroupName | None = None


class AckParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    group: GroupName
    conversation_id: ConversationId
    seq: Annotated[int, Meta(ge=1)]


class Acked(msgspec.Struct, kw_only=True):
    group: str
    conversation_id: str
    acked_seq: int  # the group's position after the ack (never lower than before)


class GroupInfo(msgspec.Struct, kw_only=True):
    group: str
    conversation_id: str
    acked_seq: int
    lag: int  # events after the acked one: last_seq - acked_seq


class Groups(msgspec.Struct, kw_only=True):
    groups: list[GroupInfo]


class Subscribed(msgspec.Struct, kw_only=True):
    subscription: int


class Unsubscribe(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    subscription: int


def _no_user_text(events: list[NewEvent]) -> None:
    for ev in events:
        if ev.visibility == "user":
            raise ForbiddenError(
                "visibility 'user' is the chat itself: only chat.user_message and narrator.say write it",
                {"conversation_id": ev.conversation_id, "type": ev.type},
            )
        if ev.type == DECISION:  # it carries speak grants, which every daemon of a stream honours
            raise ForbiddenError(
                f"{DECISION} is the controller's own: only it grants speech",
                {"conversation_id": ev.conversation_id, "type": ev.type},
            )


@registry.method(
    "log.append",
    NewEvent,
    AppendResult,
    "Durably append one event; answers once it is on disk.",
    errors=APPEND_ERRORS,
    example={"conversation_id": CID, "type": "agent.progress", "agent_id": "planner", "data": {"pct": 40}},
)
async def log_append(p: NewEvent, s: Session) -> AppendResult:
    _no_user_text([p])
    return (await s.services.appender.append_valid([p]))[0]


@registry.fast_path("log.append")
def log_append_now(req: Request, s: Session) -> bool:
    """The hot path: a valid append joins the next batch without a task of its own and is
    answered from the batch's completion. Anything else takes the general path above."""
    try:
        event = registry.params_of(req, NewEvent)
    except BadParams:
        return False  # the general path words the error
    if event.visibility == "user" or event.type == DECISION or s.stopping:
        return False

    def answer(done: AppendRequest) -> None:
        if req.is_notification:
            s.answered(None)
            return
        err = done.error
        reply = (
            result_response(req.id, done.results[0])
            if err is None
            else error_response(req.id, err.code, err.message, err.data)
        )
        s.answered(encode(reply))

    s.services.appender.append_soon([event], answer)
    return True


@registry.method(
    "log.append_many",
    AppendMany,
    list[AppendResult],
    "Append several events, all or none.",
    errors=APPEND_ERRORS,
    example={
        "events": [
            {"conversation_id": CID, "type": "tool.started", "data": {"tool": "grep"}},
            {"conversation_id": CID, "type": "tool.finished", "level": "detail", "data": {"hits": 3}},
        ]
    },
)
async def log_append_many(p: AppendMany, s: Session) -> list[AppendResult]:
    _no_user_text(p.events)
    return await s.services.appender.append_valid(p.events)


@registry.method(
    "log.tail",
    TailParams,
    Events,
    "The newest events of a conversation, oldest first.",
    errors={-32006: UNREADABLE},
    example={"conversation_id": CID, "limit": 5},
    inline=True,
)
async def log_tail(p: TailParams, s: Session) -> Events:
    if p.limit > 200:
        return Events(events=await in_thread(s.services.store.tail, p.conversation_id, p.limit))
    tail = functools.partial(s.services.store.tail, p.conversation_id, p.limit, shared=True)
    return Events(events=await quick_read(tail))


@registry.method(
    "log.since",
    SinceParams,
    Page,
    "Events of every conversation from a time on, in time order.",
    errors={},
    example={"timestamp": "2026-11-23T10:00:00Z", "limit": 100},
    inline=True,
)
async def log_since(p: SinceParams, s: Session) -> Page:
    since = functools.partial(s.services.store.since, p.timestamp, limit=p.limit, cursor=p.cursor)
    if p.limit > 200:
        return await in_thread(since)
    return await quick_read(since)  # a page of a few conversations: here; a wide merge: a thread


@registry.method(
    "log.by_type",
    ByTypeParams,
    Page,
    "Events of the given types, in time order.",
    errors={},
    example={"types": ["agent.error", "task.failed"], "visibility": "status", "limit": 50},
)
async def log_by_type(p: ByTypeParams, s: Session) -> Page:
    store = s.services.store
    return await in_thread(lambda: store.by_type(p.types, p.visibility, limit=p.limit, cursor=p.cursor))


@registry.method(
    "log.query",
    QueryFilter,
    Page,
    "Events matching a filter, one page at a time.",
    errors={-32006: UNREADABLE + ", when conversation_id names it"},
    example={"conversation_id": CID, "levels": ["milestone", "decision"], "limit": 100},
)
async def log_query(p: QueryFilter, s: Session) -> Page:
    return await in_thread(s.services.store.query, p)


@registry.method(
    "log.get",
    EventRef,
    Event,
    "One event by id; -32002 when there is none.",
    errors={-32002: "no event has that id"},
    example={"event_id": EVENT_ID},
    inline=True,
)
async def log_get(p: EventRef, s: Session) -> Event:
    return await event_by_id(s, p.event_id)


async def event_by_id(s: Session, event_id: str) -> Event:
    """The event with this id, read in place when it can be; -32002 when there is none."""
    event = await quick_read(functools.partial(s.services.store.get, event_id, shared=True))
    if event is None:
        raise NotFoundError(f"no event with id {event_id}", {"event_id": event_id})
    return event


@registry.method(
    "log.causality",
    CausalityParams,
    Causality,
    "What led to an event and what followed from it.",
    errors={-32002: "no event has that id", -32005: TOO_BIG},
    example={"event_id": EVENT_ID, "max_depth": 4},
)
async def log_causality(p: CausalityParams, s: Session) -> Causality:
    store = s.services.store
    found = await in_thread(lambda: store.causality(p.event_id, max_depth=p.max_depth))
    if found is None:
        raise NotFoundError(f"no event with id {p.event_id}", {"event_id": p.event_id})
    return found


@registry.method(
    "log.delete_conversation",
    DeleteParams,
    Deleted,
    "Delete a conversation for good (the right to be forgotten): its logs, summaries and group "
    "positions, not its tasks. conversation.deleted is written in system; the id, used again, "
    "starts at seq 1.",
    errors={-32003: "system cannot be deleted", -32006: STORAGE},
    example={"conversation_id": "old-chat", "confirm": "old-chat"},
)
async def log_delete_conversation(p: DeleteParams, s: Session) -> Deleted:
    cid = p.conversation_id
    if p.confirm != cid:
        raise InvalidParams(
            f"confirm must repeat the conversation_id ({cid!r}) exactly: a deletion cannot be undone",
            {"field": "confirm", "expected": cid},
        )
    if cid == SYSTEM:
        raise ForbiddenError("system cannot be deleted: the daemon's own record is kept", {"conversation_id": cid})
    svc = s.services
    store = svc.store
    # The tasks stay (contract §14), so their newest versions go to system first: the log alone
    # still gives every task once this conversation's events are gone.
    carried = await in_thread(lambda: carried_events(store, cid, 2**62, into=SYSTEM))
    for i in range(0, len(carried), CHUNK):
        await svc.appender.append_valid(carried[i : i + CHUNK])
    summaries = await in_thread(lambda: delete_summaries(cid, data_dir=store.data_dir))
    last_seq = await svc.appender.delete_conversation(cid)  # the daemon forgets its views in commit order
    groups = svc.groups.forget(cid)
    await svc.groups.save()
    deleted = NewEvent(
        conversation_id=SYSTEM,
        type="conversation.deleted",
        visibility="status",
        level="milestone",
        data={"conversation_id": cid, "last_seq": last_seq, "summaries": summaries, "groups": groups},
    )
    await svc.appender.append_valid([deleted])
    return Deleted(
        conversation_id=cid, last_seq=last_seq, summaries=summaries, groups=groups, tasks_carried=len(carried)
    )


@registry.method(
    "log.compare",
    CompareParams,
    Comparison,
    "How two events of one conversation are ordered, by their vector clocks.",
    errors={-32002: "no event has one of the ids"},
    example={"a": EVENT_ID, "b": EVENT_ID},
)
async def log_compare(p: CompareParams, s: Session) -> Comparison:
    return Comparison(order=await in_thread(s.services.store.compare, p.a, p.b))


@registry.method(
    "log.conversations",
    NoParams,
    Conversations,
    "Every conversation with counts and time span.",
    errors={-32005: TOO_BIG},
    example={},
)
async def log_conversations(p: NoParams, s: Session) -> Conversations:
    return Conversations(conversations=await in_thread(s.services.store.conversations))


@registry.method(
    "log.subscribe",
    SubscribeParams,
    Subscribed,
    "Replay from from_seq (or, with a group, from after its acked seq), then live log.event notifications.",
    errors={
        -32001: "another connection (of this daemon, or of another on the jetstream backend) is the live "
        "subscriber of this group and conversation",
        -32005: "this connection already has [server] max_subscriptions subscriptions",
    },
    example={"conversation_id": CID, "from_seq": 1, "types": ["narrator.message"]},
)
async def log_subscribe(p: SubscribeParams, s: Session) -> Subscribed:
    groups = s.services.groups
    group = (p.group, p.conversation_id) if p.group is not None and p.conversation_id is not None else None
    if group is not None:
        await groups.reserve(*group)  # other daemons' subscribers (jetstream), before ours
    try:
        return Subscribed(subscription=s.subscribe(p))
    except Exception:
        if group is not None:
            groups.unreserve(*group)
        raise


@registry.method(
    "log.unsubscribe",
    Unsubscribe,
    Ok,
    "Stop a subscription of this connection.",
    errors={-32002: "this connection has no subscription with that id"},
    example={"subscription": 1},
)
async def log_unsubscribe(p: Unsubscribe, s: Session) -> Ok:
    if not s.unsubscribe(p.subscription):
        raise NotFoundError(f"no subscription {p.subscription} on this connection", {"subscription": p.subscription})
    return Ok()


async def _last_seq(s: Session, cid: str) -> int:
    newest = await quick_read(functools.partial(s.services.store.tail, cid, 1, shared=True))
    return newest[-1].seq if newest else 0


@registry.method(
    "log.ack",
    AckParams,
    Acked,
    "A consumer group has handled a conversation up to seq (not beyond its last seq: -32602): its "
    "position moves forward, never back, and is on disk within a second.",
    errors={-32005: "the daemon keeps as many group positions as it may (100,000): reuse a group name"},
    example={"group": "indexer", "conversation_id": CID, "seq": 1},
)
async def log_ack(p: AckParams, s: Session) -> Acked:
    last = await _last_seq(s, p.conversation_id)
    if p.seq > last:
        raise InvalidParams(
            f"seq {p.seq} is beyond the last seq of {p.conversation_id!r} ({last})",
            {"field": "seq", "seq": p.seq, "last_seq": last},
        )
    acked = s.services.groups.ack(p.group, p.conversation_id, p.seq)
    return Acked(group=p.group, conversation_id=p.conversation_id, acked_seq=acked)


@registry.method(
    "log.groups",
    NoParams,
    Groups,
    "Every consumer group's position in each conversation, and how far behind it is.",
    errors={},
    example={},
)
async def log_groups(p: NoParams, s: Session) -> Groups:
    out = []
    for (group, cid), acked in sorted(s.services.groups.acked.items()):
        lag = max(0, await _last_seq(s, cid) - acked)
        out.append(GroupInfo(group=group, conversation_id=cid, acked_seq=acked, lag=lag))
    return Groups(groups=out)
