"""What a tick costs does not grow with the conversations the controller has ever seen.

Counted, not timed: ``RulePolicy.visited`` is the number of conversation states the last
``due`` looked at. 50,000 heartbeats on distinct conversations used to make 50,000 states,
each visited on every tick (other clients' appends went from 0.9 to 97 ms).
"""

from __future__ import annotations

import pytest

from sidecar.clock import ManualClock
from sidecar.controller import Controller, Grant, GrantBook, RulePolicy
from sidecar.log.events import NewEvent
from tests.support import ev, policy, reasons

N = 50_000


def test_heartbeats_for_conversations_without_open_work_make_no_state() -> None:
    p = policy()
    for i in range(N):
        p.heartbeat(f"h{i}", "t1", float(i))
    assert p.conversations == {}
    assert p.due(float(N), set()) == [] and p.visited == 0
    assert p.next_deadline() is None


def test_a_tick_visits_what_changed_not_every_quiet_conversation() -> None:
    p = policy(max_conversations=N)  # the cap has its own test
    for i in range(N):
        p.observe(ev("agent.progress", f"q{i}"), 0.0)
    assert p.due(0.0, set()) == [] and p.visited == N  # each new conversation is scheduled once
    for t in range(1, 100):
        assert p.due(float(t), set()) == [] and p.visited == 0
        assert p.next_deadline() is None
    p.observe(ev("user.message", "q7"), 100.0)
    assert p.due(100.0, set()) == [] and p.visited == 1
    assert p.next_deadline() == 100.05
    assert reasons(p.due(100.05, set())) == [("q7", True, "user_message")] and p.visited == 1
    for _ in range(1000):  # a flood on one conversation is one conversation to look at
        p.observe(ev("agent.progress", "q8"), 100.1)
    assert p.due(100.1, set()) == [] and p.visited == 1
    assert len(p.conversations) == N


def test_a_tick_visits_only_the_open_work_that_fell_due() -> None:
    p = policy(idle_timeout_s=30.0, stall_timeout_s=1000.0, max_conversations=N)
    for i in range(N):  # as at start-up, from the task graph: deadlines from 30 s to 39 s
        p.seed_task(f"w{i}", "t1", "coder", float(i % 10))
    assert p.due(0.0, set()) == [] and p.visited == N
    for t in range(1, 30):
        assert p.due(float(t), set()) == [] and p.visited == 0
    assert p.next_deadline() == 30.0
    found = p.due(30.0, set())
    assert len(found) == N // 10 and {d.reason for d in found} == {"idle"}
    assert p.visited == N // 10
    assert p.next_deadline() == 31.0
    for i in range(0, N, 10):  # heartbeats for every open task: each costs O(1), nothing is due
        p.heartbeat(f"w{i}", "t1", 30.5)
    assert p.due(30.5, set()) == [] and p.visited <= N // 10


def test_the_heap_of_deadlines_stays_bounded() -> None:
    """Deadlines that move earlier leave stale heap entries behind; they are swept."""
    p = policy(idle_timeout_s=10_000.0, min_gap_s=0.0)
    p.observe(ev("task.created", task={"id": "t1", "status": "running"}), 0.0)
    now = 0.0
    for _ in range(5000):
        now += 1.0
        p.observe(ev("agent.error"), now)  # due in 50 ms, before the idle deadline
        p.due(now, set())
        assert reasons(p.due(now + 0.05, set())) == [("c1", True, "error")]
    assert len(p._heap) < 1100


