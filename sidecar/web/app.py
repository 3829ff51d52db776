"""The console's routes, behind :class:`~sidecar.web.guard.Guard`.

Every answer comes from the daemon through :class:`~sidecar.web.link.DaemonLink`; the
console keeps no state of its own but the token. The page and its assets are files of this
package (no build step, no CDN), and the Content-Security-Policy allows nothing else: no
inline script, no other host, so text a user or agent wrote can only ever be text.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode

import anyio
from sidecar_client import RpcError
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sidecar.search.query import MAX_QUERY_CHARS
from sidecar.web.guard import Guard
from sidecar.web.link import DaemonDown, DaemonLink
from sidecar.web.stream import EventStream

STATIC = Path(__file__).parent / "static"
MAX_BODY = 256 * 1024  # a chat message, with room to spare
HEALTH_DEADLINE_S = 5.0
SEARCH_LIMIT = (1, 100, 20)  # log.search's limit: least, most, default
STATUSES = ["pending", "running", "blocked", "done", "failed", "cancelled"]
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


class Guarded:
    """ASGI middleware: the guard's verdict before anything else, security headers on everything."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        verdict = self.guard.check(scope["path"], scope["method"], scope["query_string"].decode("latin-1"), headers)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    out.setdefault(name, value)
                if verdict.set_cookie:
                    out.append("set-cookie", self.guard.cookie_header())
            await send(message)

        if verdict.status:
            refusal = JSONResponse({"error": verdict.reason}, status_code=verdict.status)
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def create_app(socket_path: str, guard: Guard, *, link: DaemonLink | None = None) -> tuple[Starlette, EventStream]:
    """The console for the daemon on ``socket_path``, and its event stream (to close on exit)."""
    daemon = link or DaemonLink(socket_path)
    stream = EventStream(socket_path)

    async def index(request: Request) -> Response:
        if "token" in request.query_params:  # keep it in the cookie, out of the address bar
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            return RedirectResponse("/" + (f"?{rest}" if rest else ""), status_code=303)
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def health(request: Request) -> Response:
        try:
            with anyio.fail_after(HEALTH_DEADLINE_S):
                answer = await daemon.call("sys.health")
        except DaemonDown as exc:
            return JSONResponse({"status": "down", "reason": f"the daemon does not answer: {exc}"}, 503)
        except TimeoutError:
            return JSONResponse(
                {"status": "down", "reason": f"the daemon did not answer in {HEALTH_DEADLINE_S:g} s"}, 503
            )
        if answer.get("status") == "ok":
            return JSONResponse({"status": "ok", "daemon": answer})
        llm = answer.get("llm") or {}
        reason = f"the LLM server is unreachable: {llm.get('error') or 'no answer'}"
        return JSONResponse({"status": answer.get("status", "unknown"), "reason": reason, "daemon": answer}, 503)

    async def conversations(request: Request) -> Response:
        listed = (await daemon.call("log.conversations"))["conversations"]
        listed.sort(key=lambda c: c.get("last_timestamp") or "", reverse=True)
        return JSONResponse({"conversations": listed})

    async def tasks(request: Request) -> Response:
        cid = _needed(request, "conversation")
        every = (await daemon.call("tasks.list_active", {"statuses": STATUSES}))["tasks"]
        return JSONResponse({"tasks": [t for t in every if t.get("conversation_id") == cid]})

    async def playbooks(request: Request) -> Response:
        return JSONResponse(await daemon.call("playbooks.list"))

    async def chat(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise BadRequest("send the message as JSON (Content-Type: application/json)")
        body = await _body(request)
        try:
            params = json.loads(body)
        except ValueError as exc:
            raise BadRequest(f"the body is not JSON: {exc}") from None
        if not isinstance(params, dict):
            raise BadRequest("the body must be a JSON object: {conversation_id, text}")
        wanted = {"conversation_id": params.get("conversation_id"), "text": params.get("text")}
        return JSONResponse(await daemon.call("chat.user_message", wanted))

    async def search(request: Request) -> Response:
        q = request.query_params.get("q", "")
        if not q:
            raise BadRequest("the q query parameter is needed: the words to look for")
        if len(q) > MAX_QUERY_CHARS:
            raise BadRequest(f"q is {len(q)} characters, over the limit of {MAX_QUERY_CHARS}")
        params: dict[str, object] = {"q": q, "limit": _limit(request.query_params.get("limit", ""))}
        if cid := request.query_params.get("conversation_id", ""):
            params["conversation_id"] = cid
        try:
            return JSONResponse(await daemon.call("log.search", params))
        except RpcError as exc:  # the daemon's reason, for the person who typed the query
            if exc.code == -32602:
                return JSONResponse({"error": exc.message}, 400)
            if exc.code == -32003:
                return JSONResponse({"error": exc.message}, 403)
            raise

    async def on_rpc_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RpcError)
        status = 404 if exc.code == -32002 else 503 if exc.code == -32006 else 400
        return JSONResponse({"error": {"code": exc.code, "message": exc.message, "data": exc.data}}, status)

    async def on_down(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"the daemon does not answer: {exc}"}, 503)

    async def on_bad(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadRequest)
        return JSONResponse({"error": str(exc)}, exc.status)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/health", health, methods=["GET", "HEAD"]),
            Route("/api/conversations", conversations),
            Route("/api/tasks", tasks),
            Route("/api/playbooks", playbooks),
            Route("/api/chat", chat, methods=["POST"]),
            Route("/api/search", search),
            Route("/api/events", stream),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={RpcError: on_rpc_error, DaemonDown: on_down, BadRequest: on_bad},
    )
    app.add_middleware(Guarded, guard=guard)
    app.state.link = daemon
    return app, stream


class BadRequest(Exception):
    """A request the console refuses before asking the daemon; the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _needed(request: Request, name: str) -> str:
    value = request.query_params.get(name, "")
    if not value:
        raise BadRequest(f"the {name} query parameter is needed")
    return value


def _limit(raw: str) -> int:
    """``limit`` from the query: :data:`SEARCH_LIMIT`'s default when absent, else a whole number in range."""
    least, most, default = SEARCH_LIMIT
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and least <= int(raw) <= most):
        raise BadRequest(f"limit must be a whole number from {least} to {most}")
    return int(raw)


async def _body(request: Request) -> bytes:
    """The request body, refused past :data:`MAX_BODY` without reading the rest."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise BadRequest(f"the body is over {MAX_BODY} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)
