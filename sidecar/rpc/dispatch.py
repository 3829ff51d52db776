"""Method registry and dispatch: validated params in, encoded replies out, and the OpenRPC
document generated from the very Structs that validate the params and shape the results."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
import msgspec
import structlog

from sidecar.errors import SidecarError
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

_FIELD = re.compile(r"at `\$\.?([^`]*)`")


class BadParams(Exception):
    """Params that do not decode into the method's Struct; ``data`` names the field."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        found = _FIELD.search(message)
        self.data: dict[str, str] | None = {"field": found.group(1)} if found and found.group(1) else None


def _refusal(item: Invalid | Request) -> bytes | None:
    """What a batch member's answer becomes when it does not fit (``None``: none is owed)."""
    if isinstance(item, Request) and item.is_notification:
        return None
    return encode(error_response(item.id, OVERLOADED, "reply too large for max_reply_bytes"))[:-1]


def _too_large(req_id: Any, limit: int) -> dict[str, Any]:
    why = f"the answer is larger than max_reply_bytes ({limit}); ask for less (a smaller limit, or fewer per batch)"
    return error_response(req_id, OVERLOADED, why, {"max_reply_bytes": limit})


@dataclass(frozen=True)
class Method(Generic[C]):
    name: str
    params: type[msgspec.Struct]
    result: Any
    handler: Callable[[Any, C], Awaitable[Any]]
    summary: str


class Registry(Generic[C]):
    """The methods a server offers; ``C`` is the per-connection context handlers receive."""

    def __init__(self) -> None:
        self.methods: dict[str, Method[C]] = {}
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
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise BadParams(str(exc)) from None
        except UnicodeDecodeError:  # msgspec checks strings only once it decodes them
            raise BadParams("a string in params is not valid UTF-8") from None
        except RecursionError:  # the protocol's depth limit should have caught it first
            raise BadParams("params nest too deep") from None

    def method(
        self, name: str, params: type[msgspec.Struct], result: Any, summary: str
    ) -> Callable[[Callable[[Any, C], Awaitable[Any]]], Callable[[Any, C], Awaitable[Any]]]:
        def register(handler: Callable[[Any, C], Awaitable[Any]]) -> Callable[[Any, C], Awaitable[Any]]:
            self.methods[name] = Method(name, params, result, handler, summary)
            return handler

        return register

    async def handle(self, message: Message, ctx: C, max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES) -> bytes | None:
        """The reply line for a parsed message, or ``None`` when nothing is owed.

        A reply line never passes ``max_reply_bytes``: an answer that would not fit is
        replaced by -32005 for its own request, so one greedy member of a batch cannot
        make us hold, or send, gigabytes. Batch members run at most ``BATCH_CONCURRENCY``
        at a time, for the same reason."""
        if not message.batch:
            reply = await self._one(message.items[0], ctx)
            if reply is None:
                return None
            line = encode(reply)
            return line if len(line) <= max_reply_bytes else encode(_too_large(reply["id"], max_reply_bytes))
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
        method = self.methods.get(req.method)
        if method is None:
            return error_response(req.id, METHOD_NOT_FOUND, f"Method not found: {req.method!r}")
        try:
            params = self.params_of(req, method.params)
        except BadParams as exc:
            return error_response(req.id, INVALID_PARAMS, f"Invalid params: {exc}", exc.data)
        try:
            result = await method.handler(params, ctx)
        except SidecarError as exc:
            return error_response(req.id, exc.code, exc.message, exc.data)
        except Exception as exc:
            log.exception("rpc.internal_error", method=req.method)
            self.internal_errors += 1
            return error_response(req.id, INTERNAL_ERROR, f"Internal error: {type(exc).__name__}: {exc}")
        return result_response(req.id, result)

    def openrpc(self, title: str, version: str) -> dict[str, Any]:
        """An OpenRPC 1.x document of every method, from the msgspec schemas."""
        names = sorted(self.methods)
        types: list[Any] = []
        for name in names:
            types += [self.methods[name].params, self.methods[name].result]
        schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
        methods = []
        for i, name in enumerate(names):
            m = self.methods[name]
            param_schema = components.get(m.params.__name__, {})
            required = set(param_schema.get("required", []))
            params = [
                {"name": field, "required": field in required, "schema": schema}
                for field, schema in param_schema.get("properties", {}).items()
            ]
            methods.append(
                {
                    "name": name,
                    "summary": m.summary,
                    "paramStructure": "by-name",
                    "params": params,
                    "result": {"name": f"{name}.result", "schema": schemas[2 * i + 1]},
                    "x-params-schema": schemas[2 * i],
                }
            )
        return {
            "openrpc": "1.3.2",
            "info": {"title": title, "version": version},
            "methods": methods,
            "components": {"schemas": components},
        }
