"""Summaries that keep up with the log instead of re-reading it.

The daemon keeps a :class:`~sidecar.summary.state.SummaryState` for the conversations that
were summarized lately (an LRU). Every commit is folded in as it is published, in time
proportional to the new events; a state that missed events (written by another process)
catches up from its last seq, and one not yet built reads the log once.
"""

from __future__ import annotations

from collections import OrderedDict

import anyio

from sidecar.log.events import Event
from sidecar.log.store import EventStore
from sidecar.summary.state import SummaryState

MAX_STATES = 64


class SummaryCache:
    """Summary states by conversation; used only from the event loop."""

    def __init__(self, store: EventStore, max_states: int = MAX_STATES) -> None:
        self.store = store
        self.max_states = max_states
        self.states: OrderedDict[str, SummaryState] = OrderedDict()
        self.full_reads = 0

    def publish(self, events: list[Event]) -> None:
        """Fold newly committed events into the states that exist."""
        for ev in events:
            state = self.states.get(ev.conversation_id)
            if state is not None and ev.seq == state.last_seq + 1:
                state.add(ev)
            # a gap (another writer's events) is filled at the next use, from the log

    def forget(self, cid: str) -> None:
        """Drop ``cid``'s state: its conversation was deleted (and may start again at seq 1)."""
        self.states.pop(cid, None)

    async def state(self, cid: str) -> SummaryState:
        """The conversation's state, caught up with the log."""
        state = self.states.get(cid)
        if state is None:
            state = await anyio.to_thread.run_sync(self._build, cid)
            state = self.states.setdefault(cid, state)
            while len(self.states) > self.max_states:
                self.states.popitem(last=False)
        self.states.move_to_end(cid)
        since = state.last_seq + 1
        newer = await anyio.to_thread.run_sync(
            lambda: self.store.query(conversation_id=cid, from_seq=since, limit=None).events
        )
        for ev in newer:
            state.add(ev)  # idempotent by seq: commits published meanwhile are skipped
        return state

    def _build(self, cid: str) -> SummaryState:
        self.full_reads += 1
        state = SummaryState(cid)
        for ev in self.store.query(conversation_id=cid, limit=None).events:
            state.add(ev)
        return state
