"""The newest events of a conversation's active segment, kept in memory by the writer that
wrote them, so that ``tail`` and ``get`` of recent events need no file read.

A :class:`Recent` is a view of the file at one moment: its identity and size then, and the
events that end it. It is served only while the file on disk is still that file at that
size (one ``stat``), so another process's append, a rotation, a truncation or an outside
edit that changes the size sends the reader to the file as before. The writer replaces the
view after each commit (one attribute store, so a reader on another thread sees the old
view or the new one, never half of one); the list behind it is only ever appended to, and
a view reads no further than its own ``count``.

Memory is bounded whatever clients write: a view keeps at most ``2 * KEEP`` events and
``2 * KEEP_BYTES`` bytes of lines (trimmed back to ``KEEP`` and ``KEEP_BYTES`` when it
passes either), and only the ``VIEWS`` conversations most recently written or read hold
one (:class:`Views`).
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from sidecar.log.events import Event

KEEP = 256  # events a view keeps, when they fit in KEEP_BYTES; tail limits above go to the file
KEEP_BYTES = 256 * 1024  # bytes of lines a view keeps
VIEWS = 32  # conversations that hold a view at once


@dataclass(frozen=True, slots=True)
class Recent:
    ident: tuple[int, int]  # (st_dev, st_ino) of the active segment
    size: int  # its size when the view was made
    events: list[Event]  # events[:count] end the file, oldest first
    starts: list[int]  # where each of those events' line starts in the file
    count: int
    whole: bool  # events[0] is the conversation's first event: nothing older exists

    def extended(
        self, ident: tuple[int, int], old_size: int, new_size: int, added: list[Event], lengths: list[int]
    ) -> Recent:
        """The view after appending ``added`` (lines of ``lengths`` bytes) to a file that was
        ``old_size`` bytes: this view grown, when it ended that very file; else a new one."""
        if ident == self.ident and old_size == self.size and self.count == len(self.events):
            return _grow(ident, new_size, self.events, self.starts, self.whole, old_size, added, lengths)
        return fresh(ident, old_size, new_size, added, lengths)

    def newest(self, path: str, limit: int, max_bytes: int | None) -> list[Event] | None:
        """The newest ``limit`` events, oldest first, if this view can answer for the file at
        ``path`` as it is now; ``None`` when only the file can (read it then)."""
        if not self.count or (limit > self.count and not self.whole):
            return None
        first = max(0, self.count - limit)
        if max_bytes is not None and self.size - self.starts[first] > max_bytes:
            return None  # a page cut short by bytes: the file path knows where
        if not self.current(path):
            return None
        return self.events[first : self.count]

    def event_at_seq(self, path: str, seq: int) -> Event | None:
        """The event holding ``seq``, if this view has it and still answers for ``path``."""
        event = self.event_at(seq)
        return event if event is not None and self.current(path) else None

    def event_at(self, seq: int) -> Event | None:
        """The event holding ``seq``, if this view has it: for the writer, who knows the file
        is as the view says (it holds the lock and compares :attr:`ident` and :attr:`size`)."""
        if not self.count:
            return None
        i = seq - self.events[0].seq
        if not 0 <= i < self.count:
            return None
        event = self.events[i]
        return event if event.seq == seq else None

    def current(self, path: str) -> bool:
        """Whether the file at ``path`` is still this view's file, at this view's size."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.ident and st.st_size == self.size


def fresh(ident: tuple[int, int], old_size: int, new_size: int, added: list[Event], lengths: list[int]) -> Recent:
    """A view of just what was appended (it ends the file: the writer held its lock)."""
    return _grow(ident, new_size, [], [], old_size == 0 and bool(added) and added[0].seq == 1, old_size, added, lengths)


def _grow(
    ident: tuple[int, int],
    new_size: int,
    events: list[Event],
    starts: list[int],
    whole: bool,
    old_size: int,
    added: list[Event],
    lengths: list[int],
) -> Recent:
    at = old_size
    for length in lengths:
        starts.append(at)
        at += length
    events.extend(added)
    n = len(events)
    if n > 2 * KEEP or new_size - starts[0] > 2 * KEEP_BYTES:  # fresh lists: older views keep theirs
        cut = max(n - KEEP, bisect.bisect_left(starts, new_size - KEEP_BYTES))
        events, starts, whole = events[cut:], starts[cut:], False
    return Recent(ident, new_size, events, starts, len(events), whole)


class Holder(Protocol):
    """What holds a view: the writer's state of one conversation."""

    cid: str
    recent: Recent | None


class Views:
    """Which conversations hold a view: the ``limit`` most recently written or read. The
    writer's thread and readers' threads both set views, so the order is kept under a lock."""

    def __init__(self, limit: int = VIEWS) -> None:
        self.limit = limit
        self._held: OrderedDict[str, Holder] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, holder: Holder, view: Recent) -> None:
        with self._lock:
            holder.recent = view
            self._held[holder.cid] = holder
            self._held.move_to_end(holder.cid)
            while len(self._held) > self.limit:
                _, dropped = self._held.popitem(last=False)
                dropped.recent = None

    def drop(self, cid: str) -> None:
        """Forget ``cid``'s view (its conversation was deleted)."""
        with self._lock:
            holder = self._held.pop(cid, None)
            if holder is not None:
                holder.recent = None
