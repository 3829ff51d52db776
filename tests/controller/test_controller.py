"""The controller with a manual clock: decisions become grants and events, exactly on time."""

from __future__ import annotations

from collections.abc import Container

import anyio
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs

from sidecar.clock import ManualClock
from sidecar.controller import Controller, Decision, GrantBook, RulePolicy
from sidecar.errors import GateClosedError, InvalidParams
from sidecar.log.events import Event, NewEvent
from sidecar.playbooks.library import PlaybookLibrary
from tests.support import ev


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
    assert (status.gate, status.grant_id, status.user_waiting) == ("open", grant.grant_id, True)
    ctl.observe([ev("agent.error")])
    clock.advance(0.05)
    await ctl.tick()
    assert written[-1].data == {"speak_now": False, "reason": "grant outstanding", "policy": "rules"}
    ctl.grants.redeem("c1", grant.grant_id)
    ctl.observe([ev("narrator.message")])
    assert ctl.status("c1").gate == "closed" and not ctl.status("c1").user_waiting


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
    assert ctl.status("c1").stalled_tasks == ["t1"]
    assert ctl.policy.next_deadline() == pytest.approx(clock.monotonic() + 20.0)  # backing off


@pytest.mark.anyio
async def test_the_watchdogs_decision_carries_the_stall_playbook_itself(clock: ManualClock) -> None:
    """The playbook for what a decision reports (idle, a stalled task) goes on that decision,
    not on the next one when the controller's own events come back from the log."""
    ctl, written = make(clock, idle_timeout_s=10.0, stall_timeout_s=10.0)
    ctl.playbooks = PlaybookLibrary(None)
    ctl.observe([ev("task.created", task={"id": "t1", "status": "running", "owner": "coder"})])
    clock.advance(10.0)
    await ctl.tick()
    assert [e.type for e in written] == ["watchdog.idle", "task.stalled", "controller.decision"]
    assert written[-1].data["playbook"] == "task-stalled" and ctl.last_playbook("c1") == "task-stalled"
    ctl.observe([ev(e.type, data=e.data) for e in written])  # the controller's own events, committed
    ctl.observe([ev("user.message", data={"text": "and now?"})])
    written.clear()
    clock.advance(1.0)  # the burst settles
    await ctl.tick()
    assert [e.type for e in written] == ["controller.decision"] and "playbook" not in written[-1].data


@pytest.mark.anyio
async def test_heartbeats_keep_the_watchdog_quiet(clock: ManualClock) -> None:
    ctl, written = make(clock, idle_timeout_s=10.0, stall_timeout_s=100.0)
    ctl.observe([ev("task.created", task={"id": "t1", "status": "running", "owner": "coder"})])
    for _ in range(10):
        clock.advance(9.0)
        ctl.heartbeat("c1", "t1")
        assert await ctl.tick() == []
    assert written == []
    assert ctl.status("c1").idle_for_s == 0.0


# --- the controller must not die ------------------------------------------------------------


@pytest.mark.anyio
async def test_a_summary_that_cannot_be_rendered_costs_the_waiting_user_nothing(clock: ManualClock) -> None:
    """Data nested too deep makes the summary renderer raise RecursionError: the decision
    and its grant still go out, without a summary_ref."""
    written: list[NewEvent] = []

    async def emit(events: list[NewEvent]) -> None:
        written.extend(events)

    async def ref(cid: str) -> str:
        raise RecursionError("maximum recursion depth exceeded")

    ctl = Controller(RulePolicy(min_gap_s=5.0, idle_timeout_s=30.0), GrantBook(clock, ttl_s=30.0), clock, emit, ref)
    ctl.observe([ev("user.message")])
    clock.advance(0.05)
    with capture_logs() as logs:
        (decision,) = await ctl.tick()
    assert decision.speak_now
    (event,) = written
    grant = ctl.grants.outstanding("c1")
    assert grant is not None and event.data["grant_id"] == grant.grant_id and event.data["summary_ref"] is None
    assert [e["event"] for e in logs] == ["controller.summary_failed"] and ctl.faults.count == 1


@pytest.mark.anyio
async def test_a_conversation_that_cannot_be_written_does_not_silence_the_others(clock: ManualClock) -> None:
    written: list[NewEvent] = []

    async def emit(events: list[NewEvent]) -> None:
        if any(e.conversation_id == "bad" for e in events):
            raise InvalidParams("event is 2000000 bytes encoded, over the limit")
        written.extend(events)

    ctl = Controller(RulePolicy(min_gap_s=5.0, idle_timeout_s=30.0), GrantBook(clock, ttl_s=30.0), clock, emit)
    ctl.observe([ev("user.message", "bad"), ev("user.message", "good"), ev("agent.error", "also-good")])
    clock.advance(0.05)
    assert len(await ctl.tick()) == 3
    assert sorted(e.conversation_id for e in written) == ["also-good", "good"]


