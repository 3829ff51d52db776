"""The controller with a manual clock: decisions become grants and events, exactly on time."""

from __future__ import annotations

import pytest

from sidecar.clock import ManualClock
from sidecar.controller import Controller, GrantBook, RulePolicy
from sidecar.errors import GateClosedError
from sidecar.log.events import NewEvent
from tests.controller.test_policy import ev


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make(clock: ManualClock, **kw) -> tuple[Controller, list[NewEvent]]:
    written: list[NewEvent] = []

    async def emit(events: list[NewEvent]) -> None:
        written.extend(events)

    async def ref(cid: str) -> str:
        return "ab" * 32

    policy = RulePolicy(min_gap_s=5.0, idle_timeout_s=kw.pop("idle_timeout_s", 30.0), **kw)
    return Controller(policy, GrantBook(clock, ttl_s=30.0), clock, emit, ref), written


def test_grants_are_single_use_timed_and_bound(clock: ManualClock) -> None:
    book = GrantBook(clock, ttl_s=30.0)
    g = book.issue("c1", "user_message")
    assert book.issue("c1", "again") is None  # one outstanding grant per conversation
    assert book.outstanding("c1") is g and g.expires_at.endswith("Z")
    with pytest.raises(GateClosedError) as info:
        book.redeem("c2", g.grant_id)
    assert info.value.data["reason"] == "other conversation" and info.value.code == -32004
    assert book.redeem("c1", g.grant_id) is g
    with pytest.raises(GateClosedError, match="used"):
        book.redeem("c1", g.grant_id)
    with pytest.raises(GateClosedError, match="unknown"):
        book.redeem("c1", "nope")
    g2 = book.issue("c1", "x")
    clock.advance(30.0)
    assert book.outstanding("c1") is None
    with pytest.raises(GateClosedError, match="expired"):
        book.redeem("c1", g2.grant_id)
    assert book.issue("c1", "y") is not None  # an expired grant frees the gate


@pytest.mark.anyio
async def test_a_user_message_opens_the_gate(clock: ManualClock) -> None:
    ctl, written = make(clock)
    ctl.observe([ev("user.message")])
    assert await ctl.tick() == [] and written == []
    clock.advance(0.05)
    (decision,) = await ctl.tick()
    assert decision.speak_now and decision.reason == "user_message"
    (event,) = written
    assert event.type == "controller.decision" and event.conversation_id == "c1"
    grant = ctl.grants.outstanding("c1")
    assert event.data == {
        "speak_now": True,
        "reason": "user_message",
        "policy": "rules",
        "grant_id": grant.grant_id,
        "expires_at": grant.expires_at,
        "summary_ref": "ab" * 32,
    }
    status = ctl.status("c1")
    assert (status["gate"], status["grant_id"], status["user_waiting"]) == ("open", grant.grant_id, True)
    ctl.observe([ev("agent.error")])
    clock.advance(0.05)
    await ctl.tick()
    assert written[-1].data == {"speak_now": False, "reason": "grant outstanding", "policy": "rules"}
    ctl.grants.redeem("c1", grant.grant_id)
    ctl.observe([ev("narrator.message")])
    assert ctl.status("c1")["gate"] == "closed" and not ctl.status("c1")["user_waiting"]


@pytest.mark.anyio
async def test_the_watchdog_speaks_up_and_reports_stalls(clock: ManualClock) -> None:
    ctl, written = make(clock, idle_timeout_s=10.0, stall_timeout_s=10.0)
    ctl.observe([ev("task.created", task={"id": "t1", "status": "running", "owner": "coder"})])
    clock.advance(9.99)
    assert await ctl.tick() == []
    clock.advance(0.01)
    await ctl.tick()
    assert [e.type for e in written] == ["watchdog.idle", "task.stalled", "controller.decision"]
    idle, stalled, decision = written
    assert idle.visibility == "status" and idle.data["open_tasks"] == ["t1"] and idle.data["idle_for_s"] == 10.0
    assert stalled.task_id == "t1" and stalled.agent_id == "coder"
    assert decision.data["speak_now"] and decision.data["reason"] == "idle"
    assert ctl.status("c1")["stalled_tasks"] == ["t1"]
    assert ctl.policy.next_deadline() == pytest.approx(clock.monotonic() + 20.0)  # backing off


@pytest.mark.anyio
async def test_heartbeats_keep_the_watchdog_quiet(clock: ManualClock) -> None:
    ctl, written = make(clock, idle_timeout_s=10.0, stall_timeout_s=100.0)
    ctl.observe([ev("task.created", task={"id": "t1", "status": "running", "owner": "coder"})])
    for _ in range(10):
        clock.advance(9.0)
        ctl.heartbeat("c1", "t1")
        assert await ctl.tick() == []
    assert written == []
    assert ctl.status("c1")["idle_for_s"] == 0.0
