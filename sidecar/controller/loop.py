"""The controller: watches the event stream, decides who speaks when, and says so in the log.

The decisions come from a policy (:class:`~sidecar.controller.policy.RulePolicy`); this
module turns them into grants and events. All timekeeping goes through the injected clock:
:meth:`Controller.tick` does whatever is due *now*, so tests advance a manual clock and
tick, and only :meth:`Controller.run` waits in real time.

The controller must not die: a fault in one tick (a bug, a hostile event's data) is logged
with its traceback and the loop goes on after a short back-off; a fault with one decision
costs that decision only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio
import anyio.abc
import msgspec
import structlog

from sidecar.clock import Clock
from sidecar.controller.grants import Grant, GrantBook
from sidecar.controller.policy import OWN_TYPES, ConversationState, Decision, RulePolicy
from sidecar.errors import SidecarError
from sidecar.log.events import Event, NewEvent
from sidecar.playbooks.library import PlaybookLibrary

log = structlog.get_logger("sidecar.controller")

Emit = Callable[[list[NewEvent]], Awaitable[Any]]
SummaryRef = Callable[[str], Awaitable[str | None]]
# Asked before speaking (except to a waiting user): (conversation, rules' reason) -> (speak?, why).
# Any exception means "no opinion": the rules' decision stands.
Advisor = Callable[[str, str], Awaitable[tuple[bool, str]]]
Sleep = Callable[[float], Awaitable[None]]

GRANT_TYPES = frozenset({"controller.decision", "narrator.message"})  # what a grant book learns from
MAX_LISTED_TASKS = 100  # task ids named in one watchdog.idle: it must fit in one event


# What ``controller.status`` answers (no docstrings: they would show in rpc.discover).
class LastDecision(msgspec.Struct, kw_only=True):
    speak_now: bool
    reason: str
    playbook: str | None = None  # the error playbook it carried (playbooks.list)


class ControllerStatus(msgspec.Struct, kw_only=True):
    conversation_id: str
    gate: Literal["open", "closed"]
    grant_id: str | None
    expires_at: str | None
    reason: str
    idle_for_s: float | None
    user_waiting: bool
    open_tasks: list[str]
    stalled_tasks: list[str]
    last_decision: LastDecision | None


class _Outstanding:
    """The conversations holding a grant, asked one at a time: O(1) each, not a set of all."""

    def __init__(self, grants: GrantBook) -> None:
        self.grants = grants

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, str) and self.grants.outstanding(cid) is not None


class _Faults:
    """Logs each kind of fault once with its traceback, then only every power-of-two repeat,
    so a fault that persists cannot flood the log."""

    def __init__(self) -> None:
        self.count = 0
        self._seen: dict[tuple[str, str], int] = {}

    def report(self, what: str, exc: BaseException, **context: Any) -> None:
        self.count += 1
        key = (what, f"{type(exc).__name__}: {exc}"[:200])
        n = self._seen[key] = self._seen.get(key, 0) + 1
        if len(self._seen) > 1000:  # bounded: forget the kinds seen so far
            self._seen = {key: n}
        if n == 1:
            log.error(what, error=key[1], exc_info=exc, **context)
        elif n & (n - 1) == 0:
            log.error(what, error=key[1], repeats=n, **context)


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
        playbooks: PlaybookLibrary | None = None,
        *,
        acts_for: Callable[[str], Awaitable[bool]] | None = None,
        relay: Callable[[str, str | None], None] | None = None,
        fault_backoff_s: float = 0.05,
        max_fault_backoff_s: float = 2.0,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self.policy = policy
        self.grants = grants
        self.clock = clock
        self.emit = emit
        self.summary_ref = summary_ref
        self.advisor = advisor
        self.on_grant = on_grant
        self.playbooks = playbooks
        # With several daemons (jetstream): whether this one speaks for a conversation now (its
        # lease), and how a heartbeat reaches every daemon's watchdog. Unset: this one, alone.
        self.acts_for = acts_for
        self.relay = relay
        self.fault_backoff_s = fault_backoff_s
        self.max_fault_backoff_s = max_fault_backoff_s
        self._sleep = sleep
        self.faults = _Faults()
        self._wakeup = anyio.Event()
        self._advice: anyio.abc.TaskGroup | None = None  # where run() consults the LLM, apart from ticks

    # --- input -----------------------------------------------------------------------------------

    def observe(self, events: list[Event]) -> None:
        """Called in commit order from the event loop: must never raise into the publisher."""
        now = self.clock.monotonic()
        for event in events:
            try:
                if self.acts_for is not None and event.type in GRANT_TYPES:  # another daemon's grants
                    self.grants.learn(event)
                self.policy.observe(event, now)
                if self.playbooks is not None:
                    self._note_playbook(event, now)
            except Exception as exc:  # a bug: lose this event, never the ones after it
                self.faults.report("controller.observe_failed", exc, conversation_id=event.conversation_id)
        self._wakeup.set()

    def _note_playbook(self, event: Event, now: float) -> None:
        """A failure with a playbook: a decision follows, and the next one carries it. The
        controller's own events (``watchdog.idle``, ``task.stalled``) are left out: their
        playbook went on the decision written with them (:meth:`_carry_out`)."""
        assert self.playbooks is not None
        if event.type.startswith(OWN_TYPES):
            return
        playbook = self.playbooks.match(event)
        if playbook is not None:
            self.policy.failure(event.conversation_id, now).playbook = playbook.id

    def last_playbook(self, cid: str) -> str | None:
        """The playbook the last decision about ``cid`` carried, if any."""
        st = self.policy.conversations.get(cid)
        return st.last_playbook if st is not None else None

    def heartbeat(self, cid: str, task_id: str | None) -> None:
        if self.relay is not None:  # to every daemon, this one included (then heard())
            self.relay(cid, task_id)
        else:
            self.heard(cid, task_id)

    def heard(self, cid: str, task_id: str | None) -> None:
        """A heartbeat, from this daemon's clients or (jetstream) relayed from another's."""
        self.policy.heartbeat(cid, task_id, self.clock.monotonic())
        self._wakeup.set()

    def taken_over(self, cid: str) -> None:
        """This daemon now speaks for ``cid`` (its lease came from a daemon that stopped)."""
        self.policy.taken_over(cid, self.clock.monotonic())
        self._wakeup.set()

    # --- output ----------------------------------------------------------------------------------

    async def tick(self) -> list[Decision]:
        """Do what is due now: decisions, grants, watchdog and stall reports."""
        now = self.clock.monotonic()
        decisions = self.policy.due(now, _Outstanding(self.grants))
        events: list[NewEvent] = []
        issued: list[Grant] = []
        for d in decisions:
            st = self.policy.conversations[d.conversation_id]
            if not await self._acts_for(d.conversation_id):
                continue  # another daemon speaks for it: the same events made it decide the same
            if self._advice is not None and self._needs_advice(d):
                # Under run(), the LLM is asked on the side: however slow it is, the other
                # conversations' decisions (a waiting user's above all) go out on time.
                self._advice.start_soon(self._advised, d, st, now)
                continue
            try:
                events += await self._carry_out(d, st, now, issued, await self._ask(d))
            except Exception as exc:  # this decision is lost; the others stand
                self.faults.report("controller.decision_failed", exc, conversation_id=d.conversation_id)
        await self._publish(events, issued)
        return decisions

    async def _publish(self, events: list[NewEvent], issued: list[Grant]) -> None:
        if events:
            await self._emit(events)
        if self.on_grant is not None:
            for grant in issued:
                self.on_grant(grant)

    async def _acts_for(self, cid: str) -> bool:
        if self.acts_for is None:
            return True
        try:
            return await self.acts_for(cid)
        except Exception as exc:  # the lease cannot be checked: say nothing rather than twice
            self.faults.report("controller.lease_failed", exc, conversation_id=cid)
            return False

    def _needs_advice(self, d: Decision) -> bool:
        return d.speak_now and self.advisor is not None and d.reason != "user_message"

    async def _ask(self, d: Decision) -> dict[str, Any]:
        """The LLM's say on a decision to speak, as decision data (``{}``: not asked). A
        timeout or a malformed answer leaves the rules in charge."""
        if not self._needs_advice(d):
            return {}
        assert self.advisor is not None
        try:
            speak, why = await self.advisor(d.conversation_id, d.reason)
        except Exception as exc:
            log.warning("controller.llm_fallback", conversation_id=d.conversation_id, error=str(exc))
            return {"policy": "rules (llm failed)"}
        if not speak:
            d.speak_now = False
        return {"policy": "llm", "llm_reason": why}

    async def _advised(self, d: Decision, st: ConversationState, now: float) -> None:
        """A decision carried out once the LLM has had its say (a task of its own)."""
        issued: list[Grant] = []
        try:
            events = await self._carry_out(d, st, now, issued, await self._ask(d))
            await self._publish(events, issued)
        except Exception as exc:
            self.faults.report("controller.decision_failed", exc, conversation_id=d.conversation_id)

    async def _carry_out(
        self, d: Decision, st: ConversationState, now: float, issued: list[Grant], advice: dict[str, Any]
    ) -> list[NewEvent]:
        """One decision as grants and events."""
        events: list[NewEvent] = []
        data: dict[str, Any] = {"speak_now": d.speak_now, "reason": d.reason, "policy": "rules", **advice}
        failure_playbook, st.playbook = st.playbook, None  # taken now: a failure seen meanwhile waits its turn
        if d.speak_now:
            grant = self.grants.issue(d.conversation_id, d.reason)
            if grant is None:  # one outstanding grant per conversation, never two
                data.update(speak_now=False, reason="grant outstanding")
            else:
                data.update(grant_id=grant.grant_id, expires_at=grant.expires_at)
                if self.summary_ref is not None:
                    data["summary_ref"] = await self._summary_ref(d.conversation_id)
                issued.append(grant)
        if d.idle:
            open_tasks = sorted(st.open_tasks)
            idle_data: dict[str, Any] = {
                "idle_for_s": round(now - st.last_activity, 3),
                "open_tasks": open_tasks[:MAX_LISTED_TASKS],
                "user_waiting": st.user_waiting_since is not None,
            }
            if len(open_tasks) > MAX_LISTED_TASKS:
                idle_data["open_task_count"] = len(open_tasks)
            events.append(
                NewEvent(
                    conversation_id=d.conversation_id,
                    type="watchdog.idle",
                    visibility="status",
                    level="state",
                    data=idle_data,
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
        # A failure's playbook, else the one for what this decision reports (idle, stalled).
        st.last_playbook = failure_playbook or self._playbook_of(events)
        if st.last_playbook is not None:
            data["playbook"] = st.last_playbook
        events.append(
            NewEvent(conversation_id=d.conversation_id, type="controller.decision", level="decision", data=data)
        )
        return events

    def _playbook_of(self, events: list[NewEvent]) -> str | None:
        for event in events:
            playbook = self.playbooks.match(event) if self.playbooks is not None else None
            if playbook is not None:
                return playbook.id
        return None

    async def _summary_ref(self, cid: str) -> str | None:
        """The summary's ref, or None: a summary that cannot be rendered (say, data nested
        too deep) must not cost the waiting user the grant."""
        assert self.summary_ref is not None
        try:
            return await self.summary_ref(cid)
        except Exception as exc:
            self.faults.report("controller.summary_failed", exc, conversation_id=cid)
            return None

    async def _emit(self, events: list[NewEvent]) -> None:
        """All in one append; if that is refused, conversation by conversation, so one that
        cannot be written does not silence the others."""
        try:
            await self.emit(events)
            return
        except SidecarError as exc:
            log.error("controller.emit_failed", error=exc.message)
        by_cid: dict[str, list[NewEvent]] = {}
        for event in events:
            by_cid.setdefault(event.conversation_id, []).append(event)
        if len(by_cid) < 2:
            return
        for cid, group in by_cid.items():
            try:
                await self.emit(group)
            except SidecarError as exc:
                log.error("controller.emit_failed", conversation_id=cid, error=exc.message)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Tick whenever something arrives or something falls due; survive any fault."""
        async with anyio.create_task_group() as advice:
            self._advice = advice
            try:
                task_status.started()
                await self._loop()
            finally:
                self._advice = None

    async def _loop(self) -> None:
        backoff = 0.0
        while True:
            try:
                await self.tick()
                deadline = self.policy.next_deadline()
            except Exception as exc:  # cancellation is not an Exception: it still stops us
                self.faults.report("controller.tick_failed", exc)
                backoff = min(max(2 * backoff, self.fault_backoff_s), self.max_fault_backoff_s)
                await self._sleep(backoff)  # a fault that persists cannot spin
                continue
            backoff = 0.0
            timeout = None if deadline is None else max(0.0, deadline - self.clock.monotonic())
            with anyio.move_on_after(timeout):
                await self._wakeup.wait()
            self._wakeup = anyio.Event()

    # --- status ----------------------------------------------------------------------------------

    def status(self, cid: str) -> ControllerStatus:
        """The gate and why; a conversation forgotten while quiet reads as one never seen."""
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
        return ControllerStatus(
            conversation_id=cid,
            gate="open" if grant is not None else "closed",
            grant_id=grant.grant_id if grant else None,
            expires_at=grant.expires_at if grant else None,
            reason=reason,
            idle_for_s=round(now - st.last_activity, 3) if st else None,
            user_waiting=bool(st and st.user_waiting_since is not None),
            open_tasks=sorted(st.open_tasks) if st else [],
            stalled_tasks=sorted(st.stalled) if st else [],
            last_decision=(
                LastDecision(speak_now=last.speak_now, reason=last.reason, playbook=st.last_playbook)
                if st is not None and last is not None
                else None
            ),
        )
