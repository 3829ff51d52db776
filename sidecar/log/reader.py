"""Read views of one conversation: a consistent snapshot across archive and active segment.

A snapshot takes the shared lock only long enough to learn how many bytes are committed;
bytes below that never change, so the reading itself holds no lock and never stalls writers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from sidecar.datadir import UnsafePathError, check_regular, open_regular
from sidecar.errors import CorruptLogError
from sidecar.log.compressed import COMPRESSED_SUFFIX
from sidecar.log.events import Event
from sidecar.log.files import shared_lock
from sidecar.log.recent import Recent, fresh
from sidecar.log.segments import (
    DECODE_ERRORS,
    ArchiveListing,
    Source,
    active_path,
    bisect_lines,
    close_source,
    iter_lines,
    iter_lines_backward,
    line_end_before,
    line_with_seq,
    open_segment,
    pread,
    read_line_at,
    seq_of,
    timestamp_of,
)


@dataclass(slots=True)
class SegmentView:
    """One segment's readable bytes ``[0, end)``; ``first_seq`` is the seq of its first line.
    A compressed segment's ``end`` is learned when it is opened (from its seek table)."""

    path: str
    end: int
    first_seq: int
    src: Source | None = None
    ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the active segment
    whole: bool = False  # the active segment's bytes end exactly at ``end`` (no torn tail)


