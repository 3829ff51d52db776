"""Method registry and dispatch: validated params in, encoded replies out, and the OpenRPC
document generated from the very Structs that validate the params and shape the results."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
import msgspec
import structlog

from sidecar.errors import SidecarError
from sidecar.rpc.explain import REF_TEMPLATE, close_names, did_you_mean, explain, with_string_enums
from sidecar.rpc.protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    OVERLOADED,
    Invalid,
    Message,
    Request,
    encode,
    error_response,
    result_response,
)

log = structlog.get_logger("sidecar.rpc")

C = TypeVar("C")
T = TypeVar("T")


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    """A method that takes no params."""


DEFAULT_MAX_REPLY_BYTES = 16 * 1024 * 1024
BATCH_CONCURRENCY = 8  # members of one batch in progress at once


@dataclass(frozen=True)
class ErrorCode:
    """One JSON-RPC error code the daemon answers with: its short name and what it means."""

    code: int
    name: str
    meaning: str


# Every error code on the wire, in one table: the OpenRPC document, the reference and the
# registrations' checks all read it.
ERROR_CODES: tuple[ErrorCode, ...] = (
    ErrorCode(-32700, "parse error", "The line is not valid JSON. The connection stays open."),
    ErrorCode(
        -32600,
        "invalid request",
        'Not a JSON-RPC 2.0 request (say, no `jsonrpc: "2.0"`), an empty batch or one over `max_batch`, '
        "nesting deeper than `max_depth`; and, closing the connection, a line over `max_message_bytes` "
        "or one not finished within `line_timeout_s`.",
    ),
    ErrorCode(
        -32601, "method not found", "No method by that name; `data.suggestions` lists the names it may have meant."
    ),
    ErrorCode(
        -32602,
        "invalid params",
        "The params do not fit the method: `data.path` is where, `data.expected` what would do, `data.got` what "
        "came. Also a refusal on the merits (a dependency cycle, an illegal status change), with the reason in "
        "`data`.",
    ),
    ErrorCode(
        -32603, "internal error", "A bug in the daemon: it is logged and counted in `sys.stats`. Please report it."
    ),
    ErrorCode(-32001, "conflict", "`expected_seq` / `expected_version` does not match: read again, then retry."),
    ErrorCode(-32002, "not found", "The event, task, summary or subscription named does not exist."),
    ErrorCode(
        -32003,
        "forbidden",
        "User-visible text outside `chat.user_message` / `narrator.say`; or a peer whose uid may not use the socket.",
    ),
    ErrorCode(-32004, "gate closed", "No valid speak grant: unknown, already used, or expired."),
    ErrorCode(
        -32005,
        "overloaded",
        "Back-pressure: too many connections or subscriptions, or an answer larger than `max_reply_bytes` "
        "(alone, or as a member of a batch). Try again later, or ask for less.",
    ),
    ErrorCode(
        -32006,
        "storage failure",
        "The disk refused (full, I/O error), or the file involved is damaged or not ours: nothing was written. "
        "Other conversations are unaffected.",
    ),
)
ERRORS: dict[int, ErrorCode] = {e.code: e for e in ERROR_CODES}


class NotNow(Exception):
    """Raised by an ``inline`` handler, tried in place, that would have to wait: it is
    started again in a task of its own (see :meth:`Registry.call_now`)."""


# True while an inline handler is tried in place, where it must not wait (no task to wait in).
INLINE: ContextVar[bool] = ContextVar("sidecar_inline", default=False)


class BadParams(Exception):
    """Params that do not decode into the method's Struct; ``schema``: msgspec's validation
    refused them (so :func:`~sidecar.rpc.explain.explain` can say where and why)."""

    def __init__(self, message: str, schema: bool = False) -> None:
        super().__init__(message)
        self.schema = schema


def _refusal(item: Invalid | Request) -> bytes | None:
    """What a batch member's answer becomes when it does not fit (``None``: none is owed)."""
    if isinstance(item, Request) and item.is_notification:
        return None
    return encode(error_response(item.id, OVERLOADED, "reply too large for max_reply_bytes"))[:-1]