def test_quiet_conversations_are_forgotten_open_work_is_kept() -> None:
    p = policy(retain_s=100.0, idle_timeout_s=1000.0, stall_timeout_s=1000.0)
    p.observe(ev("agent.progress", "quiet"), 0.0)
    p.observe(ev("task.created", "busy", task={"id": "t1", "status": "running"}), 0.0)
    p.observe(ev("user.message", "waiting"), 0.0)
    p.observe(ev("agent.error", "granted"), 0.0)
    assert sorted(reasons(p.due(0.05, set()))) == [("granted", True, "error"), ("waiting", True, "user_message")]
    assert p.due(99.9, {"granted"}) == [] and len(p.conversations) == 4
    assert p.due(100.0, {"granted"}) == []
    assert sorted(p.conversations) == ["busy", "granted", "waiting"]  # a grant keeps it
    assert p.due(100.01, set()) == []
    assert sorted(p.conversations) == ["busy", "waiting"]
    p.observe(ev("task.updated", "busy", task={"id": "t1", "status": "done"}), 300.0)
    p.observe(ev("narrator.message", "waiting"), 300.0)
    assert sorted(reasons(p.due(300.05, set()))) == [("busy", True, "task_done")]
    assert p.due(399.9, set()) == [] and len(p.conversations) == 2
    assert p.due(400.0, set()) == [] and p.conversations == {}  # each once quiet for retain_s
    assert p.evicted_total == 4


def test_retain_s_never_forgets_a_gap_still_running() -> None:
    p = policy(retain_s=0.0, min_gap_s=5.0)
    p.observe(ev("narrator.message"), 0.0)
    assert p.due(4.0, set()) == [] and "c1" in p.conversations
    p.observe(ev("task.updated", task={"id": "t1", "status": "done"}), 4.0)
    assert p.due(4.05, set()) == []  # held: the narrator spoke 4 s ago
    assert reasons(p.due(5.0, set())) == [("c1", True, "task_done")]
    assert p.due(10.0, set()) == [] and p.conversations == {}


def test_beyond_max_conversations_the_least_recently_active_quiet_ones_go() -> None:
    p = policy(max_conversations=3)
    for i in range(5):
        p.observe(ev("agent.progress", f"c{i}"), float(i))
    p.observe(ev("task.created", "c0", task={"id": "t1", "status": "running"}), 5.0)
    p.due(5.0, set())
    assert sorted(p.conversations) == ["c0", "c3", "c4"]
    for i in range(5, 10):  # open work is never forgotten, even over the cap
        p.observe(ev("task.created", f"c{i}", task={"id": "t1", "status": "running"}), 6.0)
    p.due(6.0, set())
    assert sorted(p.conversations) == ["c0", "c5", "c6", "c7", "c8", "c9"]
    assert p.evicted_total == 4


class CountingGrants(GrantBook):
    """A grant book that counts how often the controller asks it."""

    asked = 0

    def outstanding(self, cid: str) -> Grant | None:
        self.asked += 1
        return super().outstanding(cid)


@pytest.mark.anyio
async def test_a_controller_tick_asks_about_grants_only_where_something_is_due() -> None:
    clock = ManualClock()
    written: list[NewEvent] = []

    async def emit(events: list[NewEvent]) -> None:
        written.extend(events)

    grants = CountingGrants(clock, ttl_s=30.0)
    ctl = Controller(RulePolicy(min_gap_s=5.0, idle_timeout_s=600.0, max_conversations=N), grants, clock, emit)
    ctl.observe([ev("agent.progress", f"q{i}") for i in range(N)])
    for i in range(N):
        ctl.heartbeat(f"h{i}", None)
    await ctl.tick()
    grants.asked = 0
    ctl.observe([ev("user.message", "q1")])
    clock.advance(0.05)
    (decision,) = await ctl.tick()
    assert decision.speak_now and grants.asked <= 2  # was: once per conversation, every tick
    assert ctl.policy.visited <= 2  # scheduled, then decided
    assert ctl.status("h1").reason == "nothing has happened here yet"
    assert [e.type for e in written] == ["controller.decision"]


def test_a_conversation_just_decided_is_kept_for_the_controller_to_read() -> None:
    """The controller reads the state of each decision it carries out (and status shows the
    last one): a decision and the state's eviction never fall in the same call."""
    p = policy(min_gap_s=0.0, max_conversations=1)
    p.observe(ev("agent.error", "a"), 0.0)
    p.observe(ev("agent.error", "b"), 0.0)
    assert sorted(reasons(p.due(0.05, set()))) == [("a", True, "error"), ("b", True, "error")]
    assert sorted(p.conversations) == ["a", "b"]
    assert p.conversations["a"].last_decision is not None
    assert p.due(0.06, set()) == [] and list(p.conversations) == ["b"]  # then the cap applies
