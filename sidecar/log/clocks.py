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

from collections import ChainMap
from collections.abc import Iterable, Mapping, MutableMapping
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
    retention drops them, so a counter never goes back)."""

    __slots__ = ("last", "high")

    def __init__(
        self, last: MutableMapping[str, Mapping[str, int]] | None = None, high: MutableMapping[str, int] | None = None
    ) -> None:
        self.last: MutableMapping[str, Mapping[str, int]] = {} if last is None else last
        self.high: MutableMapping[str, int] = {} if high is None else high

    def clear(self) -> None:
        self.last.clear()
        self.high.clear()

    def overlay(self) -> ClockState:
        """A state that reads through to this one and keeps its own changes apart: what a
        batch being built sees, taken in by :meth:`take` only once it is durable."""
        return ClockState(ChainMap({}, self.last), ChainMap({}, self.high))

    def take(self, overlay: ClockState) -> None:
        """Take in the changes of an :meth:`overlay` of this state."""
        for mine, theirs in ((self.last, overlay.last), (self.high, overlay.high)):
            if isinstance(theirs, ChainMap):
                mine.update(theirs.maps[0])

    def observe(self, writer: str, clock: Mapping[str, int] | None) -> None:
        """Take in an event of ``writer`` that is now the newest in the conversation."""
        if not clock:
            return
        self.last[writer] = clock
        high = self.high
        for w, n in clock.items():
            if n > high.get(w, 0):
                high[w] = n

    def next_clock(self, writer: str, causes: Iterable[Mapping[str, int]]) -> Clock:
        """The clock the sidecar gives ``writer``'s next event, caused by events with ``causes``."""
        clock: Clock = dict(self.last.get(writer, ()))
        for cause in causes:
            merge_into(clock, cause)
        clock[writer] = self.high.get(writer, 0) + 1
        if len(clock) > MAX_CLOCK_WRITERS:
            raise InvalidParams(
                f"this event's clock would have {len(clock)} writers, over the limit of {MAX_CLOCK_WRITERS}: "
                "it names causes from too many writers",
                {"field": "caused_by", "writers": len(clock), "max_writers": MAX_CLOCK_WRITERS},
            )
        return clock

    def check_sent(self, writer: str, clock: Mapping[str, int], conversation_id: str) -> None:
        """A clock the writer sent must not go back: at least its previous clock in every
        entry, and past it in its own (else -32001, and nothing is written)."""
        prev = self.last.get(writer, {})
        own = clock.get(writer, 0)
        floor = self.high.get(writer, 0)
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
