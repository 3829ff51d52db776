"""Wiring: the low-level MCP server, its handlers, and ``sidecar mcp`` on stdio.

The low-level ``mcp.server.lowlevel.Server`` is used rather than ``MCPServer`` because the
tools' input schemas are the daemon's JSON Schemas, taken as they are from ``rpc.discover``:
``MCPServer`` would derive them from Python signatures instead.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import mcp.types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.shared.exceptions import MCPError
from sidecar_client import RpcError

from sidecar import __version__
from sidecar.mcp import prompts, resources
from sidecar.mcp.link import DaemonDown, DaemonLink
from sidecar.mcp.schemas import ToolSpec, error_name, tool_specs

TITLE = "Sidecar: event log, task graph and context"

INSTRUCTIONS = """\
The sidecar keeps a durable event log per conversation, a task graph, and the context a
narrator reads. Use it to coordinate work, not to talk:
- Log your progress as you go: log_append with a type such as agent.progress, your agent_id
  and task_id, and visibility internal or status. Never visibility user: the sidecar refuses it
  (-32003). You never speak to the user directly; the narrator does, when the controller lets it.
- Take work with tasks_claim (agent_id, optional types); while you hold the task, send
  controller_heartbeat with your agent_id and its task_id to keep its lease, and finish it
  with tasks_update (status done and outputs, or failed), passing your agent_id. Create follow-up work with
  tasks_create; tasks_ready lists what can start.
- Catch up with log_tail, log_query, summary_rolling or context_build, or read the resources
  sidecar://conversations, sidecar://conversations/{id}/events and .../summary, sidecar://tasks.
- A tool result with isError carries the daemon's error code and what to do about it.
"""

# What a model can do about each daemon error (the code and the daemon's words come first).
HINTS = {
    -32602: "fix the arguments to match the tool's input schema (the data says which field)",
    -32001: "re-read the task with tasks_get and retry with its current version, or as its lease holder",
    -32002: "check the id (log_query or tasks_ready list what exists)",
    -32003: "user-visible text is the narrator's alone: log with visibility internal or status instead",
    -32004: "only the narrator may speak, with a grant",
    -32005: "the daemon is overloaded: retry a little later",
    -32006: "the daemon could not write to its storage: retry later, and tell the operator if it lasts",
}


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def error_result(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)


class SidecarMCP:
    """The server's state: the daemon link, the discovered tools, the subscription hub."""

    def __init__(self, socket_path: str) -> None:
        self.link = DaemonLink(socket_path)
        self.bus = InMemorySubscriptionBus()
        self.listen_handler = ListenHandler(self.bus)
        self.hub = resources.Hub(self.link, self.bus)
        self.doc: dict[str, Any] | None = None
        self.tools: dict[str, ToolSpec] = {}

    async def discover(self) -> dict[str, ToolSpec]:
        """The tools, from ``rpc.discover`` (fetched once: the daemon's schemas are its code's)."""
        if self.doc is None:
            doc = await self.link.call("rpc.discover")  # DaemonDown passes
            self.tools = {spec.name: spec for spec in tool_specs(doc)}
            self.doc = doc
        return self.tools

    def rpc_error_text(self, exc: RpcError) -> str:
        text = f"sidecar error {exc.code} ({error_name(self.doc, exc.code)}): {exc.message}"
        if exc.data is not None:
            text += f"; data: {_text(exc.data)}"
        hint = HINTS.get(exc.code)
        return f"{text}. {hint[0].upper()}{hint[1:]}." if hint else text

    # --- handlers --------------------------------------------------------------------------------

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        try:
            tools = await self.discover()
        except DaemonDown as exc:
            raise MCPError(types.INTERNAL_ERROR, str(exc)) from exc
        return types.ListToolsResult(
            tools=[
                types.Tool(name=spec.name, description=spec.description, input_schema=spec.input_schema)
                for spec in tools.values()
            ]
        )

    async def call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            tools = await self.discover()
        except DaemonDown as exc:
            return error_result(f"sidecar unavailable: {exc}")
        spec = tools.get(params.name)
        if spec is None:
            raise MCPError(types.INVALID_PARAMS, f"no tool {params.name!r}; tools/list has them all")
        try:
            answer = await self.link.call(spec.method, dict(params.arguments or {}))
        except RpcError as exc:
            return error_result(self.rpc_error_text(exc))
        except DaemonDown as exc:
            return error_result(f"sidecar unavailable: {exc}")
        structured = answer if isinstance(answer, dict) else {"result": answer}
        return types.CallToolResult(content=[types.TextContent(text=_text(answer))], structured_content=structured)

    @contextmanager
    def as_mcp_errors(self) -> Iterator[None]:
        """A read that is not a tool call fails as an MCP error: a bad argument or a daemon
        refusal as invalid params (with the daemon's code and words), a daemon that does
        not answer as an internal error."""
        try:
            yield
        except (resources.UnknownResource, prompts.BadArguments) as exc:
            raise MCPError(types.INVALID_PARAMS, str(exc)) from exc
        except RpcError as exc:
            raise MCPError(types.INVALID_PARAMS, self.rpc_error_text(exc)) from exc
        except DaemonDown as exc:
            raise MCPError(types.INTERNAL_ERROR, str(exc)) from exc

    async def list_resources(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=resources.RESOURCES)

    async def list_templates(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=resources.TEMPLATES)

    async def read_resource(
        self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        with self.as_mcp_errors():
            return await resources.read(self.link, str(params.uri))

    async def subscribe(
        self, ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        try:
            await self.hub.subscribe(str(params.uri), ctx.session)
        except resources.UnknownResource as exc:
            raise MCPError(types.INVALID_PARAMS, str(exc)) from exc
        return types.EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        self.hub.unsubscribe(str(params.uri), ctx.session)
        return types.EmptyResult()

    async def listen(
        self, ctx: ServerRequestContext[Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """subscriptions/listen (protocol 2026-07-28): the SDK's stream, fed by the same hub."""
        close = await self.hub.listen(list(params.notifications.resource_subscriptions or []))
        try:
            return await self.listen_handler(ctx, params)
        finally:
            close()

    async def list_prompts(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=prompts.PROMPTS)

    async def get_prompt(
        self, ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        with self.as_mcp_errors():
            return await prompts.get(self.link, params.name, params.arguments)

    # --- the server ------------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, server: Server[Any]) -> AsyncIterator[dict[str, Any]]:
        """Runs the subscription watchers; closes the daemon connection at the end."""
        async with anyio.create_task_group() as tg:
            self.hub.start(tg)
            try:
                yield {}
            finally:
                self.listen_handler.close()
                tg.cancel_scope.cancel()
                await self.link.close()

    def server(self) -> Server[Any]:
        return Server(
            "sidecar",
            version=__version__,
            title=TITLE,
            description="The sidecar daemon's event log, task graph and context, for models.",
            instructions=INSTRUCTIONS,
            lifespan=self.lifespan,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_templates,
            on_read_resource=self.read_resource,
            on_subscribe_resource=self.subscribe,
            on_unsubscribe_resource=self.unsubscribe,
            on_subscriptions_listen=self.listen,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
        )


async def serve_stdio(socket_path: str) -> None:
    """Serve MCP on stdin/stdout until the client closes them."""
    app = SidecarMCP(socket_path)
    server = app.server()
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def main(socket_path: str) -> int:
    """``sidecar mcp``: returns the exit status."""
    try:
        anyio.run(serve_stdio, socket_path)
    except KeyboardInterrupt:
        pass
    return 0
