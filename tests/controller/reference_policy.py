"""The rule policy as it was before issue 12, kept as an oracle for the scheduled one.

It decides every conversation on every call to ``due`` and scans them all for
``next_deadline``: slow, and obviously right. tests/controller/test_policy_oracle.py checks
that :class:`~sidecar.controller.policy.RulePolicy`, which visits only what changed or fell
due, decides exactly as this does. Verbatim but for the names (and ``Decision`` shared);
feed it only what both agree on (chat events with visibility user, no task.stalled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sidecar.controller.policy import URGENCY, Decision
from sidecar.log.events import Event
from sidecar.tasks.model import ACTIVE

OWN_TYPES = ("controller.", "watchdog.", "narrator.delta")


@dataclass
class ConversationState:
    last_activity: float
    idle_due: float  # when the watchdog speaks up, if there is open work and no activity
    user_waiting_since: float | None = None
    last_narration: float | None = None
    open_tasks: dict[str, str | None] = field(default_factory=dict)  # task id -> owner
    task_seen: dict[str, float] = field(default_factory=dict)  # task id -> last sign of life
    stalled: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)
    last_trigger: float = 0.0
    idle_strikes: int = 0
    last_decision: Decision | None = None

    @property
    def open_work(self) -> bool:
        return bool(self.open_tasks) or self.user_waiting_since is not None


class ScanAllPolicy:
    """The rules as they were: every call to ``due`` decides every conversation."""

    def __init__(
        self,
        *,
        min_gap_s: float,
        idle_timeout_s: float,
        debounce_s: float = 0.05,
        stall_timeout_s: float | None = None,
        max_backoff: int = 8,
    ) -> None:
        self.min_gap_s = min_gap_s
        self.idle_timeout_s = idle_timeout_s
        self.debounce_s = debounce_s
        self.stall_timeout_s = stall_timeout_s if stall_timeout_s is not None else 2 * idle_timeout_s
        self.max_backoff = max_backoff
        self.conversations: dict[str, ConversationState] = {}

    def state(self, cid: str, now: float) -> ConversationState:
        st = self.conversations.get(cid)
        if st is None:
            st = self.conversations[cid] = ConversationState(last_activity=now, idle_due=now + self.idle_timeout_s)
        return st

    # --- input -----------------------------------------------------------------------------------

    def observe(self, event: Event, now: float) -> None:
        if event.type.startswith(OWN_TYPES):
            return
        st = self.state(event.conversation_id, now)
        self._active(st, now)
        if event.task_id:
            st.task_seen[event.task_id] = now
            st.stalled.discard(event.task_id)
        kind = event.type
        if kind == "user.message":
            if st.user_waiting_since is None:
                st.user_waiting_since = now
            self._trigger(st, "user_message", now)
        elif kind == "narrator.message":
            st.user_waiting_since = None
            st.last_narration = now
        elif kind in ("task.created", "task.updated"):
            task: dict[str, Any] = (event.data or {}).get("task") or {}
            task_id, status = task.get("id") or event.task_id, task.get("status")
            if task_id and status:
                if status in ACTIVE:
                    st.open_tasks[task_id] = task.get("owner")
                    st.task_seen.setdefault(task_id, now)
                else:
                    st.open_tasks.pop(task_id, None)
                    st.task_seen.pop(task_id, None)
                    st.stalled.discard(task_id)
                    if status in ("done", "failed"):
                        self._trigger(st, f"task_{status}", now)
        elif "error" in kind.split(".")[-1]:
            self._trigger(st, "error", now)

    def seed_task(self, cid: str, task_id: str, owner: str | None, now: float) -> None:
        """An active task known from before (the task graph at start-up): open work to watch."""
        st = self.state(cid, now)
        st.open_tasks[task_id] = owner
        st.task_seen.setdefault(task_id, now)

    def heartbeat(self, cid: str, task_id: str | None, now: float) -> None:
        st = self.state(cid, now)
        self._active(st, now)
        if task_id:
            st.task_seen[task_id] = now
            st.stalled.discard(task_id)

    def _active(self, st: ConversationState, now: float) -> None:
        st.last_activity = now
        st.idle_strikes = 0
        st.idle_due = now + self.idle_timeout_s

    def _trigger(self, st: ConversationState, reason: str, now: float) -> None:
        st.pending.add(reason)
        st.last_trigger = now

    # --- decisions -------------------------------------------------------------------------------

    def due(self, now: float, has_grant: set[str]) -> list[Decision]:
        """Everything that should happen at ``now``; ``has_grant``: conversations holding a grant."""
        out = []
        for cid, st in self.conversations.items():
            decision = self._decide(cid, st, now, cid in has_grant)
            if decision is not None:
                st.last_decision = decision
                out.append(decision)
        return out

    def _decide(self, cid: str, st: ConversationState, now: float, granted: bool) -> Decision | None:
        stalled = self._newly_stalled(st, now)
        idle = st.open_work and now >= st.idle_due
        if idle:  # back off: each repeat waits twice as long as the last, up to max_backoff
            st.idle_strikes += 1
            st.idle_due = now + self.idle_timeout_s * min(2**st.idle_strikes, self.max_backoff)
        # Compared as deadlines, the same sums next_deadline() returns, so a tick at the
        # deadline always finds the work due.
        if st.pending and now >= st.last_trigger + self.debounce_s:
            reason = next(r for r in URGENCY if r in st.pending)
            if granted:  # the narrator already may speak: it will cover this too
                st.pending.clear()
                return Decision(cid, False, "grant outstanding", idle=idle, stalled=stalled)
            if reason != "user_message" and st.user_waiting_since is None and self._in_gap(st, now):
                if idle or stalled:
                    return Decision(cid, False, "min_gap", idle=idle, stalled=stalled)
                return None  # hold until the gap has passed
            st.pending.clear()
            return Decision(cid, True, reason, idle=idle, stalled=stalled)
        if idle:
            return Decision(cid, not granted, "idle", idle=True, stalled=stalled)
        if stalled:
            return Decision(cid, False, "stalled", stalled=stalled)
        return None

    def _in_gap(self, st: ConversationState, now: float) -> bool:
        return st.last_narration is not None and now < st.last_narration + self.min_gap_s

    def _newly_stalled(self, st: ConversationState, now: float) -> list[str]:
        found = [
            t
            for t, seen in st.task_seen.items()
            if t in st.open_tasks and t not in st.stalled and now >= seen + self.stall_timeout_s
        ]
        st.stalled.update(found)
        return sorted(found)

    def next_deadline(self) -> float | None:
        """The earliest monotonic time at which :meth:`due` may have something new to say."""
        times = []
        for st in self.conversations.values():
            if st.pending:
                t = st.last_trigger + self.debounce_s
                if st.user_waiting_since is None and st.last_narration is not None:
                    t = max(t, st.last_narration + self.min_gap_s)
                times.append(t)
            if st.open_work:
                times.append(st.idle_due)
            times += [
                seen + self.stall_timeout_s
                for t, seen in st.task_seen.items()
                if t in st.open_tasks and t not in st.stalled
            ]
        return min(times) if times else None
