"""The rule policy, driven by a manual clock: every timing rule, exactly, in milliseconds."""

from __future__ import annotations

import itertools

from sidecar.controller.policy import RulePolicy
from sidecar.log.events import Event

_seq = itertools.count(1)


def ev(type_: str, cid: str = "c1", *, task: dict | None = None, task_id: str | None = None, level: str = "action"):
    return Event(
        id=f"00000000-0000-7000-8000-{next(_seq):012d}",
        seq=next(_seq),
        timestamp="2026-11-23T10:00:00.000000Z",
        conversation_id=cid,
        type=type_,
        visibility="user" if type_ in ("user.message", "narrator.message") else "internal",
        level=level,
        task_id=task_id or (task or {}).get("id"),
        caused_by=[],
        data={"task": task} if task else {},
    )


def policy(**kw) -> RulePolicy:
    return RulePolicy(min_gap_s=kw.pop("min_gap_s", 5.0), idle_timeout_s=kw.pop("idle_timeout_s", 30.0), **kw)


def reasons(decisions) -> list[tuple[str, bool, str]]:
    return [(d.conversation_id, d.speak_now, d.reason) for d in decisions]


def test_a_user_message_speaks_once_the_burst_settles() -> None:
    p = policy()
    p.observe(ev("user.message"), 100.0)
    assert p.due(100.01, set()) == []  # still inside the debounce window
    assert p.next_deadline() == 100.05
    assert reasons(p.due(100.05, set())) == [("c1", True, "user_message")]
    assert p.due(100.06, set()) == []  # decided once


def test_ten_events_in_50_ms_make_one_decision() -> None:
    p = policy()
    for i in range(10):
        p.observe(ev("agent.error"), 100.0 + i * 0.005)
        assert p.due(100.0 + i * 0.005, set()) == []
    assert reasons(p.due(100.045 + 0.05, set())) == [("c1", True, "error")]


def test_min_gap_between_turns_unless_the_user_waits() -> None:
    p = policy()
    p.observe(ev("narrator.message"), 100.0)
    p.observe(ev("task.updated", task={"id": "t1", "status": "done"}), 101.0)
    assert p.due(101.1, set()) == []  # held: the narrator spoke 1.1 s ago
    assert p.next_deadline() == 105.0
    assert reasons(p.due(105.0, set())) == [("c1", True, "task_done")]
    p.observe(ev("narrator.message"), 106.0)
    p.observe(ev("user.message"), 106.5)
    assert reasons(p.due(106.55, set())) == [("c1", True, "user_message")]  # no gap for a waiting user


def test_urgency_picks_the_reason() -> None:
    p = policy()
    p.observe(ev("task.updated", task={"id": "t1", "status": "done"}), 1.0)
    p.observe(ev("agent.error"), 1.01)
    p.observe(ev("task.updated", task={"id": "t2", "status": "failed"}), 1.02)
    assert reasons(p.due(1.1, set())) == [("c1", True, "error")]


def test_an_outstanding_grant_is_never_doubled() -> None:
    p = policy()
    p.observe(ev("user.message"), 1.0)
    assert reasons(p.due(1.1, {"c1"})) == [("c1", False, "grant outstanding")]


def test_idle_watchdog_with_backoff_and_heartbeats() -> None:
    p = policy(idle_timeout_s=10.0, stall_timeout_s=1000.0)
    p.observe(ev("task.created", task={"id": "t1", "status": "running", "owner": "coder"}), 0.0)
    assert p.due(9.9, set()) == []
    first = p.due(10.0, set())
    assert reasons(first) == [("c1", True, "idle")] and first[0].idle
    assert p.due(29.9, set()) == []  # backed off: 2 x 10 s
    assert reasons(p.due(30.0, set())) == [("c1", True, "idle")]
    assert p.due(69.9, set()) == [] and reasons(p.due(70.0, set())) == [("c1", True, "idle")]  # 4x
    assert p.due(149.9, set()) == [] and len(p.due(150.0, set())) == 1  # 8x, the cap
    assert p.due(229.9, set()) == [] and len(p.due(230.0, set())) == 1  # stays at 8x
    p.heartbeat("c1", "t1", 231.0)  # a heartbeat resets both the clock and the backoff
    assert p.due(240.9, set()) == [] and len(p.due(241.0, set())) == 1


def test_no_open_work_no_watchdog() -> None:
    p = policy(idle_timeout_s=10.0)
    p.observe(ev("agent.progress"), 0.0)
    assert p.due(1000.0, set()) == []
    p.observe(ev("task.created", task={"id": "t1", "status": "pending"}), 1000.0)
    p.observe(ev("task.updated", task={"id": "t1", "status": "cancelled"}), 1001.0)
    assert p.due(2000.0, set()) == []


def test_a_silent_task_is_reported_stalled_once() -> None:
    p = policy(idle_timeout_s=100.0, stall_timeout_s=20.0)
    p.observe(ev("task.created", task={"id": "t1", "status": "running", "owner": "coder"}), 0.0)
    p.observe(ev("task.created", task={"id": "t2", "status": "running", "owner": "rag"}), 0.0)
    p.heartbeat("c1", "t2", 15.0)
    found = p.due(20.0, set())
    assert [(d.reason, d.stalled) for d in found] == [("stalled", ["t1"])]
    assert p.due(21.0, set()) == []
    assert p.due(35.0, set())[0].stalled == ["t2"]
    p.observe(ev("agent.progress", task_id="t1"), 36.0)  # a sign of life clears it
    assert "t1" not in p.conversations["c1"].stalled


def test_own_events_are_not_activity() -> None:
    p = policy(idle_timeout_s=10.0)
    p.observe(ev("task.created", task={"id": "t1", "status": "running"}), 0.0)
    p.observe(ev("controller.decision"), 5.0)
    p.observe(ev("watchdog.idle"), 6.0)
    assert reasons(p.due(10.0, set())) == [("c1", True, "idle")]


def test_conversations_are_independent() -> None:
    p = policy()
    p.observe(ev("user.message", "a"), 0.0)
    p.observe(ev("agent.error", "b"), 0.0)
    assert sorted(reasons(p.due(0.1, set()))) == [("a", True, "user_message"), ("b", True, "error")]
