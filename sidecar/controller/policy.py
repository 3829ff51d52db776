"""When the narrator may speak: the rules, as a pure state machine over events and time.

Nothing here sleeps, reads a clock or writes a file: :meth:`RulePolicy.observe` takes
events, :meth:`RulePolicy.due` says what should happen at a given monotonic time, and
:meth:`RulePolicy.next_deadline` when to ask again. The controller does the rest.

Cost does not grow with the number of conversations ever seen (contract §9): ``observe`` and
``heartbeat`` are O(1) per event; ``due`` looks only at the conversations touched since the
last call and those whose deadline has come (a heap of per-conversation deadlines), so a tick
costs O((changed + due) · log n); a conversation with nothing open is forgotten once it has
been quiet for ``retain_s``, or least recently active first beyond ``max_conversations``.

Event data is whatever some client wrote: nothing here assumes its shape.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from sidecar.log.events import Event
from sidecar.tasks.model import ACTIVE, TASK_EVENT_TYPES

# Triggers, most urgent first: the reason a decision gives is the most urgent one pending.
URGENCY = ("user_message", "error", "task_failed", "task_done")
# Our own output is not activity (a task.stalled report is no sign of life from the task).
OWN_TYPES = ("controller.", "watchdog.", "narrator.delta", "task.stalled")
# The chat itself: only chat.user_message and narrator.say can write these with visibility
# "user" (log.append refuses it), so only then are they the user waiting, or answered.
CHAT_VISIBILITY = "user"
MAX_LABEL = 256  # as the event schema's agent_id and task_id


def _label(value: object) -> str | None:
    """``value`` if it can stand as a task id or agent id in an event we write, else None."""
    if isinstance(value, str) and 0 < len(value) <= MAX_LABEL:
        return value
    return None


@dataclass
class Decision:
    """What the controller should do for one conversation now."""

    conversation_id: str
    speak_now: bool
    reason: str
    idle: bool = False  # also write watchdog.idle
    stalled: list[str] = field(default_factory=list)  # tasks newly found stalled


@dataclass(eq=False)
class ConversationState:
    last_activity: float
    idle_due: float  # when the watchdog speaks up, if there is open work and no activity
    user_waiting_since: float | None = None
    last_narration: float | None = None
    open_tasks: dict[str, str | None] = field(default_factory=dict)  # task id -> owner
    task_seen: dict[str, float] = field(default_factory=dict)  # open task id -> last sign of life
    stalled: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)
    last_trigger: float = 0.0
    idle_strikes: int = 0
    last_decision: Decision | None = None
    playbook: str | None = None  # the playbook of the latest error or failure since the last decision
    last_playbook: str | None = None  # the one the last decision carried
    # Scheduling (see RulePolicy.due): the time of this state's live entry in the policy's
    # heap, when it was last decided, and a min-heap of (seen, task) for the stall check, with
    # at most one entry per task in ``queued`` (stale entries are repaired when they surface).
    scheduled: float | None = None
    decided_at: float = float("-inf")
    stall_queue: list[tuple[float, str]] = field(default_factory=list)
    queued: set[str] = field(default_factory=set)

    @property
    def open_work(self) -> bool:
        return bool(self.open_tasks) or self.user_waiting_since is not None

    @property
    def evictable(self) -> bool:
        """Nothing here the rules still need: no open work, no decision pending."""
        return not self.open_tasks and self.user_waiting_since is None and not self.pending


class RulePolicy:
    """The default policy: needs no LLM.

    - A user message waiting for an answer: speak as soon as the burst settles.
    - A task done or failed, or an error: speak, but keep ``min_gap_s`` between turns.
    - Bursts settle after ``debounce_s`` without a new trigger: ten events, one decision.
    - Open work with no event and no heartbeat for ``idle_timeout_s``: ``watchdog.idle`` and
      a decision to speak; each repeat waits twice as long (up to 8x).
    - A task with no sign of life from its owner for ``stall_timeout_s``: reported stalled.
    """

    def __init__(
        self,
        *,
        min_gap_s: float,
        idle_timeout_s: float,
        debounce_s: float = 0.05,
        stall_timeout_s: float | None = None,
        max_backoff: int = 8,
        retain_s: float = 600.0,
        max_conversations: int = 10_000,
    ) -> None:
        self.conversations: dict[str, ConversationState] = {}
        self._heap: list[tuple[float, str]] = []  # (deadline, conversation), stale entries skipped
        self._dirty: dict[str, None] = {}  # touched since the last due(): to be rescheduled
        self._recent: OrderedDict[str, None] = OrderedDict()  # eviction candidates, least recent first
        self.min_gap_s = min_gap_s
        self.idle_timeout_s = idle_timeout_s
        self.debounce_s = debounce_s
        self.stall_timeout_s = stall_timeout_s if stall_timeout_s is not None else 2 * idle_timeout_s
        self.max_backoff = max_backoff
        self.retain_s = retain_s
        self.max_conversations = max_conversations
        self.visited = 0  # conversation states the last due() looked at: the cost of a tick
        self.visited_total = 0
        self.evicted_total = 0

    @property
    def min_gap_s(self) -> float:
        return self._min_gap_s

    @min_gap_s.setter
    def min_gap_s(self, value: float) -> None:
        """A reload may shorten the gap: deadlines that waited for it are computed again."""
        self._min_gap_s = value
        self._dirty.update(dict.fromkeys(self.conversations))

    def state(self, cid: str, now: float) -> ConversationState:
        """The conversation's state, made on first sight and marked for rescheduling."""
        st = self.conversations.get(cid)
        if st is None:
            st = self.conversations[cid] = ConversationState(last_activity=now, idle_due=now + self.idle_timeout_s)
        self._dirty[cid] = None
        return st

    # --- input -----------------------------------------------------------------------------------

    def observe(self, event: Event, now: float) -> None:
        """Take in one event; O(1), and no shape of ``event.data`` makes it raise."""
        kind = event.type
        if kind.startswith(OWN_TYPES):
            return
        cid = event.conversation_id
        st = self.state(cid, now)
        self._active(st, now)
        self._recent[cid] = None
        self._recent.move_to_end(cid)
        event_task = _label(event.task_id)
        if event_task is not None and event_task in st.open_tasks:
            self._seen(st, event_task, now)
        chat = event.visibility == CHAT_VISIBILITY
        if kind == "user.message" and chat:
            if st.user_waiting_since is None:
                st.user_waiting_since = now
            self._trigger(st, "user_message", now)
        elif kind == "narrator.message" and chat:
            st.user_waiting_since = None
            st.last_narration = now
        elif kind in TASK_EVENT_TYPES:
            data = event.data if isinstance(event.data, dict) else {}
            task: Any = data.get("task")
            if not isinstance(task, dict):
                return
            task_id, status = _label(task.get("id")) or event_task, task.get("status")
            if task_id is None or not isinstance(status, str):
                return
            if status in ACTIVE:
                st.open_tasks[task_id] = _label(task.get("owner"))
                if task_id not in st.task_seen:
                    self._seen(st, task_id, now)
            else:
                st.open_tasks.pop(task_id, None)
                st.task_seen.pop(task_id, None)
                st.stalled.discard(task_id)
                if status in ("done", "failed"):
                    self._trigger(st, f"task_{status}", now)
        elif "error" in kind.rpartition(".")[2]:
            self._trigger(st, "error", now)

    def failure(self, cid: str, now: float) -> ConversationState:
        """A failure an error playbook names (a timeout, a rate limit, a lost lease...), of
        whatever event type: a decision is due, as after an error. One already pending (a
        task failed, the user asked) keeps its reason."""
        st = self.state(cid, now)
        if not st.pending:
            self._trigger(st, "error", now)
        return st

    def seed_task(self, cid: str, task_id: str, owner: str | None, now: float) -> None:
        """An active task known from before (the task graph at start-up): open work to watch."""
        task = _label(task_id)
        if task is None:
            return
        st = self.state(cid, now)
        st.open_tasks[task] = _label(owner)
        if task not in st.task_seen:
            self._seen(st, task, now)

    def heartbeat(self, cid: str, task_id: str | None, now: float) -> None:
        """An agent is alive. It matters only where there is open work, so it never makes state:
        heartbeats on any number of unknown conversations cost nothing to keep."""
        st = self.conversations.get(cid)
        if st is None or not st.open_work:
            return
        self._active(st, now)  # ends any back-off: the idle deadline may move earlier
        earlier = st.scheduled is None or st.idle_due < st.scheduled
        task = _label(task_id)
        if task is not None and task in st.open_tasks:
            earlier = earlier or task in st.stalled  # its stall deadline is back
            self._seen(st, task, now)
        if earlier:  # else the entry already in the heap comes first: nothing to reschedule
            self._dirty[cid] = None

    def taken_over(self, cid: str, now: float) -> None:
        """This controller now speaks for ``cid`` in place of one that stopped (the jetstream
        backend): a user still waiting is a trigger again, since the decision that was due
        may have died with the other daemon."""
        st = self.conversations.get(cid)
        if st is not None and st.user_waiting_since is not None:
            self._trigger(st, "user_message", now)
            self._dirty[cid] = None

    def _active(self, st: ConversationState, now: float) -> None:
        st.last_activity = now
        st.idle_strikes = 0
        st.idle_due = now + self.idle_timeout_s

    def _trigger(self, st: ConversationState, reason: str, now: float) -> None:
        st.pending.add(reason)
        st.last_trigger = now

    def _seen(self, st: ConversationState, task: str, now: float) -> None:
        """A sign of life from an open task; queues it for the stall check if it is not queued."""
        st.task_seen[task] = now
        st.stalled.discard(task)
        if task not in st.queued:
            heapq.heappush(st.stall_queue, (now, task))
            st.queued.add(task)

    # --- decisions -------------------------------------------------------------------------------

    def due(self, now: float, has_grant: Container[str] = frozenset()) -> list[Decision]:
        """Everything that should happen at ``now``; ``has_grant``: conversations holding a grant.

        Visits the conversations touched since the last call (to schedule them) and those
        whose deadline has come (to decide), then forgets quiet ones; ``self.visited`` counts
        them. A conversation not visited would have had nothing to say.
        """
        visited = self._flush()
        out: list[Decision] = []
        decided: list[tuple[str, ConversationState]] = []
        heap, conversations = self._heap, self.conversations
        while heap and heap[0][0] <= now:
            t, cid = heapq.heappop(heap)
            st = conversations.get(cid)
            if st is None or st.scheduled != t:
                continue  # stale: the conversation was forgotten or rescheduled earlier
            st.scheduled = None
            visited += 1
            decision = self._decide(cid, st, now, cid in has_grant)
            st.decided_at = now
            if decision is not None:
                st.last_decision = decision
                out.append(decision)
            decided.append((cid, st))
        for cid, st in decided:  # after the loop: nothing is decided twice in one call
            self._schedule(cid, st)
            if st.evictable and cid not in self._recent:
                self._recent[cid] = None
        visited += self._evict(now, has_grant)
        if len(heap) > 2 * len(conversations) + 1024:  # mostly stale: rebuild, amortized O(1)
            self._heap = [(st.scheduled, c) for c, st in conversations.items() if st.scheduled is not None]
            heapq.heapify(self._heap)
        self.visited = visited
        self.visited_total += visited
        return out

    def _flush(self) -> int:
        """Schedule every conversation touched since the last call; how many there were."""
        dirty, self._dirty = self._dirty, {}
        for cid in dirty:
            st = self.conversations.get(cid)
            if st is not None:
                self._schedule(cid, st)
        return len(dirty)

    def _schedule(self, cid: str, st: ConversationState) -> None:
        """Make sure the heap holds an entry no later than the state's next deadline.

        A later deadline leaves the earlier entry in place: waking early finds nothing and
        reschedules, which is cheaper than a heap entry for every event."""
        deadline = self._deadline(st)
        if deadline is not None and (st.scheduled is None or deadline < st.scheduled):
            st.scheduled = deadline
            heapq.heappush(self._heap, (deadline, cid))

    def _deadline(self, st: ConversationState) -> float | None:
        """The earliest time :meth:`_decide` may return something for this state: the same
        sums it compares, so a tick at the deadline always finds the work due."""
        times: list[float] = []
        if st.pending:
            settle = st.last_trigger + self.debounce_s
            # Decided at the settle time first (a grant outstanding clears it); held for the
            # gap only after that.
            if st.decided_at >= settle and self._held(st):
                assert st.last_narration is not None
                settle = max(settle, st.last_narration + self.min_gap_s)
            times.append(settle)
        if st.open_work:
            times.append(st.idle_due)
        stall = self._next_stall(st)
        if stall is not None:
            times.append(stall)
        return min(times) if times else None

    def _decide(self, cid: str, st: ConversationState, now: float, granted: bool) -> Decision | None:
        stalled = self._newly_stalled(st, now)
        idle = st.open_work and now >= st.idle_due
        if idle:  # back off: each repeat waits twice as long as the last, up to max_backoff
            st.idle_strikes += 1
            st.idle_due = now + self.idle_timeout_s * min(2**st.idle_strikes, self.max_backoff)
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

    def _held(self, st: ConversationState) -> bool:
        """Whether the pending trigger waits for ``min_gap_s`` after the last narration."""
        if st.last_narration is None or st.user_waiting_since is not None:
            return False
        return next(r for r in URGENCY if r in st.pending) != "user_message"

    def _in_gap(self, st: ConversationState, now: float) -> bool:
        return st.last_narration is not None and now < st.last_narration + self.min_gap_s

    def _next_stall(self, st: ConversationState) -> float | None:
        """When the next open, unstalled task falls silent too long; repairs stale queue heads."""
        queue = st.stall_queue
        while queue:
            seen, task = queue[0]
            if task not in st.open_tasks or task in st.stalled:
                heapq.heappop(queue)
                st.queued.discard(task)
                continue
            latest = st.task_seen.get(task, seen)
            if latest > seen:
                heapq.heapreplace(queue, (latest, task))
                continue
            return seen + self.stall_timeout_s
        return None

    def _newly_stalled(self, st: ConversationState, now: float) -> list[str]:
        found = []
        while (deadline := self._next_stall(st)) is not None and now >= deadline:
            _, task = heapq.heappop(st.stall_queue)
            st.queued.discard(task)
            st.stalled.add(task)
            found.append(task)
        return sorted(found)

    def _evict(self, now: float, has_grant: Container[str]) -> int:
        """Forget conversations with nothing open once quiet for ``retain_s`` (never sooner
        than ``min_gap_s``, which they may still need), or least recently active first while
        there are more than ``max_conversations``; one holding a grant, or decided in this very
        call (the controller still reads it), is kept. How many states were looked at."""
        recent, conversations = self._recent, self.conversations
        keep_s = max(self.retain_s, self.min_gap_s)
        looked = 0
        for _ in range(len(recent)):  # at most one pass
            cid = next(iter(recent))
            st = conversations.get(cid)
            over = len(conversations) > self.max_conversations
            if st is not None and not over and now - st.last_activity < keep_s:
                break  # the rest are more recent
            looked += 1
            if st is None or not st.evictable:  # back in line once it is quiet again
                del recent[cid]
            elif cid in has_grant or st.decided_at >= now:  # a grant, or a decision just made: kept
                recent.move_to_end(cid)
            else:
                del recent[cid]
                del conversations[cid]
                self.evicted_total += 1
        return looked

    def next_deadline(self) -> float | None:
        """The earliest monotonic time at which :meth:`due` may have something new to say
        (possibly a little early: waking finds nothing and asks again)."""
        self._flush()
        heap = self._heap
        while heap:
            t, cid = heap[0]
            st = self.conversations.get(cid)
            if st is not None and st.scheduled == t:
                return t
            heapq.heappop(heap)
        return None
