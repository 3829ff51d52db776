"""``sidecar mcp`` end to end: the SDK's own client drives the server over stdio, against a
real daemon (contract §12)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp.client.client import Client as MCPClient
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated
from sidecar_client import Client

from tests.daemon.conftest import DaemonProc
from tests.mcp_server.conftest import Notes, child_env, daemon, mcp_session, start_daemon  # noqa: F401

TOOLS = [
    "log_append",
    "log_query",
    "log_tail",
    "log_search",
    "tasks_create",
    "tasks_update",
    "tasks_get",
    "tasks_ready",
    "tasks_claim",
    "summary_rolling",
    "context_build",
    "controller_heartbeat",
]
CID = "mcp-c1"
# The session API's resources/subscribe is the 2025-11-25 one (the contract serves both eras).
pytestmark = pytest.mark.filterwarnings("ignore:resources/(un)?subscribe is removed")
EVENTS = f"sidecar://conversations/{CID}/events"
SUMMARY = f"sidecar://conversations/{CID}/summary"


def resolve(schema: Any, components: dict[str, Any]) -> Any:
    """The test's own $ref resolution: each ``#/components/schemas/X`` replaced by X."""
    if isinstance(schema, list):
        return [resolve(item, components) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target = components[schema["$ref"].rsplit("/", 1)[1]]
        return resolve({**target, **{k: v for k, v in schema.items() if k != "$ref"}}, components)
    return {k: resolve(v, components) for k, v in schema.items()}


def run(test: Any, *args: Any) -> None:
    anyio.run(test, *args)


async def call(session: ClientSession, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """A tool call that must succeed: its structured content, checked against its text."""
    result = await session.call_tool(name, args)
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    assert not result.is_error, text.text
    assert result.structured_content == json.loads(text.text)
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def failed(session: ClientSession, name: str, args: dict[str, Any]) -> str:
    """A tool call that must fail as a tool result (isError), not as a protocol error."""
    result = await session.call_tool(name, args)
    assert result.is_error
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    return text.text


def test_initialize_lists_and_schemas(daemon: DaemonProc, tmp_path: Path) -> None:  # noqa: F811
    with Client(daemon.socket_path) as client:
        doc = client.call("rpc.discover")
    components = doc["components"]["schemas"]
    daemon_params = {m["name"]: resolve(m["x-params-schema"], components) for m in doc["methods"]}

    async def test() -> None:
        async with mcp_session(daemon.socket_path, tmp_path / "mcp.log") as (session, _):
            init = session.initialize_result
            assert init is not None
            assert init.server_info.name == "sidecar" and init.server_info.title
            assert init.instructions and "tasks_claim" in init.instructions and "never" in init.instructions.lower()
            caps = init.capabilities
            assert caps.tools and caps.prompts and caps.resources and caps.resources.subscribe

            tools = (await session.list_tools()).tools
            assert [t.name for t in tools] == TOOLS
            for tool in tools:
                # Derived from the daemon's schema, never by hand: any drift fails here.
                assert tool.input_schema == daemon_params[tool.name.replace("_", ".", 1)], tool.name
                assert "$ref" not in json.dumps(tool.input_schema)
                assert tool.description

            uris = [str(r.uri) for r in (await session.list_resources()).resources]
            assert uris == ["sidecar://conversations", "sidecar://tasks"]
            templates = [t.uri_template for t in (await session.list_resource_templates()).resource_templates]
            assert templates == [
                "sidecar://conversations/{conversation_id}/events",
                "sidecar://conversations/{conversation_id}/summary",
            ]
            prompts = {p.name: p for p in (await session.list_prompts()).prompts}
            assert sorted(prompts) == ["controller", "narrator"]
            for prompt in prompts.values():
                args = {a.name: a.required for a in prompt.arguments or []}
                assert args["conversation_id"] is True and "budget_tokens" in args

    run(test)


def test_every_tool_errors_and_the_gate(daemon: DaemonProc, tmp_path: Path) -> None:  # noqa: F811
    async def test() -> None:
        async with mcp_session(daemon.socket_path, tmp_path / "mcp.log") as (session, _):
            appended = await call(
                session,
                "log_append",
                {"conversation_id": CID, "type": "agent.progress", "agent_id": "a1", "data": {"pct": 10}},
            )
            assert appended["seq"] == 1
            assert [e["id"] for e in (await call(session, "log_tail", {"conversation_id": CID}))["events"]] == [
                appended["id"]
            ]
            page = await call(session, "log_query", {"conversation_id": CID, "types": ["agent.progress"]})
            assert [e["data"] for e in page["events"]] == [{"pct": 10}]
            deadline = anyio.current_time() + 1.0  # searchable within a second of the ack
            while not (hits := (await call(session, "log_search", {"q": "progress", "conversation_id": CID}))["hits"]):
                assert anyio.current_time() < deadline, "not found within a second"
                await anyio.sleep(0.01)
            assert [h["event"]["id"] for h in hits] == [appended["id"]] and "**progress**" in hits[0]["snippet"]
            assert "unclosed quote" in await failed(session, "log_search", {"q": '"open'})

            task = await call(session, "tasks_create", {"type": "build", "conversation_id": CID, "id": "t1"})
            assert task["status"] == "pending"
            assert [t["id"] for t in (await call(session, "tasks_ready", {}))["tasks"]] == ["t1"]
            claimed = await call(session, "tasks_claim", {"agent_id": "a1", "types": ["build"]})
            assert claimed["task"]["id"] == "t1" and claimed["task"]["status"] == "running"
            assert await call(
                session, "controller_heartbeat", {"conversation_id": CID, "agent_id": "a1", "task_id": "t1"}
            ) == {"ok": True}
            done = await call(
                session, "tasks_update", {"id": "t1", "agent_id": "a1", "status": "done", "outputs": {"ok": 1}}
            )
            assert done["status"] == "done"
            assert (await call(session, "tasks_get", {"id": "t1"}))["outputs"] == {"ok": 1}

            summary = await call(session, "summary_rolling", {"conversation_id": CID})
            assert summary["conversation_id"] == CID and isinstance(summary["markdown"], str)
            context = await call(session, "context_build", {"conversation_id": CID, "budget_tokens": 2000})
            assert context["total_tokens"] <= 2000 and context["layers"]

            # Daemon errors come back as tool results carrying the code and what to do.
            missing = await failed(session, "tasks_get", {"id": "nope"})
            assert "-32002" in missing and "not found" in missing
            invalid = await failed(session, "log_tail", {"conversation_id": CID, "limit": -1})
            assert "-32602" in invalid
            stale = await failed(session, "tasks_update", {"id": "t1", "expected_version": 1, "priority": 3})
            assert "-32001" in stale and "tasks_get" in stale

            # No tool writes user-visible text: the daemon's gate refuses, and nothing is written.
            forbidden = await failed(
                session, "log_append", {"conversation_id": CID, "type": "narrator.message", "visibility": "user"}
            )
            assert "-32003" in forbidden and "visibility internal or status" in forbidden
            events = (await call(session, "log_tail", {"conversation_id": CID, "limit": 100}))["events"]
            assert all(e["visibility"] != "user" for e in events)

            with pytest.raises(MCPError):
                await session.call_tool("chat_user_message", {"conversation_id": CID, "text": "hi"})

    run(test)


def test_resources_prompts_and_a_subscription(daemon: DaemonProc, tmp_path: Path) -> None:  # noqa: F811
    with Client(daemon.socket_path) as client:
        client.call(
            "log.append_many",
            {"events": [{"conversation_id": CID, "type": "agent.progress", "data": {"i": i}} for i in range(105)]},
        )
        client.call("tasks.create", {"type": "build", "id": "t1"})
        client.call("tasks.create", {"type": "build", "id": "t2"})
        client.call("tasks.update", {"id": "t2", "status": "cancelled"})

        def subscriptions() -> int:
            stats = client.call("sys.stats")
            assert isinstance(stats["subscriptions"], int)
            return stats["subscriptions"]

        async def until(check: Any, timeout: float = 15.0) -> None:
            with anyio.fail_after(timeout):
                while not check():
                    await anyio.sleep(0.02)  # polling the daemon's counter, bounded by the deadline

        async def test() -> None:
            async with mcp_session(daemon.socket_path, tmp_path / "mcp.log") as (session, notes):
                conversations = json.loads(await text_of(session, "sidecar://conversations"))
                assert {c["conversation_id"]: c["event_count"] for c in conversations}[CID] == 105
                tasks = json.loads(await text_of(session, "sidecar://tasks"))
                assert sorted((t["id"], t["status"]) for t in tasks) == [("t1", "pending"), ("t2", "cancelled")]
                events = json.loads(await text_of(session, EVENTS))
                assert [e["data"]["i"] for e in events] == list(range(5, 105))  # the newest 100, oldest first
                read = await session.read_resource(SUMMARY)
                assert read.contents[0].mime_type == "text/markdown"
                assert isinstance(read.contents[0], types.TextResourceContents) and read.contents[0].text
                with pytest.raises(MCPError):
                    await session.read_resource("sidecar://nothing")

                narrator = await session.get_prompt("narrator", {"conversation_id": CID, "budget_tokens": "500"})
                assert narrator.messages and all(m.role in ("user", "assistant") for m in narrator.messages)
                controller = await session.get_prompt("controller", {"conversation_id": CID})
                first = controller.messages[0].content
                assert isinstance(first, types.TextContent) and "speak_now" in first.text and CID in first.text
                with pytest.raises(MCPError):
                    await session.get_prompt("narrator", {})

                # Two subscriptions to one resource are one daemon subscription.
                assert subscriptions() == 0
                await session.subscribe_resource(EVENTS)
                await session.subscribe_resource(EVENTS)
                await until(lambda: subscriptions() == 1)
                client.call("log.append", {"conversation_id": CID, "type": "agent.progress"})
                await notes.wait_updated(EVENTS)
                assert subscriptions() == 1
                await session.unsubscribe_resource(EVENTS)
                await until(lambda: subscriptions() == 0)

        anyio.run(test)


async def text_of(session: ClientSession, uri: str) -> str:
    contents = (await session.read_resource(uri)).contents
    assert len(contents) == 1 and isinstance(contents[0], types.TextResourceContents)
    return contents[0].text


def test_the_daemon_restarting_under_the_server(start_daemon: Any, tmp_path: Path) -> None:  # noqa: F811
    first = start_daemon()

    async def test() -> None:
        async with mcp_session(first.socket_path, tmp_path / "mcp.log") as (session, notes):
            await call(session, "log_append", {"conversation_id": CID, "type": "agent.progress"})
            await session.subscribe_resource(EVENTS)
            first.stop()

            down = await failed(session, "log_tail", {"conversation_id": CID})
            assert f"the sidecar daemon is not answering on {first.socket_path}" in down
            with pytest.raises(MCPError, match="not answering"):
                await session.read_resource("sidecar://conversations")

            again = start_daemon(data_dir=first.data_dir, socket_path=first.socket_path)
            tail = await call(session, "log_tail", {"conversation_id": CID})  # the first call after: it works
            assert len(tail["events"]) == 1
            # The subscription resumed by itself: growth after the restart is announced.
            with Client(again.socket_path) as client:
                client.call("log.append", {"conversation_id": CID, "type": "agent.progress"})
            await notes.wait_updated(EVENTS)

    run(test)


def test_a_listen_stream_on_the_newer_protocol(daemon: DaemonProc, tmp_path: Path) -> None:  # noqa: F811
    """subscriptions/listen (2026-07-28): the same hub, one daemon subscription."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "sidecar", "mcp", "--socket", daemon.socket_path], env=child_env()
    )

    async def test() -> None:
        with Client(daemon.socket_path) as daemon_client, open(tmp_path / "mcp.log", "w") as err:
            async with MCPClient(stdio_client(params, errlog=err)) as client:
                assert client.session.protocol_version == "2026-07-28"
                with anyio.fail_after(20):
                    async with client.listen(resource_subscriptions=[EVENTS]) as sub:
                        with anyio.fail_after(15):  # the daemon subscription follows the ack
                            while daemon_client.call("sys.stats")["subscriptions"] != 1:
                                await anyio.sleep(0.02)
                        daemon_client.call("log.append", {"conversation_id": CID, "type": "agent.progress"})
                        async for event in sub:
                            assert isinstance(event, ResourceUpdated) and event.uri == EVENTS
                            break

    run(test)
