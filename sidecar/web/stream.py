"""A conversation, live, as Server-Sent Events: what the page's ``EventSource`` reads.

Each log event is one SSE message whose ``id`` is its seq. When the connection drops, the
browser reconnects by itself and sends ``Last-Event-ID``; the stream then subscribes again
from the seq after it, so the page sees every event once, with no gap (the daemon's
``log.subscribe`` guarantees the order). The same holds when the daemon restarts or drops a
subscription that fell behind (``log.overflow``): the stream subscribes again from where it
was, and tells the page the daemon's state as ``status`` messages meanwhile.

Messages (the ``event:`` field; ``data:`` is JSON):

- ``log``: ``{"event": E, "playbook": P | null}``, P being the playbook that applies to E
  (``playbooks.match``) when E is a failure;
- ``delta``: a ``narrator.delta``'s params, a piece of a narrator reply still being written;
- ``status``: ``{"daemon": "up" | "down", "detail": ...}``;
- ``fatal``: ``{"code", "message"}``, the daemon refused the subscription (a malformed
  conversation id, say): the stream ends, and the page should not reconnect.

A comment line goes out every ``keepalive_s`` so proxies and the browser keep the stream open.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from sidecar_client import AsyncClient, RpcError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

HISTORY = 500  # a page opened afresh starts this many events back
QUEUE = 256  # messages held for a page that reads slowly; then the subscription waits
RETRY_MS = 1000  # how soon the browser reconnects (the SSE retry field)

Sender = ObjectSendStream[bytes]


def message(kind: str, data: Any, seq: int | None = None) -> bytes:
    """One SSE message. JSON has no raw newlines, so ``data`` is one line."""
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def resume_point(request: Request) -> int | None:
    """The seq to start from that the page asked for, if any: after ``Last-Event-ID`` (a
    reconnect), else ``from_seq`` from the query. Anything else is ignored: a fresh start."""
    last = request.headers.get("last-event-id", "")
    if last.isdigit() and len(last) < 19:
        return int(last) + 1
    start = request.query_params.get("from_seq", "")
    if start.isdigit() and len(start) < 19:
        return max(1, int(start))
    return None


class Playbooks:
    """Which events a playbook may apply to, so only those cost a ``playbooks.match``."""

    def __init__(self, listed: list[dict[str, Any]]) -> None:
        self.types = {m for p in listed for m in p.get("matches", []) if not m.lstrip("-").isdigit()}

    def may_apply(self, event: dict[str, Any]) -> bool:
        data = event.get("data")
        return (
            event.get("visibility") != "user"
            and event.get("type") != "controller.decision"
            and (
                event.get("type") in self.types
                or str(event.get("type", "")).startswith("task.")
                or (isinstance(data, dict) and "code" in data)
            )
        )


class Follower:
    """Follow one conversation for one page, through daemon restarts, into ``out``."""

    def __init__(
        self,
        socket_path: str,
        conversation_id: str,
        from_seq: int | None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.socket_path = socket_path
        self.cid = conversation_id
        self.next_seq = from_seq
        self.sleep = sleep  # the pause between attempts while the daemon is down

    async def run(self, out: Sender) -> None:
        pause = 0.1
        down: str | None = None
        while True:
            try:
                async with await AsyncClient.connect(self.socket_path) as client:
                    await out.send(message("status", {"daemon": "up", "detail": ""}))
                    down, pause = None, 0.1
                    await self._follow(client, out)
            except RpcError as exc:
                if exc.code != -32005:  # fell behind: subscribe again from where we were
                    await out.send(message("fatal", {"code": exc.code, "message": exc.message}))
                    return
            except ConnectionError as exc:
                if down != str(exc):
                    down = str(exc)
                    await out.send(message("status", {"daemon": "down", "detail": down}))
                await self.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def _follow(self, client: AsyncClient, out: Sender) -> None:
        if self.next_seq is None:  # a fresh page: the newest HISTORY events, then live
            newest = (await client.call("log.tail", {"conversation_id": self.cid, "limit": 1}))["events"]
            self.next_seq = max(1, newest[-1]["seq"] - HISTORY + 1) if newest else 1
        playbooks = Playbooks((await client.call("playbooks.list"))["playbooks"])

        async def notified(method: str, params: dict[str, Any]) -> None:
            if method == "narrator.delta":
                await out.send(message("delta", params))

        events = client.subscribe({"conversation_id": self.cid, "from_seq": self.next_seq}, on_notification=notified)
        async for event in events:
            playbook = None
            if playbooks.may_apply(event):
                playbook = await client.call("playbooks.match", {"event_id": event["id"]})
            await out.send(message("log", {"event": event, "playbook": playbook}, event["seq"]))
            self.next_seq = event["seq"] + 1


class EventStream:
    """The ASGI endpoint ``GET /api/events?conversation=C``: one :class:`Follower` per page."""

    def __init__(self, socket_path: str, keepalive_s: float = 15.0) -> None:
        self.socket_path = socket_path
        self.keepalive_s = keepalive_s
        self._open: set[anyio.CancelScope] = set()
        self._closed = False

    def close(self) -> None:
        """End every stream now (the console is stopping: pages reconnect to the next one)."""
        self._closed = True
        for scope in self._open:
            scope.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        cid = request.query_params.get("conversation", "")
        if not cid:
            await JSONResponse({"error": "the conversation query parameter is needed"}, 400)(scope, receive, send)
            return
        if self._closed:
            await JSONResponse({"error": "the console is stopping"}, 503)(scope, receive, send)
            return
        follower = Follower(self.socket_path, cid, resume_point(request))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": f"retry: {RETRY_MS}\n\n".encode(), "more_body": True})
        to_page, outbox = anyio.create_memory_object_stream[bytes](QUEUE)
        disconnected = False

        async def gone(scope: anyio.CancelScope) -> None:  # the page went away: stop following
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            scope.cancel()

        async def follow() -> None:
            async with to_page:
                await follower.run(to_page)

        async with anyio.create_task_group() as tg:
            self._open.add(tg.cancel_scope)
            try:
                tg.start_soon(gone, tg.cancel_scope)
                tg.start_soon(follow)
                async with outbox:
                    await self._relay(outbox, send)
                tg.cancel_scope.cancel()  # the follower ended (a fatal answer): so does the stream
            finally:
                self._open.discard(tg.cancel_scope)
        if not disconnected:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _relay(self, outbox: ObjectReceiveStream[bytes], send: Send) -> None:
        """Send what the follower gives, and a keepalive comment whenever it is quiet."""
        while True:
            chunk = b": keepalive\n\n"
            with anyio.move_on_after(self.keepalive_s):
                try:
                    chunk = await outbox.receive()
                except anyio.EndOfStream:
                    return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
