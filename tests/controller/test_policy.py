"""The rule policy, driven by a manual clock: every timing rule, exactly, in milliseconds."""

from __future__ import annotations

from typing import Any

from tests.support import ev, policy, reasons


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


def test_only_the_chat_itself_is_a_user_waiting_or_an_answer() -> None:
    """Any client may log.append a user.message or narrator.message, but not with visibility
    user: only chat.user_message and narrator.say write those. The rest is mere activity."""
    p = policy()
    p.observe(ev("user.message", visibility="internal"), 0.0)
    p.observe(ev("user.message", visibility="status"), 0.0)
    assert p.conversations["c1"].user_waiting_since is None
    assert p.due(1.0, set()) == []  # nobody is waiting: no grant
    p.observe(ev("user.message"), 2.0)  # the chat itself
    p.observe(ev("narrator.message", visibility="status"), 2.01)
    p.observe(ev("narrator.message", visibility="internal"), 2.02)
    assert reasons(p.due(2.1, set())) == [("c1", True, "user_message")]
    st = p.conversations["c1"]
    assert st.user_waiting_since == 2.0  # still waiting: a note on the rail answered nothing
    assert st.last_narration is None  # and it starts no min_gap either
    p.observe(ev("task.updated", task={"id": "t1", "status": "done"}), 3.0)
    p.observe(ev("narrator.message"), 3.0)  # the narrator answers, through its grant
    assert p.conversations["c1"].user_waiting_since is None


def nested(depth: int) -> list:
    """A list nested ``depth`` deep, built without recursion."""
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


HOSTILE_TASKS: list[Any] = [
    [1, 2],
    "t1",
    5,
    True,
    nested(5000),
    {"id": 5, "status": {}},
    {"id": 5, "status": "running"},
    {"id": ["t"], "status": "running"},
    {"id": {"a": 1}, "status": "done"},
    {"id": "t1", "status": ["running"]},
    {"id": "t1", "status": None},
    {"id": "t1", "status": 3},
    {"id": "", "status": "running"},
    {"id": "x" * 300, "status": "running"},
    {"id": nested(5000), "status": nested(5000)},
    {"id": "t2", "status": "running", "owner": {"deep": nested(5000)}},
    {"id": "t3", "status": "running", "owner": 7},
    {"id": "t4", "status": "running", "owner": ""},
]


def test_hostile_task_data_is_taken_in_without_trusting_its_shape() -> None:
    """event.data is whatever a client wrote: no shape makes observe raise, and nothing that
    is not a proper id or owner reaches the events the controller writes (or status)."""
    p = policy(idle_timeout_s=10.0, stall_timeout_s=20.0)
    for i, task in enumerate(HOSTILE_TASKS):
        p.observe(ev("task.created" if i % 2 else "task.updated", data={"task": task}), 0.0)
    for data in ({"task": None}, {"other": 1}, {}):
        p.observe(ev("task.updated", data=data), 0.0)
    st = p.conversations["c1"]
    assert st.open_tasks == {"t2": None, "t3": None, "t4": None}  # ids kept, owners that are not names dropped
    (idle,) = p.due(10.0, set())
    assert (idle.reason, idle.idle) == ("idle", True)
    (stall,) = p.due(20.0, set())
    assert stall.stalled == ["t2", "t3", "t4"]
    p.observe(ev("user.message"), 21.0)  # and it goes on deciding
    assert reasons(p.due(21.05, set())) == [("c1", True, "user_message")]


def test_a_stall_report_read_back_is_no_sign_of_life() -> None:
    """The controller's own task.stalled comes back through the log: it must not revive the
    task (reported again every stall_timeout_s) nor reset the idle watchdog."""
    p = policy(idle_timeout_s=100.0, stall_timeout_s=20.0)
    p.observe(ev("task.created", task={"id": "t1", "status": "running"}), 0.0)
    assert p.due(20.0, set())[0].stalled == ["t1"]
    p.observe(ev("task.stalled", task_id="t1", visibility="status"), 20.0)
    assert p.due(40.0, set()) == []  # reported once
    assert reasons(p.due(100.0, set())) == [("c1", True, "idle")]  # quiet since 0, not since 20
