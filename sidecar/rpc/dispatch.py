"""Method registry and dispatch: validated params in, encoded replies out, and the OpenRPC
document generated from the very Structs that validate the params and shape the results."""

from __future__ import annotations

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

    def fast_path(self, name: str) -> Callable[[Callable[[Request, C], bool]], Callable[[Request, C], bool]]:
        def register(handler: Callable[[Request, C], bool]) -> Callable[[Request, C], bool]:
            self.fast[name] = handler
            return handler

        return register

    @staticmethod
    def params_of(req: Request, params_type: type[T]) -> T:
        """``req``'s params as ``params_type``; raises msgspec's ValidationError/DecodeError."""
        if isinstance(req.params, msgspec.Raw):
            return msgspec.json.decode(req.params, type=params_type)
        return msgspec.convert(req.params, params_type)

    def method(
        self, name: str, params: type[msgspec.Struct], result: Any, summary: str
    ) -> Callable[[Callable[[Any, C], Awaitable[Any]]], Callable[[Any, C], Awaitable[Any]]]:
        def register(handler: Callable[[Any, C], Awaitable[Any]]) -> Callable[[Any, C], Awaitable[Any]]:
            self.methods[name] = Method(name, params, result, handler, summary)
            return handler

        return register

    async def handle(self, message: Message, ctx: C) -> bytes | None:
        """The reply line for a parsed message, or ``None`` when nothing is owed."""
        if not message.batch:
            reply = await self._one(message.items[0], ctx)
            return encode(reply) if reply is not None else None
        replies: list[dict[str, Any] | None] = [None] * len(message.items)

        async def run(i: int, item: Invalid | Request) -> None:
            replies[i] = await self._one(item, ctx)

        async with anyio.create_task_group() as tg:  # batch members may run concurrently
            for i, item in enumerate(message.items):
                tg.start_soon(run, i, item)
        owed = [r for r in replies if r is not None]
        return encode(owed) if owed else None

    async def _one(self, item: Invalid | Request, ctx: C) -> dict[str, Any] | None:
        if isinstance(item, Invalid):
            return error_response(item.id, item.code, item.message)
        reply = await self.call(item, ctx)
        return None if item.is_notification else reply

    async def call(self, req: Request, ctx: C) -> dict[str, Any]:
        method = self.methods.get(req.method)
        if method is None:
            return error_response(req.id, METHOD_NOT_FOUND, f"Method not found: {req.method!r}")
        try:
            params = self.params_of(req, method.params)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return error_response(req.id, INVALID_PARAMS, f"Invalid params: {exc}")
        try:
            result = await method.handler(params, ctx)
        except SidecarError as exc:
            return error_response(req.id, exc.code, exc.message, exc.data)
        except Exception as exc:
            log.exception("rpc.internal_error", method=req.method)
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
