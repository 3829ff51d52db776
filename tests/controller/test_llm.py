"""The LLM policy and the built-in narrator, against a loopback chat-completions server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anyio
import pytest
from sidecar_client import Client

from sidecar.clock import ManualClock
from sidecar.controller import Controller, GrantBook, RulePolicy
from sidecar.narrator.llm import ChatClient, LLMError, parse_verdict
from tests.daemon.conftest import daemon, start_daemon  # noqa: F401
from tests.narrator.fake_llm import FakeLLM, running
from tests.support import ev, read_notifications


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with running() as fake:
        yield fake


@pytest.mark.anyio
async def test_chat_client(llm: FakeLLM) -> None:
    chat = ChatClient(llm.url, model="m", timeout_s=5)
    assert json.loads(await chat.complete([{"role": "user", "content": "hi"}]))["speak_now"] is True
    assert llm.requests[-1]["model"] == "m" and llm.requests[-1]["stream"] is False
    assert [d async for d in chat.stream([{"role": "user", "content": "hi"}])] == llm.pieces
    with pytest.raises(LLMError, match="http"):
        ChatClient("ftp://example.invalid")
    with pytest.raises(LLMError, match="cannot reach"):
        await ChatClient("http://127.0.0.1:9").complete([])
    await chat.aclose()


def test_parse_verdict() -> None:
    assert parse_verdict('Sure: {"speak_now": false, "reason": "routine"}') == (False, "routine")
    for bad in ("no", '{"speak_now": "yes"}', "{not json}"):
        with pytest.raises(LLMError):
            parse_verdict(bad)


async def _decide(advisor) -> dict:
    clock = ManualClock()
    written = []

    async def emit(events):
        written.extend(events)

    ctl = Controller(RulePolicy(min_gap_s=5, idle_timeout_s=30), GrantBook(clock, 30), clock, emit, advisor=advisor)
    ctl.observe([ev("agent.error")])
    clock.advance(0.1)
    await ctl.tick()
    return written[-1].data


@pytest.mark.anyio
async def test_the_llm_may_say_no_and_its_failures_leave_the_rules_in_charge() -> None:
    async def no(cid, reason):
        return False, "routine"

    async def broken(cid, reason):
        raise LLMError("malformed")

    said_no = await _decide(no)
    assert (said_no["speak_now"], said_no["policy"], said_no["llm_reason"]) == (False, "llm", "routine")
    assert "grant_id" not in said_no
    fallback = await _decide(broken)
    assert fallback["speak_now"] and fallback["policy"] == "rules (llm failed)" and "grant_id" in fallback


def test_the_built_in_narrator_streams_then_speaks(start_daemon, llm: FakeLLM) -> None:  # noqa: F811
    d = start_daemon(config_text=f'[llm]\nurl = "{llm.url}"\nnarrator = true\ntimeout_s = 5.0\n')
    notes = read_notifications(d.socket_path, {"conversation_id": "c1"})
    with Client(d.socket_path) as c:
        c.call("chat.user_message", {"conversation_id": "c1", "text": "how is it going?"})
        deltas, spoken = [], None
        for note in notes:
            if note["method"] == "narrator.delta":
                deltas.append(note["params"])
            elif note["method"] == "log.event" and note["params"]["event"]["type"] == "narrator.message":
                spoken = note["params"]["event"]
                break
    assert [p["delta"] for p in deltas] == llm.pieces and [p["index"] for p in deltas] == [0, 1, 2, 3]
    assert spoken["data"]["text"] == "All tasks are on track." and spoken["visibility"] == "user"
    assert spoken["data"]["grant_id"] == deltas[0]["grant_id"]
    stream_request = next(r for r in llm.requests if r["stream"])
    assert stream_request["messages"][0]["role"] == "system" and "narrator" in stream_request["messages"][0]["content"]


@pytest.mark.parametrize("mode", ["garbage", "hang"])
def test_the_llm_policy_falls_back_to_the_rules(start_daemon, llm: FakeLLM, mode: str) -> None:  # noqa: F811
    llm.mode = mode
    d = start_daemon(config_text=f'[llm]\nurl = "{llm.url}"\ntimeout_s = 0.5\n')
    with Client(d.socket_path) as watcher, Client(d.socket_path) as c:
        decisions = watcher.subscribe({"conversation_id": "c1", "types": ["controller.decision"]})
        c.call("log.append", {"conversation_id": "c1", "type": "agent.error", "data": {"error": "disk on fire"}})
        data = next(decisions)["data"]
    assert data["speak_now"] and data["reason"] == "error" and data["policy"] == "rules (llm failed)"
    assert "controller.llm_fallback" in d.stderr()


def test_the_llm_policy_can_hold_the_narrator_back(start_daemon, llm: FakeLLM) -> None:  # noqa: F811
    llm.verdict = '{"speak_now": false, "reason": "nothing the user needs"}'
    d = start_daemon(config_text=f'[llm]\nurl = "{llm.url}"\ntimeout_s = 5.0\n')
    with Client(d.socket_path) as watcher, Client(d.socket_path) as c:
        decisions = watcher.subscribe({"conversation_id": "c1", "types": ["controller.decision"]})
        c.call("log.append", {"conversation_id": "c1", "type": "agent.error", "data": {"error": "minor"}})
        data = next(decisions)["data"]
        assert (data["speak_now"], data["policy"], data["llm_reason"]) == (False, "llm", "nothing the user needs")
        assert c.call("controller.status", {"conversation_id": "c1"})["gate"] == "closed"
    system = llm.requests[-1]["messages"][0]["content"]
    assert "speak_now" in system and "error" in system  # the controller template, with the reason


@pytest.mark.anyio
async def test_a_hung_llm_holds_up_no_other_decision() -> None:
    """Under run(), the LLM is asked on the side: while it hangs over one conversation's
    error, a user waiting in another is answered, and the error is decided once it speaks."""
    clock = ManualClock()
    written: list = []
    wrote = anyio.Event()
    asked, answer = anyio.Event(), anyio.Event()

    async def emit(events):
        written.extend(events)
        wrote.set()

    async def hung(cid, reason):
        asked.set()
        await answer.wait()
        return True, "worth saying"

    ctl = Controller(RulePolicy(min_gap_s=5, idle_timeout_s=30), GrantBook(clock, 30), clock, emit, advisor=hung)
    async with anyio.create_task_group() as tg:
        await tg.start(ctl.run)
        ctl.observe([ev("agent.error", "slow")])
        clock.advance(0.1)
        ctl.observe([])  # wake the loop at the new time
        with anyio.fail_after(10):
            await asked.wait()
        ctl.observe([ev("user.message", "waiting")])
        clock.advance(0.1)
        ctl.observe([])
        with anyio.fail_after(10):
            await wrote.wait()
        assert [(e.conversation_id, e.data["reason"]) for e in written] == [("waiting", "user_message")]
        wrote = anyio.Event()
        answer.set()
        with anyio.fail_after(10):
            await wrote.wait()
        tg.cancel_scope.cancel()
    decided = {e.conversation_id: e.data for e in written}
    assert decided["slow"]["policy"] == "llm" and decided["slow"]["speak_now"] and "grant_id" in decided["slow"]
