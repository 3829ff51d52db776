"""The daemon's JSON-RPC methods: ``sys.*``, ``rpc.discover`` and ``log.*``.

Params and results are msgspec Structs; the same definitions validate requests, shape
replies and produce the ``rpc.discover`` document.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import msgspec
from msgspec import Meta

from sidecar import __version__
from sidecar.context.build import Context, build_context
from sidecar.controller.loop import ControllerStatus
from sidecar.daemon.notifications import NOTIFICATIONS
from sidecar.errors import ForbiddenError, NotFoundError, StorageError
from sidecar.log.committer import AppendRequest
from sidecar.log.events import (
    AppendResult,
    Causality,
    ConversationId,
    ConversationInfo,
    Event,
    EventId,
    EventType,
    Label,
    NewEvent,
    Page,
    Visibility,
)
from sidecar.log.filter import EventFilter, Limit, QueryFilter
from sidecar.log.store import EventStore
from sidecar.narrator.prompt import NarratorPrompt
from sidecar.rpc.dispatch import BadParams, NoParams, Registry
from sidecar.rpc.protocol import Request, encode, error_response, result_response
from sidecar.summary.files import load_snapshot, load_summary, persist_summary
from sidecar.summary.state import RING, Summary, summarize
from sidecar.tasks.model import NewTask, Status, Task, TaskId, TaskPatch

if TYPE_CHECKING:
    from sidecar.daemon.server import Connection, Daemon

registry: Registry[Connection] = Registry()
for _name, (_params, _example) in NOTIFICATIONS.items():
    registry.notification(_name, _params, example=_example)

# When each server-defined error happens (the registrations' ``errors=``; see ERROR_CODES).
STORAGE = "the disk refused (full, I/O error) or the file is damaged or not ours; nothing was written"
UNREADABLE = "the conversation's log cannot be read (damaged, or not a regular file)"
GRAPH_UNUSABLE = "tasks.graph.json cannot be used (damaged or not ours) until a valid file is in its place"
TOO_BIG = "the answer would be larger than [server] max_reply_bytes"
APPEND_ERRORS = {
    -32001: "expected_seq is given and the conversation's last seq is another",
    -32003: "visibility is user: only chat.user_message and narrator.say write user-visible text",
    -32006: STORAGE,
}
CID = "c1"
EVENT_ID = "0190a1b2-c3d4-7e5f-8a6b-9c0d1e2f3a4b"


# --- params and results ----------------------------------------------------------------------


class Health(msgspec.Struct, kw_only=True):
    status: str
    version: str
    uptime_s: float
    data_dir: str
    socket: str
    pid: int


class Stats(msgspec.Struct, kw_only=True):
    uptime_s: float
    connections: int
    connections_total: int
    refusing: int  # refused connections still open while we tell them why
    subscriptions: int
    requests: int
    appends: int
    appends_per_s: float
    batches: int
    mean_batch: float
    fsyncs: int
    checkpoints: int
    append_queue: int
    commit_queue: int
    task_graph_writes: int
    summary_full_reads: int
    internal_errors: int = 0  # requests answered -32603: each one is a bug worth reporting
    faults: dict[str, int] = {}  # failures contained (connection, subscription, controller...)


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


class Conversations(msgspec.Struct, kw_only=True):
    conversations: list[ConversationInfo]


class SubscribeParams(EventFilter, kw_only=True, forbid_unknown_fields=True):
    """The filter of ``log.query`` without paging; ``from_seq`` replays history first."""


class Subscribed(msgspec.Struct, kw_only=True):
    subscription: int


class Unsubscribe(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    subscription: int


class Ok(msgspec.Struct, kw_only=True):
    ok: bool = True


# --- sys and rpc -----------------------------------------------------------------------------


@registry.method("sys.health", NoParams, Health, "Liveness: answers ok while the daemon serves.", errors={}, example={})
async def sys_health(p: NoParams, conn: Connection) -> Health:
    d = conn.daemon
    return Health(
        status="ok",
        version=__version__,
        uptime_s=round(d.uptime(), 3),
        data_dir=d.store.data_dir,
        socket=d.config.socket_path,
        pid=d.pid,
    )


@registry.method(
    "sys.stats",
    NoParams,
    Stats,
    "Connections, append rate, fsyncs, batch sizes, queue depths.",
    errors={},
    example={},
)
async def sys_stats(p: NoParams, conn: Connection) -> Stats:
    return conn.daemon.stats()


@registry.method(
    "rpc.discover",
    NoParams,
    dict[str, Any],
    "This document: every method, its errors and every notification, as OpenRPC 1.x.",
    errors={-32005: TOO_BIG},
    example={},
)
async def rpc_discover(p: NoParams, conn: Connection) -> dict[str, Any]:
    return registry.openrpc("sidecar", __version__)


# --- log -------------------------------------------------------------------------------------


def _no_user_text(events: list[NewEvent]) -> None:
    for ev in events:
        if ev.visibility == "user":
            raise ForbiddenError(
                "visibility 'user' is the chat itself: only chat.user_message and narrator.say write it",
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
async def log_append(p: NewEvent, conn: Connection) -> AppendResult:
    _no_user_text([p])
    return (await conn.daemon.appender.submit([p]))[0]


@registry.fast_path("log.append")
def log_append_now(req: Request, conn: Connection) -> bool:
    """The hot path: a valid append joins the next batch without a task of its own and is
    answered from the batch's completion. Anything else takes the general path above."""
    try:
        event = registry.params_of(req, NewEvent)
    except BadParams:
        return False  # the general path words the error
    if event.visibility == "user" or conn.daemon.stopping:
        return False

    def answer(done: AppendRequest) -> None:
        if not req.is_notification:
            err = done.error
            reply = (
                result_response(req.id, done.results[0])
                if err is None
                else error_response(req.id, err.code, err.message, err.data)
            )
            conn.send_now(encode(reply))
        conn.slots.release()

    conn.daemon.appender.submit_soon([event], answer)
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
async def log_append_many(p: AppendMany, conn: Connection) -> list[AppendResult]:
    _no_user_text(p.events)
    return await conn.daemon.appender.submit(p.events)


