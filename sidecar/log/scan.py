"""Queries over many conversations: merge in time order, page with a cursor.

Events come out in ``(timestamp, conversation_id, seq)`` order, which is seq order inside a
conversation (timestamps never decrease there) and a stable total order across them. The
cursor is that key of the last event returned, so paging is exact however the log grows.

A query never holds more snapshots open than its :class:`ReadBudget` allows: past that it
reads each conversation a small batch at a time, reopening it at the next seq, so thousands
of conversations cost descriptors like one (and the same page comes out).
"""

from __future__ import annotations

import errno
import heapq
import itertools
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import msgspec
import structlog

from sidecar.errors import CorruptLogError
from sidecar.log.events import Event, Page, decode_event
from sidecar.log.filter import Matcher, QueryFilter, SortKey, decode_cursor, encode_cursor
from sidecar.log.reader import Snapshot
from sidecar.log.segments import seq_of

log = structlog.get_logger("sidecar.log")


def decode_lines(lines: list[bytes], cid: str) -> list[Event]:
    """Decode lines read from a log, skipping (and reporting) any that do not parse."""
    out: list[Event] = []
    for line in lines:
        try:
            out.append(decode_event(line))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("log.bad_line_skipped", conversation_id=cid, error=str(exc), line=line[:200])
    return out


class ReadBudget:
    """How many snapshots the cross-conversation reads of one store may hold open together.

    A query takes one slot per conversation to keep them all open (the fast merge), all or
    none and without waiting, so two queries can never deadlock on slots; a query that gets
    none reads its conversations a batch at a time with one snapshot open (``refilled``)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._free = slots
        self._lock = threading.Lock()

    def try_take(self, n: int) -> bool:
        with self._lock:
            if n > self._free:
                return False
            self._free -= n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self._free += n


@dataclass
class QueryStats:
    """How cross-conversation queries were served (for tests and diagnostics)."""

    merged_open: int = 0  # queries served with every conversation open at once
    refilled: int = 0  # queries served a batch at a time under the descriptor budget
    snapshots: int = 0  # snapshots those queries opened


class _Plan:
    """Where each conversation's stream starts and which of its lines match."""

    def __init__(self, flt: QueryFilter, after: SortKey | None, start: str | None, strict: bool) -> None:
        self.strict = strict  # one conversation asked for: its errors are the answer
        self.after = after
        self.start = start
        self.end = flt.end
        self.from_seq = flt.from_seq
        self.match = Matcher(flt)

    def stream(
        self, snap: Snapshot, resume_seq: int | None = None, bound_seq: int | None = None
    ) -> Generator[tuple[SortKey, Event], None, None]:
        """``snap``'s matching events past the cursor, from ``resume_seq`` up to ``bound_seq``."""
        cid = snap.cid
        ts, seq = self.start, self.from_seq
        after = self.after
        if after is not None:
            a_ts, a_cid, a_seq = after
            if cid < a_cid:  # its events at the cursor's time sort before the cursor
                ts = max(ts or a_ts, a_ts + "\0")
            elif cid == a_cid:  # the cursor's own conversation goes on from the next seq
                seq = max(seq or 1, a_seq + 1)
        if resume_seq is not None:
            seq = max(seq or 1, resume_seq)
        match = self.match
        lines = snap.lines_from(timestamp=ts, until=self.end, seq=seq)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                return
            except (OSError, CorruptLogError) as exc:  # a segment that cannot be read
                skip_unreadable(cid, exc, self.strict)
                return
            if not match.maybe(line):
                continue
            for event in decode_lines([line], cid):
                if bound_seq is not None and event.seq > bound_seq:
                    return
                if match.exact(event) and (seq is None or event.seq >= seq):
                    key = (event.timestamp, cid, event.seq)
                    if after is None or key > after:
                        yield key, event


