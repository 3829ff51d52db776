"""Resources (contract §12) and their subscriptions.

Every MCP subscriber of one resource shares one daemon ``log.subscribe``: the first
subscriber starts a watcher, the last one leaving stops it. The watcher survives a daemon
restart: it reconnects and resumes from the last seq it saw, so growth while the daemon was
away is still announced.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp.types as types
from anyio.abc import TaskGroup
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
from sidecar_client import RpcError

from sidecar.mcp.link import DaemonDown, DaemonLink

log = logging.getLogger("sidecar.mcp")

CONVERSATIONS = "sidecar://conversations"
TASKS = "sidecar://tasks"
EVENTS_TEMPLATE = "sidecar://conversations/{conversation_id}/events"
SUMMARY_TEMPLATE = "sidecar://conversations/{conversation_id}/summary"
EVENTS_LIMIT = 100
TASK_STATUSES = ["pending", "running", "blocked", "done", "failed", "cancelled"]

_PER_CONVERSATION = re.compile(r"^sidecar://conversations/(?P<cid>[^/]+)/(?P<kind>events|summary)$")

RESOURCES = [
    types.Resource(
        name="conversations",
        uri=CONVERSATIONS,
        description="Every conversation in the log: id, event count, first and last timestamp, last seq.",
        mime_type="application/json",
    ),
    types.Resource(
        name="tasks",
        uri=TASKS,
        description="Every task in the task graph, in every status.",
        mime_type="application/json",
    ),
]

TEMPLATES = [
    types.ResourceTemplate(
        name="conversation-events",
        uri_template=EVENTS_TEMPLATE,
        description=f"The newest {EVENTS_LIMIT} events of a conversation, oldest first. Subscribe to hear "
        "when the conversation grows.",
        mime_type="application/json",
    ),
    types.ResourceTemplate(
        name="conversation-summary",
        uri_template=SUMMARY_TEMPLATE,
        description="The conversation's rolling summary, as markdown. Subscribable too.",
        mime_type="text/markdown",
    ),
]


class UnknownResource(ValueError):
    """A URI that names none of this server's resources."""


def conversation_of(uri: str) -> tuple[str, str] | None:
    """``(conversation_id, "events" | "summary")`` for a per-conversation URI, else None."""
    found = _PER_CONVERSATION.match(uri)
    return (found["cid"], found["kind"]) if found else None


async def read(link: DaemonLink, uri: str) -> types.ReadResourceResult:
    """One resource's contents, from the daemon (RpcError and DaemonDown pass through)."""
    if uri == CONVERSATIONS:
        answer = await link.call("log.conversations")
        return _json(uri, answer["conversations"])
    if uri == TASKS:
        return _json(uri, (await link.call("tasks.list_active", {"statuses": TASK_STATUSES}))["tasks"])
    found = conversation_of(uri)
    if found is None:
        raise UnknownResource(f"no resource {uri!r}: see resources/list and resources/templates/list")
    cid, kind = found
    if kind == "events":
        return _json(uri, (await link.call("log.tail", {"conversation_id": cid, "limit": EVENTS_LIMIT}))["events"])
    summary = await link.call("summary.rolling", {"conversation_id": cid})
    contents = types.TextResourceContents(uri=uri, mime_type="text/markdown", text=summary["markdown"])
    return types.ReadResourceResult(contents=[contents])


def _json(uri: str, value: Any) -> types.ReadResourceResult:
    text = json.dumps(value, ensure_ascii=False, indent=1)
    return types.ReadResourceResult(
        contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
    )


@dataclass
class _Watch:
    """One resource's subscribers, and the cancel scope of its daemon subscription."""

    scope: anyio.CancelScope
    sessions: dict[int, ServerSession] = field(default_factory=dict)  # by connection
    listens: int = 0  # open subscriptions/listen streams naming it

    def empty(self) -> bool:
        return not self.sessions and not self.listens


def connection_key(session: ServerSession) -> int:
    """Which client connection a request came from: ServerSession is per request, its
    connection is not (a subscribe and its unsubscribe arrive on different sessions)."""
    return id(getattr(session, "_connection", session))