async def _read(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(fn, *args)


async def _quick_read(fn: Any, *args: Any) -> Any:
    """A small read (tail, get) runs right here when no writer holds the lock, since a
    trip to a worker thread costs more than the read; otherwise it waits in a thread."""
    try:
        return fn(*args, wait=False)
    except BlockingIOError:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, wait=True))


@registry.method(
    "log.tail",
    TailParams,
    Events,
    "The newest events of a conversation, oldest first.",
    errors={-32006: UNREADABLE},
    example={"conversation_id": CID, "limit": 5},
)
async def log_tail(p: TailParams, conn: Connection) -> Events:
    if p.limit > 200:
        return Events(events=await _read(conn.daemon.store.tail, p.conversation_id, p.limit))
    return Events(events=await _quick_read(conn.daemon.store.tail, p.conversation_id, p.limit))


@registry.method(
    "log.since",
    SinceParams,
    Page,
    "Events of every conversation from a time on, in time order.",
    errors={},
    example={"timestamp": "2026-11-23T10:00:00Z", "limit": 100},
)
async def log_since(p: SinceParams, conn: Connection) -> Page:
    store = conn.daemon.store
    return await _read(lambda: store.since(p.timestamp, limit=p.limit, cursor=p.cursor))


@registry.method(
    "log.by_type",
    ByTypeParams,
    Page,
    "Events of the given types, in time order.",
    errors={},
    example={"types": ["agent.error", "task.failed"], "visibility": "status", "limit": 50},
)
async def log_by_type(p: ByTypeParams, conn: Connection) -> Page:
    store = conn.daemon.store
    return await _read(lambda: store.by_type(p.types, p.visibility, limit=p.limit, cursor=p.cursor))