@pytest.mark.anyio
async def test_the_watchdog_names_a_bounded_number_of_tasks(clock: ManualClock) -> None:
    """One watchdog.idle must fit in one event however many tasks a client opened."""
    ctl, written = make(clock, idle_timeout_s=10.0, stall_timeout_s=1000.0)
    ctl.observe([ev("task.created", task={"id": f"t{i:04}", "status": "running"}) for i in range(5000)])
    clock.advance(10.0)
    await ctl.tick()
    idle = next(e for e in written if e.type == "watchdog.idle")
    assert idle.data["open_tasks"] == [f"t{i:04}" for i in range(100)] and idle.data["open_task_count"] == 5000


@pytest.mark.anyio
async def test_observe_loses_only_the_event_it_fails_on(clock: ManualClock) -> None:
    ctl, written = make(clock)
    real = ctl.policy.observe

    def observe(event: Event, now: float) -> None:
        if event.conversation_id == "boom":
            raise KeyError("a bug")
        real(event, now)

    ctl.policy.observe = observe  # type: ignore[method-assign]
    with capture_logs() as logs:
        ctl.observe([ev("user.message", "boom"), ev("user.message", "c1")])
    assert ctl.status("c1").user_waiting and ctl.faults.count == 1
    assert [e["event"] for e in logs] == ["controller.observe_failed"] and "exc_info" in logs[0]


@pytest.mark.anyio
async def test_run_logs_a_faulty_tick_once_backs_off_and_goes_on(clock: ManualClock) -> None:
    """A tick that raises must not end the loop (it used to take the daemon down with it):
    logged with its traceback once, then a back-off that doubles, reset after a good tick."""
    decided = anyio.Event()
    written: list[NewEvent] = []

    async def emit(events: list[NewEvent]) -> None:
        written.extend(events)
        decided.set()

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await anyio.lowlevel.checkpoint()

    policy = RulePolicy(min_gap_s=5.0, idle_timeout_s=30.0)
    ctl = Controller(policy, GrantBook(clock, ttl_s=30.0), clock, emit, sleep=sleep)
    real, failures = policy.due, [3]

    def due(now: float, has_grant: Container[str] = frozenset()) -> list[Decision]:
        if failures[0] > 0:
            failures[0] -= 1
            raise TypeError("'<' not supported between instances of 'int' and 'str'")
        return real(now, has_grant)

    policy.due = due  # type: ignore[method-assign]
    ctl.observe([ev("user.message")])
    clock.advance(0.05)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(ctl.run)
            with anyio.fail_after(10):
                await decided.wait()
            assert slept == [0.05, 0.1, 0.2]
            decided = anyio.Event()
            failures[0] = 2
            ctl.observe([ev("agent.error", "c2")])
            clock.advance(0.05)
            with anyio.fail_after(10):
                await decided.wait()
            tg.cancel_scope.cancel()
    assert slept == [0.05, 0.1, 0.2, 0.05, 0.1]  # reset by the good tick between
    assert [e.data["reason"] for e in written] == ["user_message", "error"]
    failed = [e for e in logs if e["event"] == "controller.tick_failed"]
    assert [("exc_info" in e, e.get("repeats")) for e in failed] == [(True, None), (False, 2), (False, 4)]
    assert ctl.faults.count == 5


def test_the_grant_book_forgets_dead_grants_oldest_first(clock: ManualClock) -> None:
    """Issuing costs O(1) however many grants were ever issued (it used to rescan them all
    past 10,000); a dead grant is remembered for a ttl, so a late narrator hears "expired"."""
    book = GrantBook(clock, ttl_s=30.0, max_kept=100)
    old = book.issue("c0", "x")
    clock.advance(30.0)
    book.issue("c1", "x")
    with pytest.raises(GateClosedError, match="expired"):
        book.redeem("c0", old.grant_id)
    clock.advance(30.0)
    book.issue("c2", "x")
    with pytest.raises(GateClosedError, match="unknown"):
        book.redeem("c0", old.grant_id)
    assert "c0" not in book._current and len(book._by_id) == 2  # c1's (dead, in its grace), c2's
    live = [book.issue(f"d{i}", "x") for i in range(300)]  # over max_kept, but all good: all kept
    assert all(book.outstanding(f"d{i}") is g for i, g in enumerate(live))
    clock.advance(30.0)
    e = book.issue("e", "x")  # beyond max_kept, the expired go without their grace
    assert len(book._by_id) == 100 and list(book._by_id)[-1] == e.grant_id