class Hub:
    """The resource subscriptions of this server: one daemon subscription per resource."""

    def __init__(self, link: DaemonLink, bus: InMemorySubscriptionBus) -> None:
        self.link = link
        self.bus = bus
        self._watches: dict[str, _Watch] = {}
        self._tg: TaskGroup | None = None

    def start(self, tg: TaskGroup) -> None:
        self._tg = tg

    def watching(self, uri: str) -> bool:
        return uri in self._watches

    async def _acquire(self, uri: str) -> _Watch:
        """The resource's watch, started when it is the first subscriber's. Its starting point
        is taken before this returns, so growth from the subscription on is never missed."""
        found = conversation_of(uri)
        if found is None:
            raise UnknownResource(
                f"{uri!r} cannot be subscribed: only sidecar://conversations/{{conversation_id}}/events "
                "and .../summary can"
            )
        watch = self._watches.get(uri)
        if watch is None:
            assert self._tg is not None, "the hub runs inside the server's lifespan"
            watch = self._watches[uri] = _Watch(anyio.CancelScope())
            start = await last_seq(self.link, found[0])
            self._tg.start_soon(self._watch, uri, watch, start)
        return watch

    def _release(self, uri: str, watch: _Watch) -> None:
        if watch.empty() and self._watches.get(uri) is watch:
            del self._watches[uri]
            watch.scope.cancel()

    async def subscribe(self, uri: str, session: ServerSession) -> None:
        """resources/subscribe (protocol <= 2025-11-25)."""
        (await self._acquire(uri)).sessions[connection_key(session)] = session

    def unsubscribe(self, uri: str, session: ServerSession) -> None:
        watch = self._watches.get(uri)
        if watch is not None:
            watch.sessions.pop(connection_key(session), None)
            self._release(uri, watch)

    async def listen(self, uris: list[str]) -> Callable[[], None]:
        """A subscriptions/listen stream (2026-07-28) opened on ``uris``; returns its closing."""
        held = []
        for uri in uris:
            if conversation_of(uri) is not None:
                watch = await self._acquire(uri)
                watch.listens += 1
                held.append((uri, watch))

        def close() -> None:
            for uri, watch in held:
                watch.listens -= 1
                self._release(uri, watch)

        return close

    async def _watch(self, uri: str, watch: _Watch, start: int | None) -> None:
        found = conversation_of(uri)
        assert found is not None
        with watch.scope:
            try:
                await follow(self.link, found[0], lambda: self._updated(uri, watch), start)
            except Exception:  # a bug ends this subscription, not the server
                log.exception("the subscription to %s failed", uri)
                self._watches.pop(uri, None)

    async def _updated(self, uri: str, watch: _Watch) -> None:
        for key, session in list(watch.sessions.items()):
            try:
                await session.send_resource_updated(uri)
            except Exception:  # fan-out boundary: that client is gone; the others still hear
                log.info("dropped a subscriber of %s", uri, exc_info=True)
                watch.sessions.pop(key, None)
        await self.bus.publish(ResourceUpdated(uri=uri))


async def last_seq(link: DaemonLink, cid: str) -> int | None:
    """The conversation's last seq now (0 when empty); None when the daemon is not there."""
    try:
        events = (await link.call("log.tail", {"conversation_id": cid, "limit": 1}))["events"]
    except (DaemonDown, RpcError):
        return None
    return int(events[-1]["seq"]) if events else 0


async def follow(link: DaemonLink, cid: str, grown: Callable[[], Awaitable[None]], seen: int | None) -> None:
    """Call ``grown()`` for every event of ``cid`` after seq ``seen``, forever, across daemon
    restarts (``seen`` None: after what is there when the daemon first answers)."""
    delay = 0.05
    while True:
        try:
            if seen is None:
                seen = await last_seq(link, cid)
                if seen is None:
                    raise DaemonDown(f"no answer for {cid}")
            async for event in link.subscribe({"conversation_id": cid, "from_seq": seen + 1}):
                seen = max(seen, int(event["seq"]))
                delay = 0.05
                await grown()
        except DaemonDown as exc:
            log.info("subscription to %s waits for the daemon: %s", cid, exc)
        except RpcError as exc:
            log.warning("subscription to %s refused: %s", cid, exc)
        # Back off before trying again (the daemon is restarting or refused): not a sync wait.
        await anyio.sleep(delay)
        delay = min(delay * 2, 1.0)