@registry.method(
    "log.query",
    QueryFilter,
    Page,
    "Events matching a filter, one page at a time.",
    errors={-32006: UNREADABLE + ", when conversation_id names it"},
    example={"conversation_id": CID, "levels": ["milestone", "decision"], "limit": 100},
)
async def log_query(p: QueryFilter, conn: Connection) -> Page:
    return await _read(conn.daemon.store.query, p)


@registry.method(
    "log.get",
    EventRef,
    Event,
    "One event by id; -32002 when there is none.",
    errors={-32002: "no event has that id"},
    example={"event_id": EVENT_ID},
)
async def log_get(p: EventRef, conn: Connection) -> Event:
    event = await _quick_read(conn.daemon.store.get, p.event_id)
    if event is None:
        raise NotFoundError(f"no event with id {p.event_id}", {"event_id": p.event_id})
    return event


@registry.method(
    "log.causality",
    CausalityParams,
    Causality,
    "What led to an event and what followed from it.",
    errors={-32002: "no event has that id", -32005: TOO_BIG},
    example={"event_id": EVENT_ID, "max_depth": 4},
)
async def log_causality(p: CausalityParams, conn: Connection) -> Causality:
    store = conn.daemon.store
    found = await _read(lambda: store.causality(p.event_id, max_depth=p.max_depth))
    if found is None:
        raise NotFoundError(f"no event with id {p.event_id}", {"event_id": p.event_id})
    return found


@registry.method(
    "log.conversations",
    NoParams,
    Conversations,
    "Every conversation with counts and time span.",
    errors={-32005: TOO_BIG},
    example={},
)
async def log_conversations(p: NoParams, conn: Connection) -> Conversations:
    return Conversations(conversations=await _read(conn.daemon.store.conversations))


@registry.method(
    "log.subscribe",
    SubscribeParams,
    Subscribed,
    "Replay from from_seq, then live log.event notifications.",
    errors={-32005: "this connection already has [server] max_subscriptions subscriptions"},
    example={"conversation_id": CID, "from_seq": 1, "types": ["narrator.message"]},
)
async def log_subscribe(p: SubscribeParams, conn: Connection) -> Subscribed:
    return Subscribed(subscription=conn.subscribe(p))


@registry.method(
    "log.unsubscribe",
    Unsubscribe,
    Ok,
    "Stop a subscription of this connection.",
    errors={-32002: "this connection has no subscription with that id"},
    example={"subscription": 1},
)
async def log_unsubscribe(p: Unsubscribe, conn: Connection) -> Ok:
    if not conn.unsubscribe(p.subscription):
        raise NotFoundError(f"no subscription {p.subscription} on this connection", {"subscription": p.subscription})
    return Ok()


# --- tasks -----------------------------------------------------------------------------------


class TaskRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: TaskId