class Snapshot:
    """Every segment of a conversation as of one moment, oldest first. Use as a context manager."""

    def __init__(self, logs_dir: str, listing: ArchiveListing, cid: str, *, wait: bool = True) -> None:
        """``wait=False`` raises :class:`BlockingIOError` rather than wait for a writer's lock."""
        self.cid = cid
        self._listing = listing
        self.segments: list[SegmentView] = []
        active = self._open_active(active_path(logs_dir, cid), wait, cid)
        archived = listing.get(cid)
        if active is not None and active.first_seq == 0:  # damaged first line: assume it follows
            active.first_seq = archived[-1].last_seq + 1 if archived else listing.dropped_through(cid) + 1
        if active is not None and archived and archived[-1].last_seq + 1 != active.first_seq:
            archived = listing.get(cid, refresh=True)  # a rotation the cached listing missed
        for seg in archived:
            if active is not None and seg.first_seq >= active.first_seq:
                continue  # rotated after we opened the active file: we already hold its bytes
            if seg.compressed:
                self.segments.append(SegmentView(seg.path, -1, seg.first_seq))
                continue
            try:
                size = os.lstat(seg.path).st_size  # the open refuses a link by name
            except FileNotFoundError:
                continue
            self.segments.append(SegmentView(seg.path, size, seg.first_seq))
        if active is not None:
            self.segments.append(active)

    @staticmethod
    def _open_active(path: str, wait: bool, cid: str) -> SegmentView | None:
        try:
            fd = open_regular(path, os.O_RDONLY, check=False)  # checked on the fstat below
        except FileNotFoundError:
            return None
        except UnsafePathError as exc:
            raise _refused(cid, exc) from None
        try:
            with shared_lock(fd, wait=wait):
                st = os.fstat(fd)
                try:
                    check_regular(path, st)
                except UnsafePathError as exc:
                    raise _refused(cid, exc) from None
                end = line_end_before(fd, 0, st.st_size)
            if end == 0:  # empty: a fresh segment after a rotation, or a log yet to be written
                os.close(fd)
                return None
            try:
                first_seq = seq_of(read_line_at(fd, 0, end))
            except DECODE_ERRORS:
                first_seq = 0  # a damaged first line: read what we can, the writer refuses it
        except BaseException:
            os.close(fd)
            raise
        return SegmentView(path, end, first_seq, fd, (st.st_dev, st.st_ino), end == st.st_size)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for seg in self.segments:
            _close(seg)

    def _fd(self, seg: SegmentView) -> Source:
        """The segment's bytes, opened on first use. One that went away meanwhile was
        compressed (read the compressed copy) or dropped by retention (read as empty)."""
        if seg.src is None:
            try:
                seg.src, end = self._open(seg.path)
            except FileNotFoundError:
                try:
                    seg.src, end = self._open(seg.path + COMPRESSED_SUFFIX)
                except FileNotFoundError:
                    seg.src, end = _EMPTY, 0
            if seg.end < 0 or end < seg.end:
                seg.end = end
        return seg.src

    def _open(self, path: str) -> tuple[Source, int]:
        try:
            return open_segment(path)
        except FileNotFoundError:
            raise
        except OSError as exc:  # a link in its place, or a compressed segment damaged
            raise _refused(self.cid, exc) from None

    @property
    def empty(self) -> bool:
        return not self.segments

    def newest_lines(self, limit: int, max_bytes: int | None = None) -> list[bytes]:
        """Up to ``limit`` newest lines, oldest first, reading backwards: O(limit), not O(log).

        With ``max_bytes``, no more lines than fit in it (always at least one)."""
        out: list[bytes] = []
        room = max_bytes
        for seg in reversed(self.segments):
            for line in iter_lines_backward(self._fd(seg), 0, seg.end):
                if line.strip():
                    if room is not None:
                        room -= len(line) + 1
                        if room < 0 and out:
                            limit = len(out)
                            break
                    out.append(line)
                    if len(out) >= limit:
                        break
            if len(out) >= limit:
                break
        out.reverse()
        return out

    def recent_view(self, lines: list[bytes], events: list[Event]) -> Recent | None:
        """A :class:`Recent` of the active segment's newest ``lines`` (decoded as ``events``),
        if they are exactly its last lines, with nothing torn or skipped: checked against the
        bytes, since the lines were picked out around blank lines and damage."""
        active = self.segments[-1] if self.segments else None
        if active is None or active.ident is None or not active.whole or not lines or len(lines) != len(events):
            return None
        lengths = [len(line) + 1 for line in lines]
        start = active.end - sum(lengths)
        if start < 0:
            return None
        before = b"\n" if start > 0 else b""  # the byte before them ends the line before, if any
        got = pread(self._fd(active), active.end - start + len(before), start - len(before))
        if got != before + b"\n".join(lines) + b"\n":
            return None
        return fresh(active.ident, start, active.end, list(events), lengths)

    def _span(self, seg: SegmentView) -> tuple[str, str] | None:
        """A sealed segment's first and last timestamps (remembered by the listing: reading
        them costs a frame or two of a compressed segment); None when they cannot be read."""
        span = self._listing.spans.get(seg.path)
        if span is None:
            try:
                fd = self._fd(seg)
                first = read_line_at(fd, 0, seg.end)
                last = next(iter_lines_backward(fd, 0, seg.end), None)
                if not first or last is None:
                    return None
                span = (timestamp_of(first), timestamp_of(last))
            except DECODE_ERRORS:
                return None  # damaged where we looked: the search below reports it
            self._listing.spans[seg.path] = span
        return span

    def first_line(self) -> bytes | None:
        if not self.segments:
            return None
        seg = self.segments[0]
        return read_line_at(self._fd(seg), 0, seg.end)

    def line_at_seq(self, seq: int) -> bytes | None:
        """The line holding ``seq`` by binary search inside its segment."""
        for seg in reversed(self.segments):
            if seg.first_seq <= seq:
                return line_with_seq(self._fd(seg), seg.end, seq, seg.first_seq)
        return None

    def lines_from(
        self, *, timestamp: str | None = None, until: str | None = None, seq: int | None = None
    ) -> Iterator[bytes]:
        """Lines in seq order from the first with ``timestamp >=`` (and ``seq >=``) the given,
        up to ``until``."""
        for i, seg in enumerate(self.segments):
            sealed = i + 1 < len(self.segments)
            if seq is not None and sealed and self.segments[i + 1].first_seq <= seq:
                continue  # the whole segment is before ``seq``
            if sealed and (timestamp is not None or until is not None):
                span = self._span(seg)
                if span is not None and timestamp is not None and span[1] < timestamp:
                    _close(seg)
                    continue  # the whole segment is before the time asked for
                if span is not None and until is not None and span[0] > until:
                    return  # this one and every later one are after it
            fd = self._fd(seg)
            try:
                start = bisect_lines(fd, 0, seg.end, timestamp_of, timestamp) if timestamp else 0
                if seq is not None and seq > seg.first_seq:
                    start = max(start, bisect_lines(fd, 0, seg.end, seq_of, seq))
                stop = seg.end
                if until is not None:
                    # "~" sorts after every character of a timestamp: the first line past ``until``
                    stop = bisect_lines(fd, start, seg.end, timestamp_of, until + "~")
            except DECODE_ERRORS as exc:  # the search stepped on a blank or damaged line
                raise CorruptLogError(
                    f"conversation {self.cid!r} has a damaged line where a search by time or seq "
                    "looked; it is refused until repaired",
                    {"conversation_id": self.cid, "reason": str(exc)},
                ) from None
            for _, line in iter_lines(fd, start, stop):
                if line.strip():
                    yield line
            if i + 1 < len(self.segments):  # a sealed segment, read: never hold them all open
                _close(seg)


class _Empty:
    """What a segment retention dropped while we were reading reads as."""

    def pread(self, n: int, offset: int) -> bytes:
        return b""

    def close(self) -> None:
        pass


_EMPTY = _Empty()


def _close(seg: SegmentView) -> None:
    if seg.src is not None:
        close_source(seg.src)
        seg.src = None


def _refused(cid: str, exc: OSError) -> CorruptLogError:
    """A segment that is a symlink, a directory or a FIFO: this conversation is damaged."""
    return CorruptLogError(
        f"conversation {cid!r} has a damaged log: {exc}; it is refused until repaired",
        {"conversation_id": cid, "reason": str(exc)},
    )