def reply_line(reply: dict[str, Any], max_reply_bytes: int) -> bytes:
    """``reply`` as one line, or -32005 in its place when it would pass ``max_reply_bytes``."""
    line = encode(reply)
    return line if len(line) <= max_reply_bytes else encode(_too_large(reply["id"], max_reply_bytes))


def _too_large(req_id: Any, limit: int) -> dict[str, Any]:
    why = f"the answer is larger than max_reply_bytes ({limit}); ask for less (a smaller limit, or fewer per batch)"
    return error_response(req_id, OVERLOADED, why, {"max_reply_bytes": limit})


@dataclass(frozen=True)
class Method(Generic[C]):
    name: str
    params: type[msgspec.Struct]
    result: Any
    handler: Callable[[Any, C], Coroutine[Any, Any, Any]]
    summary: str
    errors: Mapping[int, str] = field(default_factory=dict)  # server-defined code -> when
    example: Mapping[str, Any] | None = None  # params of one typical call
    inline: bool = False  # usually answers without waiting: tried in place, no task (see call_now)


@dataclass(frozen=True)
class Notification:
    """Something the server pushes: its name and the Struct its params are."""

    name: str
    params: type[msgspec.Struct]
    summary: str
    example: Mapping[str, Any] | None = None


class Registry(Generic[C]):
    """The methods a server offers; ``C`` is the per-connection context handlers receive."""

    def __init__(self) -> None:
        self.methods: dict[str, Method[C]] = {}
        self.notifications: dict[str, Notification] = {}
        # Optional task-free handlers for hot methods: ``fast(request, ctx)`` returns True
        # when it took the request (and will answer it), False to use the general path.
        self.fast: dict[str, Callable[[Request, C], bool]] = {}
        self.internal_errors = 0  # answered -32603: each one is a bug worth a report

    def fast_path(self, name: str) -> Callable[[Callable[[Request, C], bool]], Callable[[Request, C], bool]]:
        def register(handler: Callable[[Request, C], bool]) -> Callable[[Request, C], bool]:
            self.fast[name] = handler
            return handler

        return register

    @staticmethod
    def params_of(req: Request, params_type: type[T]) -> T:
        """``req``'s params as ``params_type``; raises :class:`BadParams`."""
        try:
            if isinstance(req.params, msgspec.Raw):
                return msgspec.json.decode(req.params, type=params_type)
            return msgspec.convert(req.params, params_type)
        except msgspec.ValidationError as exc:
            raise BadParams(str(exc), schema=True) from None
        except msgspec.DecodeError as exc:
            raise BadParams(str(exc)) from None
        except UnicodeDecodeError:  # msgspec checks strings only once it decodes them
            raise BadParams("a string in params is not valid UTF-8") from None
        except RecursionError:  # the protocol's depth limit should have caught it first
            raise BadParams("params nest too deep") from None

    def method(
        self,
        name: str,
        params: type[msgspec.Struct],
        result: Any,
        summary: str,
        *,
        errors: Mapping[int, str] | None = None,
        example: Mapping[str, Any] | None = None,
        inline: bool = False,
    ) -> Callable[[Callable[[Any, C], Coroutine[Any, Any, Any]]], Callable[[Any, C], Coroutine[Any, Any, Any]]]:
        """Register a handler. ``errors`` maps each server-defined code it can answer with to
        when (the standard -32600..-32603 apply to every method and are not listed);
        ``example`` is the params of one typical call, for the reference. ``inline``: the
        handler changes nothing before it first waits (a read), and usually does not wait at
        all, so :meth:`call_now` may try it in place and give up."""
        for code in errors or {}:
            if code not in ERRORS or not -32099 <= code <= -32000:
                raise ValueError(f"{name}: {code} is not a server-defined error code of ERROR_CODES")
        if example is not None:
            msgspec.convert(example, params)  # an example that does not validate is a bug

        def register(
            handler: Callable[[Any, C], Coroutine[Any, Any, Any]],
        ) -> Callable[[Any, C], Coroutine[Any, Any, Any]]:
            self.methods[name] = Method(name, params, result, handler, summary, dict(errors or {}), example, inline)
            return handler

        return register

    def notification(
        self,
        name: str,
        params: type[msgspec.Struct],
        summary: str | None = None,
        *,
        example: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare a notification the server sends (``summary``: the Struct's docstring)."""
        if example is not None:
            msgspec.convert(example, params)  # an example that does not validate is a bug
        text = summary or (params.__doc__ or "").strip().split("\n\n")[0]
        self.notifications[name] = Notification(name, params, " ".join(text.split()), example)

    def suggestions(self, name: str) -> list[str]:
        """The registered method names ``name`` was probably meant to be."""
        return close_names(name, self.methods)

    async def handle(self, message: Message, ctx: C, max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES) -> bytes | None:
        """The reply line for a parsed message, or ``None`` when nothing is owed.

        A reply line never passes ``max_reply_bytes``: an answer that would not fit is
        replaced by -32005 for its own request, so one greedy member of a batch cannot
        make us hold, or send, gigabytes. Batch members run at most ``BATCH_CONCURRENCY``
        at a time, for the same reason."""
        if not message.batch:
            reply = await self._one(message.items[0], ctx)
            return None if reply is None else reply_line(reply, max_reply_bytes)
        # Every member owing an answer reserves room for its refusal up front, so whatever
        # order answers arrive in, each fits or is refused, and the line stays within bounds.
        refusals = [_refusal(item) for item in message.items]
        room = max_reply_bytes - 1 - sum(len(r) + 1 for r in refusals if r is not None)
        if room < 0:  # not even the refusals fit: nothing runs, one error says why
            return encode(_too_large(None, max_reply_bytes))
        replies = refusals.copy()
        limiter = anyio.CapacityLimiter(BATCH_CONCURRENCY)

        async def run(i: int, item: Invalid | Request) -> None:
            nonlocal room
            async with limiter:
                reply = await self._one(item, ctx)
            if reply is None:
                return
            line, reserved = encode(reply)[:-1], len(refusals[i] or b"")
            if len(line) - reserved <= room:  # decided as it arrives: no answer waits in memory
                room -= len(line) - reserved
                replies[i] = line

        async with anyio.create_task_group() as tg:  # batch members may run concurrently
            for i, item in enumerate(message.items):
                tg.start_soon(run, i, item)
        owed = [r for r in replies if r is not None]
        return b"[" + b",".join(owed) + b"]\n" if owed else None

    async def _one(self, item: Invalid | Request, ctx: C) -> dict[str, Any] | None:
        if isinstance(item, Invalid):
            return error_response(item.id, item.code, item.message)
        reply = await self.call(item, ctx)
        return None if item.is_notification else reply

    async def call(self, req: Request, ctx: C) -> dict[str, Any]:
        """Run one request; whatever happens inside, the answer is a JSON-RPC reply."""
        prepared = self._prepare(req)
        if isinstance(prepared, dict):
            return prepared
        method, params = prepared
        try:
            result = await method.handler(params, ctx)
        except Exception as exc:
            return self._failed(req, method, exc)
        return result_response(req.id, result)

    def call_now(self, req: Request, ctx: C) -> dict[str, Any] | None:
        """The reply to ``req`` if it can be had without waiting, else ``None`` (then
        :meth:`call` it, in a task of its own).

        Errors in the request itself are answered here, and so are ``inline`` methods whose
        handler finishes without suspending: it runs in place, without a task. One that
        would wait (a lock held, a read too big for here: it raises :class:`NotNow`, or it
        simply suspends) is given up and left to :meth:`call`; so is one that fails with
        anything but its own error (say, it needed a task): the task path runs it again, and
        answers, logs and counts a bug the one way. This is what makes reads
        such as ``sys.health`` or ``log.get`` cost no more than the parsing."""
        method = self.methods.get(req.method)
        if method is not None and not method.inline:
            return None
        prepared = self._prepare(req)
        if isinstance(prepared, dict):
            return prepared
        method, params = prepared
        coro = method.handler(params, ctx)
        token = INLINE.set(True)
        try:
            coro.send(None)
        except StopIteration as done:
            return result_response(req.id, done.value)
        except SidecarError as exc:
            return self._failed(req, method, exc)
        except Exception:  # NotNow; or it reached for a task it does not have here
            return None
        finally:
            INLINE.reset(token)
        coro.close()  # it suspended after all: start again where waiting is allowed
        return None

    def _prepare(self, req: Request) -> tuple[Method[C], Any] | dict[str, Any]:
        """The method and decoded params of ``req``, or the error reply it has earned."""
        method = self.methods.get(req.method)
        if method is None:
            return self._not_found(req)
        try:
            return method, self.params_of(req, method.params)
        except BadParams as exc:
            if not exc.schema:
                return error_response(req.id, INVALID_PARAMS, f"Invalid params: {exc}")
            try:
                message, data = explain(method.params, req.params, str(exc))
            except Exception:  # a bug in the explaining: the plain refusal still goes out
                log.exception("rpc.explain_failed", method=req.method)
                message, data = f"Invalid params: {exc}", None
            return error_response(req.id, INVALID_PARAMS, message, data)

    def _failed(self, req: Request, method: Method[C], exc: Exception) -> dict[str, Any]:
        """The reply for a handler that raised: its own error, or -32603 for a bug."""
        if isinstance(exc, SidecarError):
            if -32099 <= exc.code <= -32000 and exc.code not in method.errors:
                log.warning("rpc.undeclared_error", method=req.method, code=exc.code)  # its errors= is stale
            return error_response(req.id, exc.code, exc.message, exc.data)
        log.error("rpc.internal_error", method=req.method, exc_info=exc)
        self.internal_errors += 1
        return error_response(req.id, INTERNAL_ERROR, f"Internal error: {type(exc).__name__}: {exc}")

    def _not_found(self, req: Request) -> dict[str, Any]:
        """-32601, with the names it may have meant (none: the specification's plain answer)."""
        near = self.suggestions(req.method)
        if not near:
            return error_response(req.id, METHOD_NOT_FOUND, f"Method not found: {req.method!r}")
        message = f"Method not found: {req.method!r}; {did_you_mean(near)}"
        return error_response(req.id, METHOD_NOT_FOUND, message, {"suggestions": near})

    def openrpc(self, title: str, version: str) -> dict[str, Any]:
        """An OpenRPC 1.x document of every method, from the msgspec schemas: params, result,
        the server-defined ``errors`` each can answer, an example; and, under
        ``x-notifications``, the params schema of every notification the server sends."""
        names = sorted(self.methods)
        notes = sorted(self.notifications)
        types: list[Any] = []
        for name in names:
            types += [self.methods[name].params, self.methods[name].result]
        types += [self.notifications[n].params for n in notes]
        schemas, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
        schemas, components = with_string_enums(schemas), with_string_enums(components)
        methods = []
        for i, name in enumerate(names):
            m = self.methods[name]
            param_schema = components.get(m.params.__name__, {})
            required = set(param_schema.get("required", []))
            params = [
                {"name": field, "required": field in required, "schema": schema}
                for field, schema in param_schema.get("properties", {}).items()
            ]
            entry: dict[str, Any] = {
                "name": name,
                "summary": m.summary,
                "paramStructure": "by-name",
                "params": params,
                "result": {"name": f"{name}.result", "schema": schemas[2 * i + 1]},
                "errors": [
                    {"code": code, "message": f"{ERRORS[code].name}: {when}"}
                    for code, when in sorted(m.errors.items(), reverse=True)
                ],
                "x-params-schema": schemas[2 * i],
            }
            if m.example is not None:
                pairs = [{"name": k, "value": v} for k, v in m.example.items()]
                entry["examples"] = [{"name": f"{name} example", "params": pairs}]
            methods.append(entry)
        notifications = []
        for n in notes:
            note = self.notifications[n]
            entry = {"name": n, "summary": note.summary, "params": components[note.params.__name__]}
            if note.example is not None:
                entry["examples"] = [dict(note.example)]
            notifications.append(entry)
        return {
            "openrpc": "1.3.2",
            "info": {"title": title, "version": version},
            "methods": methods,
            "components": {
                "schemas": components,
                "errors": {str(e.code): {"code": e.code, "message": e.name} for e in ERROR_CODES},
            },
            "x-notifications": notifications,
        }