class ListActive(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    statuses: list[Status] | None = None


class Tasks(msgspec.Struct, kw_only=True):
    tasks: list[Task]


@registry.method(
    "tasks.create",
    NewTask,
    Task,
    "Add a task; its links must exist and make no cycle.",
    errors={-32006: GRAPH_UNUSABLE + ", or it cannot be written; nothing changed"},
    example={"type": "index.repo", "id": "index-1", "inputs": {"repo": "."}, "conversation_id": CID, "priority": 1},
)
async def tasks_create(p: NewTask, conn: Connection) -> Task:
    return await conn.daemon.tasks.create(p)


@registry.method(
    "tasks.update",
    TaskPatch,
    Task,
    "Change a task; expected_version makes it conditional.",
    errors={
        -32001: "expected_version is given and the task is at another version",
        -32002: "no task has that id",
        -32006: GRAPH_UNUSABLE + ", or it cannot be written; nothing changed",
    },
    example={"id": "index-1", "expected_version": 1, "status": "running", "owner": "indexer"},
)
async def tasks_update(p: TaskPatch, conn: Connection) -> Task:
    return await conn.daemon.tasks.update(p)


@registry.method(
    "tasks.get",
    TaskRef,
    Task,
    "One task by id; -32002 when there is none.",
    errors={-32002: "no task has that id", -32006: GRAPH_UNUSABLE},
    example={"id": "index-1"},
)
async def tasks_get(p: TaskRef, conn: Connection) -> Task:
    return conn.daemon.tasks.get(p.id)


@registry.method(
    "tasks.list_active",
    ListActive,
    Tasks,
    "Tasks in the given statuses (default: the active ones).",
    errors={-32005: TOO_BIG, -32006: GRAPH_UNUSABLE},
    example={"statuses": ["running", "blocked"]},
)
async def tasks_list_active(p: ListActive, conn: Connection) -> Tasks:
    return Tasks(tasks=conn.daemon.tasks.graph.list_active(p.statuses))


@registry.method(
    "tasks.ready",
    NoParams,
    Tasks,
    "Pending tasks whose dependencies are all done, best first.",
    errors={-32005: TOO_BIG, -32006: GRAPH_UNUSABLE},
    example={},
)
async def tasks_ready(p: NoParams, conn: Connection) -> Tasks:
    return Tasks(tasks=conn.daemon.tasks.graph.ready())


# --- summaries and context -------------------------------------------------------------------


class SummaryParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    keep_recent: Annotated[int, Meta(ge=0, le=1000)] = 5
    max_tokens: Annotated[int, Meta(ge=1)] | None = None


class ConversationRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId


class SnapshotRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    summary_ref: Annotated[
        str, Meta(pattern="^[0-9a-f]{64}$(?!\n)", description="64 lowercase hex digits, as a summary_ref is")
    ]


class Snapshot(msgspec.Struct, kw_only=True):
    conversation_id: str
    summary_ref: str
    markdown: str


class ContextParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    budget_tokens: Annotated[int, Meta(ge=1)]
    system_prompt: str = ""


def _all_events(store: EventStore, cid: str) -> list[Event]:
    return store.query(conversation_id=cid, limit=None).events


async def _summarize(p: SummaryParams, conn: Connection) -> Summary:
    if p.keep_recent <= RING:  # the incremental state serves it, without reading the log
        state = await conn.daemon.summaries.state(p.conversation_id)
        return state.render(keep_recent=p.keep_recent, max_tokens=p.max_tokens, counter=conn.daemon.counter)

    def work() -> Summary:
        return summarize(
            p.conversation_id,
            _all_events(conn.daemon.store, p.conversation_id),
            keep_recent=p.keep_recent,
            max_tokens=p.max_tokens,
            counter=conn.daemon.counter,
        )

    return await _read(work)


@registry.method(
    "summary.rolling",
    SummaryParams,
    Summary,
    "Older events as markdown bullets, the newest whole.",
    errors={-32005: TOO_BIG, -32006: UNREADABLE},
    example={"conversation_id": CID, "keep_recent": 5, "max_tokens": 800},
)
async def summary_rolling(p: SummaryParams, conn: Connection) -> Summary:
    return await _summarize(p, conn)


@registry.method(
    "summary.persist",
    SummaryParams,
    Summary,
    "summary.rolling, written to data/summaries/.",
    errors={-32005: TOO_BIG, -32006: UNREADABLE + ", or the summary cannot be written"},
    example={"conversation_id": CID, "keep_recent": 5},
)
async def summary_persist(p: SummaryParams, conn: Connection) -> Summary:
    summary = await _summarize(p, conn)
    path = await _read(lambda: persist_summary(p.conversation_id, summary, data_dir=conn.daemon.store.data_dir))
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
async def summary_get(p: ConversationRef, conn: Connection) -> Summary:
    found = await _read(lambda: load_summary(p.conversation_id, data_dir=conn.daemon.store.data_dir))
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
async def summary_snapshot(p: SnapshotRef, conn: Connection) -> Snapshot:
    markdown = await _read(lambda: load_snapshot(p.conversation_id, p.summary_ref, data_dir=conn.daemon.store.data_dir))
    if markdown is None:
        raise NotFoundError(f"no snapshot {p.summary_ref} for {p.conversation_id!r}", {"summary_ref": p.summary_ref})
    return Snapshot(conversation_id=p.conversation_id, summary_ref=p.summary_ref, markdown=markdown)


@registry.method(
    "context.build",
    ContextParams,
    Context,
    "Prompt layers for a conversation, within the budget.",
    errors={-32006: UNREADABLE},
    example={"conversation_id": CID, "budget_tokens": 2000, "system_prompt": "You are a helpful narrator."},
)
async def context_build(p: ContextParams, conn: Connection) -> Context:
    return await context_of(conn.daemon, p.conversation_id, p.budget_tokens, p.system_prompt)


async def context_of(daemon: Daemon, cid: str, budget_tokens: int, system_prompt: str) -> Context:
    """``build_context`` for a conversation, from its incremental summary state (no re-read
    of the log), and its active and ready tasks."""
    graph = daemon.tasks.graph
    try:
        tasks = [t for t in graph.list_active() if t.conversation_id == cid]
        ready = [t for t in graph.ready() if t.conversation_id == cid]
    except StorageError:  # the task graph file is unusable: the context goes on without it
        tasks, ready = [], []
    state = (await daemon.summaries.state(cid)).copy()  # a snapshot: commits go on meanwhile

    def work() -> Context:
        return build_context(
            cid,
            state=state,
            budget_tokens=budget_tokens,
            system_prompt=system_prompt,
            tasks=tasks,
            ready=ready,
            counter=daemon.counter,
        )

    return await _read(work)


# --- the gate and the controller -------------------------------------------------------------


class UserMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    text: Annotated[str, Meta(min_length=1)]
    data: dict[str, Any] = {}


class NarratorSay(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    grant_id: str
    text: Annotated[str, Meta(min_length=1)]


class Heartbeat(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    agent_id: Label | None = None
    task_id: Label | None = None


@registry.method(
    "chat.user_message",
    UserMessage,
    AppendResult,
    "The user speaks: a user.message, visibility user.",
    errors={-32006: STORAGE},
    example={"conversation_id": CID, "text": "How is the build going?"},
)
async def chat_user_message(p: UserMessage, conn: Connection) -> AppendResult:
    event = NewEvent(
        conversation_id=p.conversation_id,
        type="user.message",
        visibility="user",
        level="milestone",
        data={**p.data, "text": p.text},
    )
    return (await conn.daemon.appender.submit([event]))[0]


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
async def narrator_say(p: NarratorSay, conn: Connection) -> AppendResult:
    return await conn.daemon.narrator.say(p.conversation_id, p.grant_id, p.text)


@registry.method(
    "controller.status",
    ConversationRef,
    ControllerStatus,
    "The gate, and why it is open or closed.",
    errors={},
    example={"conversation_id": CID},
)
async def controller_status(p: ConversationRef, conn: Connection) -> ControllerStatus:
    return conn.daemon.controller.status(p.conversation_id)


@registry.method(
    "controller.heartbeat",
    Heartbeat,
    Ok,
    "An agent is alive: keeps the idle watchdog quiet.",
    errors={},
    example={"conversation_id": CID, "agent_id": "indexer", "task_id": "index-1"},
)
async def controller_heartbeat(p: Heartbeat, conn: Connection) -> Ok:
    conn.daemon.controller.heartbeat(p.conversation_id, p.task_id)
    return Ok()


class NarratorPromptParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    conversation_id: ConversationId
    budget_tokens: Annotated[int, Meta(ge=16)]
    reason: str | None = None


@registry.method(
    "narrator.prompt",
    NarratorPromptParams,
    NarratorPrompt,
    "Chat messages for the narrator, within the budget.",
    errors={-32006: UNREADABLE},
    example={"conversation_id": CID, "budget_tokens": 3000},
)
async def narrator_prompt(p: NarratorPromptParams, conn: Connection) -> NarratorPrompt:
    return await conn.daemon.narrator.prompt(p.conversation_id, p.budget_tokens, p.reason)
