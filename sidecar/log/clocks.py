"""Vector clocks: which events of a conversation happened before which (contract §14).

Every event carries ``clock``, a map from writer id (the event's ``agent_id``, else
``sidecar``) to a counter. The writer computes it as the element-wise maximum of the
writer's previous clock in the conversation and the clocks of the ``caused_by`` events found
in the same conversation, with the writer's own counter one past the highest it has reached.
So ``a`` happened before ``b`` exactly when ``a.clock <= b.clock`` entry by entry and they
differ: one comparison, no walk through the log. A clock has one entry per writer that took
part in the event's causal past, so clocks stay as small as the collaboration is.

Causes in other conversations are not merged: clocks order the events of one conversation
(``log.compare`` takes two of them), and a writer's counter counts its events in that
conversation alone.

Nothing here knows about files: :class:`ClockState` is what the log writer keeps per
conversation, fed from what it scans and what it writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from sidecar.errors import ConflictError, InvalidParams

DEFAULT_WRITER = "sidecar"
MAX_CLOCK_WRITERS = 1000  # entries a clock may have: the writers in one event's causal past

Clock = dict[str, int]
Order = Literal["before", "after", "concurrent", "equal"]


def writer_of(agent_id: str | None) -> str:
    """The writer id an event's clock counts it under."""
    return agent_id or DEFAULT_WRITER


def merge_into(into: Clock, other: Mapping[str, int]) -> None:
    """``into`` becomes the element-wise maximum of itself and ``other``."""
    for writer, n in other.items():
        if n > into.get(writer, 0):
            into[writer] = n


def compare(a: Mapping[str, int], b: Mapping[str, int]) -> Order:
    """How the event with clock ``a`` stands to the one with clock ``b``."""
    a_le = all(n <= b.get(w, 0) for w, n in a.items())
    b_le = all(n <= a.get(w, 0) for w, n in b.items())
    if a_le and b_le:
        return "equal"
    if a_le:
        return "before"
    if b_le:
        return "after"
    return "concurrent"


class ClockState:
    """What one conversation's clocks have reached: each writer's newest clock, and the
    highest counter each writer id has anywhere (which outlives the writer's own events when
    retention drops them, so a counter never goes back).

    An :meth:`overlay` reads through to its ``base`` and keeps its own changes apart: what a
    batch being built sees, taken in by :meth:`take` once it is durable. Plain dicts and one
    fallback lookup, since this runs for every event in the commit thread."""

    __slots__ = ("last", "high", "base")

    def __init__(self, base: ClockState | None = None) -> None:
        self.last: dict[str, Mapping[str, int]] = {}
        self.high: dict[str, int] = {}
        self.base = base

    def clear(self) -> None:
        self.last.clear()
        self.high.clear()

    def overlay(self) -> ClockState:
        return ClockState(self)

    def take(self, overlay: ClockState) -> None:
        """Take in the changes of an :meth:`overlay` of this state."""
        self.last.update(overlay.last)
        self.high.update(overlay.high)

    def last_of(self, writer: str) -> Mapping[str, int] | None:
        found = self.last.get(writer)
        if found is None and self.base is not None:
            found = self.base.last.get(writer)
        return found

    def high_of(self, writer: str) -> int:
        n = self.high.get(writer)
        if n is None:
            n = self.base.high.get(writer, 0) if self.base is not None else 0
        return n

    def observe(self, writer: str, clock: Mapping[str, int] | None) -> None:
        """Take in an event of ``writer`` that is now the newest in the conversation."""
        if not clock:
            return
        self.last[writer] = clock
        high = self.high
        for w, n in clock.items():
            if n > self.high_of(w):
                high[w] = n

    def next_clock(self, writer: str, causes: Iterable[Mapping[str, int]]) -> Clock:
        """The clock the sidecar gives ``writer``'s next event, caused by events with
        ``causes``; taken in as the writer's newest. Only the writer's own entry can pass
        what was reached: the others come from clocks already taken in."""
        base = self.base  # last_of and high_of, inlined: this is the commit thread's per-event path
        prev = self.last.get(writer)
        if prev is None and base is not None:
            prev = base.last.get(writer)
        clock: Clock = dict(prev) if prev else {}
        for cause in causes:
            merge_into(clock, cause)
        high = self.high.get(writer)
        if high is None:
            high = base.high.get(writer, 0) if base is not None else 0
        own = clock[writer] = high + 1
        if len(clock) > MAX_CLOCK_WRITERS:
            raise InvalidParams(
                f"this event's clock would have {len(clock)} writers, over the limit of {MAX_CLOCK_WRITERS}: "
                "it names causes from too many writers",
                {"field": "caused_by", "writers": len(clock), "max_writers": MAX_CLOCK_WRITERS},
            )
        self.last[writer] = clock
        self.high[writer] = own
        return clock

    def check_sent(self, writer: str, clock: Mapping[str, int], conversation_id: str) -> None:
        """A clock the writer sent must not go back: at least its previous clock in every
        entry, and past it in its own (else -32001, and nothing is written)."""
        prev = self.last_of(writer) or {}
        own = clock.get(writer, 0)
        floor = self.high_of(writer)
        behind = sorted(w for w, n in prev.items() if clock.get(w, 0) < n)
        if own <= floor or behind:
            reason = (
                f"its own counter {writer!r} is {own}, not past {floor}"
                if own <= floor
                else f"it is behind the writer's previous clock in {', '.join(map(repr, behind[:5]))}"
            )
            raise ConflictError(
                f"the clock sent for writer {writer!r} in conversation {conversation_id!r} goes back: {reason}",
                {
                    "conversation_id": conversation_id,
                    "writer": writer,
                    "previous": dict(prev),
                    "floor": floor,
                    "sent": dict(clock),
                },
            )
