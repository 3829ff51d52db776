"""The scheduled policy decides exactly as the scan-everything one did.

:class:`RulePolicy` visits only conversations that changed or fell due, and forgets quiet
ones; :class:`ScanAllPolicy` (the policy before issue 12) decides every conversation on every
call. Fed the same events, heartbeats, grants and times, they must make the same decisions,
and ``next_deadline`` must never be later than a decision the old rules would make.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.clock import ManualClock
from sidecar.controller.grants import GrantBook
from sidecar.controller.policy import Decision, RulePolicy
from tests.controller.reference_policy import ScanAllPolicy
from tests.support import ev

CIDS = ["a", "b", "c"]
TASKS = ["t1", "t2"]
KINDS = ["user.message", "narrator.message", "task.created", "task.updated", "agent.error", "agent.progress"]
STATUSES = ["pending", "running", "blocked", "done", "failed", "cancelled"]
STEPS = [0.0, 0.01, 0.04, 0.05, 0.06, 1.0, 4.99, 5.0, 10.0, 20.0, 29.99, 30.0, 60.0, 200.0]

OPS = st.one_of(
    st.tuples(
        st.just("event"),
        st.sampled_from(CIDS),
        st.sampled_from(KINDS),
        st.sampled_from([None, *TASKS]),
        st.sampled_from(STATUSES),
    ),
    st.tuples(st.just("heartbeat"), st.sampled_from(CIDS), st.sampled_from([None, *TASKS])),
    st.tuples(st.just("advance"), st.sampled_from(STEPS)),
    st.tuples(st.just("due")),
)


def normal(decisions: list[Decision]) -> list[tuple[Any, ...]]:
    return sorted((d.conversation_id, d.speak_now, d.reason, d.idle, d.stalled) for d in decisions)


def random_op(rng: random.Random) -> tuple[Any, ...]:
    """One step of a long random run: mostly events and ticks, as a daemon sees them."""
    r = rng.random()
    if r < 0.4:
        return ("event", rng.choice(CIDS), rng.choice(KINDS), rng.choice([None, *TASKS]), rng.choice(STATUSES))
    if r < 0.55:
        return ("heartbeat", rng.choice(CIDS), rng.choice([None, *TASKS]))
    if r < 0.8:
        return ("advance", rng.choice(STEPS))
    return ("due",)


def run(steps: list[tuple[Any, ...]], idle_s: float = 10.0, stall_s: float = 20.0) -> None:
    """Both policies through ``steps``; every ``due`` must agree, and no decision the old
    rules would make may fall before the new ``next_deadline``. Grants come and go as the
    controller makes them: issued when a decision speaks, used when the narrator speaks (it
    speaks only with one), or expired."""
    # retain_s below its floor (min_gap_s): forgetting quiet conversations must change nothing.
    new = RulePolicy(min_gap_s=5.0, idle_timeout_s=idle_s, stall_timeout_s=stall_s, retain_s=0.0)
    old = ScanAllPolicy(min_gap_s=5.0, idle_timeout_s=idle_s, stall_timeout_s=stall_s)
    clock = ManualClock()
    grants = GrantBook(clock, ttl_s=8.0)
    for step in steps:
        now = clock.monotonic()
        if step[0] == "event":
            _, cid, kind, task_id, status = step
            if kind.startswith("task."):
                event = ev(kind, cid, task={"id": task_id or "t1", "status": status})
            elif kind == "narrator.message" and (grant := grants.outstanding(cid)) is not None:
                grants.redeem(cid, grant.grant_id)
                event = ev(kind, cid)
            else:
                event = ev("agent.progress" if kind == "narrator.message" else kind, cid, task_id=task_id)
            new.observe(event, now)
            old.observe(event, now)
        elif step[0] == "heartbeat":
            new.heartbeat(step[1], step[2], now)
            old.heartbeat(step[1], step[2], now)
        elif step[0] == "advance":
            deadline = new.next_deadline()
            if deadline is None or deadline > now + step[1]:  # a loop would sleep through this
                assert copy.deepcopy(old).due(now + step[1], set()) == []
            clock.advance(step[1])
        else:
            granted = {c for c in CIDS if grants.outstanding(c) is not None}
            decisions = normal(new.due(now, granted))
            assert decisions == normal(old.due(now, granted)), now
            for cid, speak, reason, *_ in decisions:
                if speak:
                    grants.issue(cid, reason)
    later = clock.monotonic() + 1000.0
    assert normal(new.due(later, set())) == normal(old.due(later, set()))


@settings(max_examples=300, deadline=None)
@given(st.lists(OPS, min_size=10, max_size=200))
def test_scheduled_and_scan_all_policies_agree(steps: list[tuple[Any, ...]]) -> None:
    run(steps)


@pytest.mark.parametrize(("idle_s", "stall_s"), [(10.0, 20.0), (20.0, 5.0)])
def test_long_random_runs_agree(idle_s: float, stall_s: float) -> None:
    """Long runs reach what short examples rarely do: backed-off watchdogs, grants in a gap,
    a heartbeat reviving a stalled task while the watchdog has backed off."""
    for seed in range(200):
        rng = random.Random(seed)
        run([random_op(rng) for _ in range(400)], idle_s, stall_s)