def run_query(
    flt: QueryFilter,
    cids: list[str],
    snapshot: Callable[[str], Snapshot],
    budget: ReadBudget | None = None,
    stats: QueryStats | None = None,
    max_bytes: int | None = None,
) -> Page:
    """One page of events matching ``flt`` across ``cids``, in time order.

    Holds every conversation open at once only when ``budget`` has a slot for each;
    otherwise at most one snapshot at a time, with the same answer. With ``max_bytes``, a
    page ends early (with a cursor) once its events would pass that many bytes encoded, so
    no page holds more than a reply may carry."""
    after = decode_cursor(flt.cursor) if flt.cursor else None
    start = flt.start
    if after is not None and (start is None or after[0] > start):
        start = after[0]
    if flt.end is not None and start is not None and start > flt.end:
        return Page(events=[])
    single = flt.conversation_id is not None
    if single:
        cids = [flt.conversation_id]  # type: ignore[list-item]
    plan = _Plan(flt, after, start, strict=single)
    limit = _Limit(flt.limit, max_bytes)
    stats = stats if stats is not None else QueryStats()
    if single or len(cids) <= 1 or budget is None:
        out, more = _merge_open(plan, cids, snapshot, limit, stats)
    elif budget.try_take(len(cids)):
        try:
            out, more = _merge_open(plan, cids, snapshot, limit, stats)
        finally:
            budget.give(len(cids))
    else:
        out, more = _merge_refilled(plan, cids, snapshot, limit, stats)
    cursor = None
    if more:
        last = out[-1]
        cursor = encode_cursor((last.timestamp, last.conversation_id, last.seq))
    return Page(events=out, next_cursor=cursor)


def seq_range(flt: QueryFilter, snap: Snapshot, through_seq: int, limit: int) -> list[Event]:
    """At most ``limit`` events of one conversation matching ``flt``, from its ``from_seq`` up
    to ``through_seq``: read from where ``from_seq`` is (a bisection), never past the bound.
    (A page of :func:`run_query` reads on to its limit, to the end of a long log.)"""
    out: list[Event] = []
    if limit <= 0:
        return out
    for _, event in _Plan(flt, None, flt.start, strict=True).stream(snap, bound_seq=through_seq):
        out.append(event)
        if len(out) >= limit:
            break
    return out


class _Limit:
    """When a page is full: ``count`` events, or (with ``max_bytes``) the events that fit."""

    __slots__ = ("count", "room")

    def __init__(self, count: int | None, max_bytes: int | None) -> None:
        self.count = count
        self.room = max_bytes

    def full(self, out: list[Event], event: Event) -> bool:
        """Whether ``event`` no longer fits after ``out`` (a page holds at least one)."""
        if self.count is not None and len(out) >= self.count:
            return True
        if self.room is not None:
            self.room -= len(_encoder.encode(event)) + 1
            return self.room < 0 and bool(out)
        return False


_encoder = msgspec.json.Encoder()


def _take(items: Iterator[tuple[SortKey, Event]], limit: _Limit) -> tuple[list[Event], bool]:
    """The events that fit in ``limit``, and whether there was one more."""
    out: list[Event] = []
    for _, event in items:
        if limit.full(out, event):
            return out, True
        out.append(event)
    return out, False


def _open(snapshot: Callable[[str], Snapshot], cid: str, strict: bool) -> Snapshot | None:
    """``cid``'s snapshot, or None when it cannot be read and ``strict`` is false."""
    try:
        return snapshot(cid)
    except (OSError, CorruptLogError) as exc:
        skip_unreadable(cid, exc, strict)
        return None


def skip_unreadable(cid: str, exc: OSError | CorruptLogError, strict: bool = False) -> None:
    """Across conversations, one whose files cannot be read (damaged, or not a regular
    file) is left out and logged rather than failing everyone's read; running out of
    descriptors or memory is never hidden."""
    if strict or (isinstance(exc, OSError) and exc.errno in _EXHAUSTED):
        raise exc
    log.warning("log.conversation_unreadable", conversation_id=cid, error=str(exc))


