"""``subscribe`` yields events only; the subscription's other notifications (narrator.delta,
log.overflow, sys.shutdown) never break the iterator and reach ``on_notification``.

Against real daemons: narrator.delta comes from the built-in narrator streaming from a loopback
LLM server (tests/narrator/fake_llm.py); log.overflow from a ``subscriber_queue`` of 1 and one
batch of appends (offered to the subscriber in one go, so the drop is certain, not timed).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from sidecar_client import AsyncClient, Client, RpcError, follow

from tests.narrator.fake_llm import FakeLLM, running

WAIT = 20.0


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with running() as fake:
        yield fake


def narrating(start_daemon, llm: FakeLLM):
    return start_daemon(config_text=f'[llm]\nurl = "{llm.url}"\nnarrator = true\ntimeout_s = 5.0\n')


def until_narrated(events: Any) -> list[dict[str, Any]]:
    """Events up to and including the narrator's message."""
    seen = []
    for event in events:
        seen.append(event)
        if event["type"] == "narrator.message":
            return seen
    raise AssertionError(f"the subscription ended before the narrator spoke: {seen}")


def test_narrator_deltas_reach_on_notification_and_events_flow_on(start_daemon, llm: FakeLLM) -> None:
    d = narrating(start_daemon, llm)
    told: list[tuple[str, dict[str, Any]]] = []
    with Client(d.socket_path, timeout=WAIT) as c:
        events = c.subscribe({"conversation_id": "c1"}, on_notification=lambda m, p: told.append((m, p)))
        c.call("chat.user_message", {"conversation_id": "c1", "text": "how is it going?"})
        seen = until_narrated(events)
        events.close()
    assert all("event" not in e and "subscription" not in e for e in seen)  # events themselves
    assert seen[0]["type"] == "user.message" and seen[-1]["data"]["text"] == "All tasks are on track."
    assert [m for m, _ in told] == ["narrator.delta"] * len(llm.pieces)
    assert [p["delta"] for _, p in told] == llm.pieces and [p["index"] for _, p in told] == [0, 1, 2, 3]
    assert told[0][1]["subscription"] == events.id and told[0][1]["grant_id"] == seen[-1]["data"]["grant_id"]


def test_without_a_handler_other_notifications_are_skipped(start_daemon, llm: FakeLLM) -> None:
    d = narrating(start_daemon, llm)
    with Client(d.socket_path, timeout=WAIT) as c:
        events = c.subscribe({"conversation_id": "c1"})
        c.call("chat.user_message", {"conversation_id": "c1", "text": "status?"})
        seen = until_narrated(events)  # was KeyError: 'event' at the first narrator.delta
        c.call("log.append", {"conversation_id": "c1", "type": "after.narration"})
        assert next(events)["type"] == "after.narration"  # the iterator still works
        events.close()
    assert len(llm.pieces) > 0 and [e["seq"] for e in seen] == list(range(1, len(seen) + 1))


def test_async_subscribe_gives_deltas_to_a_coroutine_handler(start_daemon, llm: FakeLLM) -> None:
    d = narrating(start_daemon, llm)
    deltas: list[str] = []

    async def handler(method: str, params: dict[str, Any]) -> None:
        await anyio.sleep(0)  # a coroutine handler is awaited
        if method == "narrator.delta":
            deltas.append(params["delta"])

    async def main() -> list[str]:
        types = []
        async with await AsyncClient.connect(d.socket_path) as client:
            with anyio.fail_after(WAIT):
                await client.call("log.append", {"conversation_id": "c1", "type": "agent.hello"})
                agen = client.subscribe({"conversation_id": "c1", "from_seq": 1}, on_notification=handler)
                assert (await agen.__anext__())["type"] == "agent.hello"  # subscribed (on first use)
                await client.call("chat.user_message", {"conversation_id": "c1", "text": "news?"})
                async for event in agen:
                    types.append(event["type"])
                    if event["type"] == "narrator.message":
                        break
                await agen.aclose()
        return types

    types = anyio.run(main)
    assert types[0] == "user.message" and types[-1] == "narrator.message"
    assert deltas == llm.pieces


def test_overflow_is_told_then_raised(start_daemon) -> None:
    d = start_daemon(config_text="[server]\nsubscriber_queue = 1\n")
    told: list[tuple[str, dict[str, Any]]] = []
    with Client(d.socket_path, timeout=WAIT) as c:
        events = c.subscribe({"conversation_id": "c1"}, on_notification=lambda m, p: told.append((m, p)))
        c.call("log.append_many", {"events": [{"conversation_id": "c1", "type": "a.b"} for _ in range(5)]})
        got = []
        with pytest.raises(RpcError) as info:
            for event in events:
                got.append(event["seq"])
    assert info.value.code == -32005
    assert [m for m, _ in told] == ["log.overflow"] and told[0][1] == info.value.data
    assert info.value.data["from_seq"] == len(got) + 1  # where to resume: the first event not delivered


def test_async_overflow_is_told_then_raised(start_daemon) -> None:
    d = start_daemon(config_text="[server]\nsubscriber_queue = 1\n")
    told: list[str] = []

    async def main() -> RpcError:
        async with await AsyncClient.connect(d.socket_path) as client:
            with anyio.fail_after(WAIT):
                await client.call("log.append", {"conversation_id": "c1", "type": "a.b"})
                agen = client.subscribe(
                    {"conversation_id": "c1", "from_seq": 1}, on_notification=lambda m, p: told.append(m)
                )
                assert (await agen.__anext__())["seq"] == 1  # subscribed
                batch = [{"conversation_id": "c1", "type": "a.b"} for _ in range(5)]
                await client.call("log.append_many", {"events": batch})
                with pytest.raises(RpcError) as info:
                    async for _ in agen:
                        pass
                return info.value

    error = anyio.run(main)
    assert error.code == -32005 and error.data["from_seq"] == 2 and told == ["log.overflow"]


def test_shutdown_is_told_and_ends_the_iteration(daemon) -> None:
    told: list[str] = []
    with Client(daemon.socket_path, timeout=WAIT) as c:
        events = c.subscribe({"conversation_id": "c1"}, on_notification=lambda m, p: told.append(m))
        c.call("log.append", {"conversation_id": "c1", "type": "a.b"})
        assert next(events)["seq"] == 1
        daemon.proc.terminate()
        assert list(events) == []  # ends, no error
    assert told == ["sys.shutdown"] and daemon.proc.wait(timeout=WAIT) == 0


def test_follow_passes_notifications_on(start_daemon, llm: FakeLLM) -> None:
    d = narrating(start_daemon, llm)
    told: list[str] = []
    with Client(d.socket_path, timeout=WAIT) as c:
        c.call("log.append", {"conversation_id": "c1", "type": "agent.hello"})
        events = follow("c1", socket_path=d.socket_path, on_notification=lambda m, p: told.append(m))
        assert next(events)["type"] == "agent.hello"  # subscribed: the narration below is live
        c.call("chat.user_message", {"conversation_id": "c1", "text": "and now?"})
        seen = until_narrated(events)
        events.close()
    assert seen[0]["type"] == "user.message" and seen[-1]["type"] == "narrator.message"
    assert told == ["narrator.delta"] * len(llm.pieces)
