"""The controller: watches the event stream, decides who speaks when, and says so in the log.

The decisions come from a policy (:class:`~sidecar.controller.policy.RulePolicy`); this
module turns them into grants and events. All timekeeping goes through the injected clock:
:meth:`Controller.tick` does whatever is due *now*, so tests advance a manual clock and
tick, and only :meth:`Controller.run` waits in real time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog

from sidecar.clock import Clock
from sidecar.controller.grants import Grant, GrantBook
from sidecar.controller.policy import Decision, RulePolicy
from sidecar.errors import SidecarError
from sidecar.log.events import Event, NewEvent

log = structlog.get_logger("sidecar.controller")

Emit = Callable[[list[NewEvent]], Awaitable[Any]]
SummaryRef = Callable[[str], Awaitable[str | None]]
# Asked before speaking (except to a waiting user): (conversation, rules' reason) -> (speak?, why).
# Any exception means "no opinion": the rules' decision stands.
Advisor = Callable[[str, str], Awaitable[tuple[bool, str]]]


class Controller:
    def __init__(
        self,
        policy: RulePolicy,
        grants: GrantBook,
        clock: Clock,
        emit: Emit,
        summary_ref: SummaryRef | None = None,
        advisor: Advisor | None = None,
        on_grant: Callable[[Grant], None] | None = None,
    ) -> None:
        self.policy = policy
        self.grants = grants
        self.clock = clock
        self.emit = emit
        self.summary_ref = summary_ref
        self.advisor = advisor
        self.on_grant = on_grant
        self._wakeup = anyio.Event()

    # --- input -----------------------------------------------------------------------------------

    def observe(self, events: list[Event]) -> None:
        now = self.clock.monotonic()
        for event in events:
            self.policy.observe(event, now)
        self._wakeup.set()

    def heartbeat(self, cid: str, task_id: str | None) -> None:
        self.policy.heartbeat(cid, task_id, self.clock.monotonic())
        self._wakeup.set()

    # --- output ----------------------------------------------------------------------------------

    async def tick(self) -> list[Decision]:
        """Do what is due now: decisions, grants, watchdog and stall reports."""
        now = self.clock.monotonic()
        granted = {cid for cid in self.policy.conversations if self.grants.outstanding(cid) is not None}
        decisions = self.policy.due(now, granted)
        events: list[NewEvent] = []
        issued: list[Grant] = []
        for d in decisions:
            st = self.policy.conversations[d.conversation_id]
            data: dict[str, Any] = {"speak_now": d.speak_now, "reason": d.reason, "policy": "rules"}
            if d.speak_now and self.advisor is not None and d.reason != "user_message":
                try:
                    speak, why = await self.advisor(d.conversation_id, d.reason)
                    data.update(policy="llm", llm_reason=why)
                    if not speak:
                        data["speak_now"] = d.speak_now = False
                except Exception as exc:  # a timeout, a malformed answer: the rules decide
                    log.warning("controller.llm_fallback", conversation_id=d.conversation_id, error=str(exc))
                    data["policy"] = "rules (llm failed)"
            grant = None
            if d.speak_now:
                grant = self.grants.issue(d.conversation_id, d.reason)
                if grant is None:  # one outstanding grant per conversation, never two
                    data.update(speak_now=False, reason="grant outstanding")
                else:
                    data.update(grant_id=grant.grant_id, expires_at=grant.expires_at)
                if self.summary_ref is not None and grant is not None:
                    data["summary_ref"] = await self.summary_ref(d.conversation_id)
                if grant is not None:
                    issued.append(grant)
            if d.idle:
                idle_for = round(now - st.last_activity, 3)
                events.append(
                    NewEvent(
                        conversation_id=d.conversation_id,
                        type="watchdog.idle",
                        visibility="status",
                        level="state",
                        data={
                            "idle_for_s": idle_for,
                            "open_tasks": sorted(st.open_tasks),
                            "user_waiting": st.user_waiting_since is not None,
                        },
                    )
                )
            for task_id in d.stalled:
                events.append(
                    NewEvent(
                        conversation_id=d.conversation_id,
                        type="task.stalled",
                        visibility="status",
                        level="state",
                        task_id=task_id,
                        agent_id=st.open_tasks.get(task_id),
                        data={"silent_for_s": round(now - st.task_seen.get(task_id, now), 3)},
                    )
                )
            events.append(
                NewEvent(conversation_id=d.conversation_id, type="controller.decision", level="decision", data=data)
            )
        if events:
            try:
                await self.emit(events)
            except SidecarError as exc:
                log.error("controller.emit_failed", error=exc.message)
        if self.on_grant is not None:
            for grant in issued:
                self.on_grant(grant)
        return decisions

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Tick whenever something arrives or something falls due."""
        task_status.started()
        while True:
            await self.tick()
            deadline = self.policy.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.clock.monotonic())
            with anyio.move_on_after(timeout):
                await self._wakeup.wait()
            self._wakeup = anyio.Event()

    # --- status ----------------------------------------------------------------------------------

    def status(self, cid: str) -> dict[str, Any]:
        now = self.clock.monotonic()
        st = self.policy.conversations.get(cid)
        grant = self.grants.outstanding(cid)
        if grant is not None:
            reason = f"granted: {grant.reason}"
        elif st is None:
            reason = "nothing has happened here yet"
        elif st.pending:
            reason = "deciding: " + ", ".join(sorted(st.pending))
        else:
            reason = "nothing to say"
        last = st.last_decision if st else None
        return {
            "conversation_id": cid,
            "gate": "open" if grant is not None else "closed",
            "grant_id": grant.grant_id if grant else None,
            "expires_at": grant.expires_at if grant else None,
            "reason": reason,
            "idle_for_s": round(now - st.last_activity, 3) if st else None,
            "user_waiting": bool(st and st.user_waiting_since is not None),
            "open_tasks": sorted(st.open_tasks) if st else [],
            "stalled_tasks": sorted(st.stalled) if st else [],
            "last_decision": {"speak_now": last.speak_now, "reason": last.reason} if last else None,
        }