def _merge_open(
    plan: _Plan,
    cids: list[str],
    snapshot: Callable[[str], Snapshot],
    limit: _Limit,
    stats: QueryStats,
) -> tuple[list[Event], bool]:
    """Every conversation open at once, merged lazily: reads no more than the page needs."""
    stats.merged_open += 1
    snaps: list[Snapshot] = []
    try:
        for cid in cids:
            snap = _open(snapshot, cid, plan.strict)
            if snap is not None:
                snaps.append(snap)
        stats.snapshots += len(snaps)
        streams = [plan.stream(s) for s in snaps if not s.empty]
        return _take(heapq.merge(*streams, key=lambda item: item[0]), limit)
    finally:
        for s in snaps:
            s.close()


_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)
_FIRST_FILL = 16
_MAX_FILL = 4096


class _Source:
    """One conversation in a refilled merge: a buffer of its next events, and where to resume."""

    __slots__ = ("cid", "buf", "resume", "bound", "done", "size")

    def __init__(self, cid: str, size: int) -> None:
        self.cid = cid
        self.buf: deque[tuple[SortKey, Event]] = deque()
        self.resume: int | None = None  # the seq to go on from
        self.bound: int | None = None  # the last seq of the first look: later appends wait for the next page
        self.done = False
        self.size = size

    def fill(self, plan: _Plan, snapshot: Callable[[str], Snapshot], n: int, stats: QueryStats) -> None:
        """Read up to ``n`` more events with one snapshot, closed again before returning."""
        first = self.resume is None
        snap = _open(snapshot, self.cid, False)
        if snap is None:
            self.done = True
            return
        stats.snapshots += 1
        with snap:
            stream = plan.stream(snap, self.resume, self.bound)
            try:
                got = list(itertools.islice(stream, n))
            finally:
                stream.close()
            if len(got) < n:
                self.done = True
            elif first:
                self.bound = _last_seq(snap)
        self.buf.extend(got)
        if got:
            self.resume = got[-1][1].seq + 1


def _last_seq(snap: Snapshot) -> int | None:
    try:
        newest = snap.newest_lines(1)
        return seq_of(newest[0]) if newest else None
    except (msgspec.DecodeError, msgspec.ValidationError, CorruptLogError):
        return None  # a damaged newest line: no bound, as a snapshot held open would not have one


def _merge_refilled(
    plan: _Plan,
    cids: list[str],
    snapshot: Callable[[str], Snapshot],
    limit: _Limit,
    stats: QueryStats,
) -> tuple[list[Event], bool]:
    """The same merge with at most one snapshot open: each conversation is read a small
    batch at a time (growing as it proves busy, never past what the page still needs) and
    reopened at the next seq when its batch runs out."""
    stats.refilled += 1
    want = None if limit.count is None else limit.count + 1
    first = _FIRST_FILL if want is None else max(1, min(_FIRST_FILL, want // len(cids)))
    sources = [_Source(cid, first) for cid in cids]
    heap: list[tuple[SortKey, int]] = []
    for i, src in enumerate(sources):
        src.fill(plan, snapshot, first, stats)
        if src.buf:
            heap.append((src.buf[0][0], i))
    heapq.heapify(heap)
    out: list[Event] = []
    while heap:
        _, i = heap[0]
        src = sources[i]
        _, event = src.buf.popleft()
        if limit.full(out, event):
            return out, True
        out.append(event)
        if not src.buf and not src.done:
            src.size = min(src.size * 2, _MAX_FILL)
            n = src.size if want is None else max(1, min(src.size, want - len(out)))
            src.fill(plan, snapshot, n, stats)
        if src.buf:
            heapq.heapreplace(heap, (src.buf[0][0], i))
        else:
            heapq.heappop(heap)
    return out, False
