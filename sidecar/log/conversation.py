"""What the writer knows about one conversation, and how it catches up with the disk.

Only the single writer (the commit thread) calls the mutating methods, always with
the active segment's exclusive flock held. Catching up covers everything that can happen
behind our back: another process appending, rotating, or crashing mid-line (a torn tail,
repaired here), and a hand edit (reloaded, and refused when it broke the log).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import structlog

from sidecar.errors import CorruptLogError
from sidecar.log.clocks import ClockState, writer_of
from sidecar.log.files import fsync, fsync_dir, open_regular, write_all
from sidecar.log.index import IdIndex
from sidecar.log.recent import Recent
from sidecar.log.segments import (
    DECODE_ERRORS,
    ArchivedSegment,
    ArchiveListing,
    LineHead,
    ScanHead,
    Source,
    active_path,
    close_source,
    head_decoder,
    heads_decoder,
    iter_lines_backward,
    line_end_before,
    open_segment,
    pread_exact,
    read_line_at,
    scan_head_decoder,
)

log = structlog.get_logger("sidecar.log")

_SCAN_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LogPaths:
    logs_dir: str
    archive_dir: str


class _Corrupt(Exception):
    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


@dataclass
class Conversation:
    """The writer's view of one conversation's log."""

    cid: str
    no: int
    paths: LogPaths
    index: IdIndex
    listing: ArchiveListing
    loaded: bool = False
    indexed: bool = False
    archived: list[ArchivedSegment] = field(default_factory=list)
    active_ident: tuple[int, int] | None = None
    active_size: int = 0
    active_first_seq: int = 1
    last_seq: int = 0
    last_ts: str = ""
    corrupt: str | None = None
    _corrupt_stamp: tuple[int, int, int, int] | None = None
    new_file: bool = False  # the active file appeared since the last commit: fsync its directory
    recent: Recent | None = None  # the newest events we wrote, for readers (see sidecar.log.recent)
    clocks: ClockState = field(default_factory=ClockState)  # known once the log was scanned (indexed)

    def __post_init__(self) -> None:
        self.path = active_path(self.paths.logs_dir, self.cid)  # refuses an id that is no id

    # --- catching up -----------------------------------------------------------------------

    def catch_up(self, fd: int, *, want_index: bool, st: os.stat_result | None = None) -> None:
        """Bring this state up to date with the locked active segment ``fd`` (``st``: its fstat)."""
        if st is None:
            st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        if ident != self.active_ident:
            self.new_file = True
        if self.corrupt is not None:
            if _stamp(st) == self._corrupt_stamp:
                return  # unchanged since we found the damage: keep refusing
            self.loaded = False
        if not self.loaded or (want_index and not self.indexed):
            self._load(fd, st, index=want_index or self.indexed)
        elif ident != self.active_ident:
            self._follow_rotation(fd, st)
        elif st.st_size > self.active_size:
            try:  # lines another process added: they may be damage, not events
                self._consume_active(fd, self.active_size, st.st_size)
            except _Corrupt as exc:
                self._mark_corrupt(fd, exc)
        elif st.st_size < self.active_size:
            self._load(fd, st, index=self.indexed)  # truncated behind our back

    def _load(self, fd: int, st: os.stat_result, *, index: bool) -> None:
        for attempt in range(3):
            try:
                self._load_once(fd, st, index=index)
                return
            except FileNotFoundError:  # retention or compression replaced a segment meanwhile: list again
                if attempt == 2:
                    raise

    def _load_once(self, fd: int, st: os.stat_result, *, index: bool) -> None:
        self.loaded, self.indexed = False, index
        self.archived = self.listing.get(self.cid, refresh=True)
        # Retention may have dropped the oldest segments: seqs go on from the last it dropped.
        self.last_seq, self.last_ts = self.listing.dropped_through(self.cid), ""
        self.clocks.clear()
        self.corrupt = self._corrupt_stamp = None
        self.active_ident, self.active_size = (st.st_dev, st.st_ino), 0
        try:
            if index:
                for seg in self.archived:
                    self._scan_archived(seg, 0)
            elif self.archived:
                self._tail_archived(self.archived[-1])
            self.active_first_seq = self.last_seq + 1
            self._consume_active(fd, 0, st.st_size)
        except _Corrupt as exc:
            self._mark_corrupt(fd, exc)
        self.loaded = True

    def _follow_rotation(self, fd: int, st: os.stat_result) -> None:
        """Another writer sealed the segment we knew; read what it added, then the new file."""
        archived = self.listing.get(self.cid, refresh=True)
        fresh = [seg for seg in archived if seg.last_seq > self.last_seq]
        try:
            for seg in fresh:
                if seg.first_seq == self.active_first_seq:
                    start = self.active_size
                elif seg.first_seq == self.last_seq + 1:
                    start = 0
                else:
                    raise _Corrupt(f"archived segment {seg.path} does not follow seq {self.last_seq}", 0)
                if self.indexed:
                    self._scan_archived(seg, start)
                else:
                    self._tail_archived(seg)
            self.archived = archived
            self.active_ident, self.active_size = (st.st_dev, st.st_ino), 0
            self.active_first_seq = self.last_seq + 1
            self._consume_active(fd, 0, st.st_size)
        except _Corrupt as exc:
            self._mark_corrupt(fd, exc)

    def _consume_active(self, fd: int, start: int, end: int) -> None:
        """Account for ``[start, end)`` of the active segment, repairing a torn tail."""
        good = line_end_before(fd, start, end)
        if self.indexed or start > 0:
            # Lines added since we last looked (by another process) are few: check each one.
            # Only a first look at an unindexed log trusts its newest line, for speed.
            bad_at = self._scan(fd, start, good, final=True)
            if bad_at is not None:
                good = bad_at
        else:
            good = self._learn_tail(fd, good)
        if good < end:
            self._repair_torn(fd, good, end)
        self.active_size = good

    # --- scanning --------------------------------------------------------------------------

    def _scan_archived(self, seg: ArchivedSegment, start: int) -> None:
        fd, end = _open_segment(seg)
        try:
            if self._scan(fd, start, end, final=False) is not None or line_end_before(fd, start, end) != end:
                raise _Corrupt(f"archived segment {seg.path} ends with a broken line", end)
        except OSError as exc:  # a compressed segment damaged inside
            raise _Corrupt(str(exc), 0) from None
        finally:
            close_source(fd)
        if self.last_seq != seg.last_seq:
            raise _Corrupt(f"{seg.path} ends at seq {self.last_seq}, its name says {seg.last_seq}", end)

    def _scan(self, fd: Source, start: int, end: int, *, final: bool) -> int | None:
        """Check every line of ``[start, end)`` (seqs and timestamps), indexing it if we index.

        Returns the offset of an unparseable *last* line when ``final`` (a torn append for
        the caller to cut off); any other bad line raises :class:`_Corrupt`.
        """
        for offset, heads, bad in _chunks_of_heads(fd, start, end):
            if heads:
                self._accept(heads, offset)
            if bad is not None:
                bad_offset, next_offset = bad
                if final and next_offset >= end:
                    return bad_offset
                raise _Corrupt(f"unparseable line at byte {bad_offset}", bad_offset)
        return None

    def _accept(self, heads: list[ScanHead], offset: int) -> None:
        first = self.last_seq + 1
        seqs = [h.seq for h in heads]
        if seqs != list(range(first, first + len(heads))):
            at = next(i for i, seq in enumerate(seqs) if seq != first + i)
            raise _Corrupt(f"seq gap: expected {first + at}, found {seqs[at]}", offset)
        stamps = [h.timestamp for h in heads]
        if stamps[0] < self.last_ts or any(a > b for a, b in zip(stamps, stamps[1:])):
            raise _Corrupt(f"timestamps go backwards near seq {first}", offset)
        if self.indexed:
            self.index.add_run([h.id for h in heads], self.no, first)
            observe = self.clocks.observe
            for h in heads:
                if h.caused_by:
                    self.index.add_children(h.caused_by, self.no, h.seq)
                if h.clock:
                    observe(writer_of(h.agent_id), h.clock)
        self.last_seq = seqs[-1]
        self.last_ts = stamps[-1]

    def _learn_tail(self, fd: int, end: int) -> int:
        """Without an index, learn the last seq from the newest line; returns where good bytes end.

        One unparseable newest line is a torn append (cut by the caller); a second is damage.
        """
        torn = False
        for line in iter_lines_backward(fd, 0, end):
            try:
                head = head_decoder.decode(line)
                break
            except DECODE_ERRORS:
                if torn:
                    raise _Corrupt(f"unparseable line before byte {end}", end) from None
                torn = True
                end -= len(line) + 1
        else:
            return 0
        first = _decode_head(read_line_at(fd, 0, end), 0)
        if first.seq != self.last_seq + 1:
            raise _Corrupt(f"active segment starts at seq {first.seq}, expected {self.last_seq + 1}", 0)
        self.last_seq, self.last_ts = head.seq, head.timestamp
        return end

    def _tail_archived(self, seg: ArchivedSegment) -> None:
        fd, end = _open_segment(seg)
        try:
            newest = next(iter_lines_backward(fd, 0, end), b"")
        except OSError as exc:
            raise _Corrupt(str(exc), 0) from None
        finally:
            close_source(fd)
        head = _decode_head(newest, 0)
        if head.seq != seg.last_seq:
            raise _Corrupt(f"{seg.path} ends at seq {head.seq}, its name says {seg.last_seq}", 0)
        self.last_seq, self.last_ts = head.seq, head.timestamp

    # --- repair and refusal ----------------------------------------------------------------

    def _repair_torn(self, fd: int, good: int, end: int) -> None:
        """Keep the torn bytes in the archive, cut the segment back to its last good line."""
        torn = pread_exact(fd, end - good, good)
        name = f"{self.cid}.{good:012d}.{os.getpid()}.{_now_tag()}.torn"
        path = os.path.join(self.paths.archive_dir, name)
        tfd = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            write_all(tfd, torn)
            fsync(tfd)
        finally:
            os.close(tfd)
        fsync_dir(self.paths.archive_dir)
        os.ftruncate(fd, good)
        fsync(fd)
        log.warning(
            "log.torn_tail_repaired",
            conversation_id=self.cid,
            offset=good,
            bytes=len(torn),
            kept_in=path,
        )

    def _mark_corrupt(self, fd: int, exc: _Corrupt) -> None:
        self.corrupt = exc.reason
        self._corrupt_stamp = _stamp(os.fstat(fd))
        log.error("log.corrupt", conversation_id=self.cid, reason=exc.reason, offset=exc.offset)

    def refuse_if_corrupt(self) -> None:
        if self.corrupt is not None:
            raise CorruptLogError(
                f"conversation {self.cid!r} has a damaged log ({self.corrupt}); "
                "writes are refused until it is repaired",
                {"conversation_id": self.cid, "reason": self.corrupt},
            )


def _decode_head(line: bytes, offset: int) -> LineHead:
    try:
        return head_decoder.decode(line)
    except DECODE_ERRORS:
        raise _Corrupt(f"unparseable line at byte {offset}", offset) from None


def _open_segment(seg: ArchivedSegment) -> tuple[Source, int]:
    """An archived segment, opened for reading, and its size; one that is not a regular file,
    or a compressed one whose table is damaged, is damage."""
    try:
        return open_segment(seg.path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _Corrupt(str(exc), 0) from None


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _now_tag() -> str:
    return str(int.from_bytes(os.urandom(4), "big"))


def _chunks_of_heads(fd: Source, start: int, end: int) -> Iterator[tuple[int, list[ScanHead], tuple[int, int] | None]]:
    """``(offset, heads, bad)`` per chunk of whole lines; ``bad`` is the first unparseable line.

    The fast path decodes a chunk of lines as one JSON array; a chunk with a bad line is
    redone line by line to find it. Iteration stops after a bad line.
    """
    pos = start
    while pos < end:
        chunk = pread_exact(fd, min(_SCAN_CHUNK, end - pos), pos)
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:  # a line longer than the chunk: take it whole
            cut = read_line_at(fd, pos, end).__len__() + 1
            chunk = pread_exact(fd, cut, pos)
        body = chunk[:cut]
        try:
            heads = heads_decoder.decode(b"[" + body[:-1].replace(b"\n", b",") + b"]")
            yield pos, heads, None
        except DECODE_ERRORS:
            heads = []
            offset = pos
            for line in body[:-1].split(b"\n"):
                try:
                    heads.append(scan_head_decoder.decode(line))
                except DECODE_ERRORS:
                    yield pos, heads, (offset, offset + len(line) + 1)
                    return
                offset += len(line) + 1
            yield pos, heads, None  # pragma: no cover - the array failed, so some line must
        pos += cut
