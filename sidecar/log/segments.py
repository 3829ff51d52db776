"""Segment files: where a conversation's lines live and how to read them without loading them.

A conversation is the archived segments ``archive/{cid}.{first:012d}-{last:012d}.jsonl``
(oldest first, so ``ls`` shows the order; ``.jsonl.zst`` when compressed, see
:mod:`sidecar.log.compressed`) followed by the active segment ``logs/{cid}.jsonl``.
Retention drops the oldest segments and leaves one empty marker,
``archive/{cid}.{first:012d}-{last:012d}.dropped``, naming every seq it dropped: so the seqs
that follow are known to be the first kept, not a gap, and are never given out again.

Every function here reads through a :data:`Source` (an fd, or a compressed segment read like
one) with byte bounds, so callers decide about locks and snapshots, and a query costs what it
returns, not what the file holds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import msgspec
import structlog

from sidecar.datadir import open_regular
from sidecar.errors import InvalidParams
from sidecar.log.compressed import COMPRESSED_SUFFIX, CompressedSegment
from sidecar.log.events import CONVERSATION_ID_PATTERN
from sidecar.log.files import Source, fsync_dir, pread, pread_exact

log = structlog.get_logger("sidecar.log")

SUFFIX = ".jsonl"
DROPPED_SUFFIX = ".dropped"
_ARCHIVE_RE = re.compile(r"(?P<cid>.+)\.(?P<first>\d{12})-(?P<last>\d{12})(?P<kind>\.jsonl|\.jsonl\.zst|\.dropped)")
_CID_RE = re.compile(CONVERSATION_ID_PATTERN)
# What decoding a line found on disk may raise: besides bad JSON and bad values, a line
# nested deeper than msgspec's limit raises RecursionError. Each is a damaged line.
DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)
_BLOCK = 64 * 1024
_PROBE = 4096

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class ArchivedSegment:
    """A sealed, immutable segment: its lines hold seqs ``first_seq..last_seq``."""

    path: str
    first_seq: int
    last_seq: int

    @property
    def compressed(self) -> bool:
        return self.path.endswith(COMPRESSED_SUFFIX)


def open_segment(path: str) -> tuple[Source, int]:
    """An archived segment opened for reading, and how many (plain) bytes it holds. A
    compressed one whose table is damaged raises :class:`~sidecar.log.compressed.CorruptSegment`
    (an ``OSError``), as a link in its place raises ``UnsafePathError``."""
    if path.endswith(COMPRESSED_SUFFIX):
        seg = CompressedSegment(path)
        return seg, seg.size
    fd = open_regular(path, os.O_RDONLY)
    return fd, os.fstat(fd).st_size


def close_source(src: Source) -> None:
    if isinstance(src, int):
        os.close(src)
    else:
        src.close()


class LineHead(msgspec.Struct):
    """The leading fields of a line: enough to index and to binary-search, cheap to decode."""

    id: str
    seq: int
    timestamp: str
    caused_by: list[str] = []


class ScanHead(LineHead):
    """What the writer learns from each line it scans: the head, and the clock's writer and
    value (see :mod:`sidecar.log.clocks`)."""

    agent_id: str | None = None
    clock: dict[str, int] = {}


head_decoder = msgspec.json.Decoder(LineHead)
scan_head_decoder = msgspec.json.Decoder(ScanHead)
heads_decoder = msgspec.json.Decoder(list[ScanHead])


def check_cid(cid: str) -> str:
    """``cid`` when it is a valid conversation id: the last guard before it names a file."""
    if not _CID_RE.match(cid):
        raise InvalidParams(f"invalid conversation_id {cid!r}", {"field": "conversation_id"})
    return cid


def active_path(logs_dir: str, cid: str) -> str:
    return os.path.join(logs_dir, check_cid(cid) + SUFFIX)


def archive_path(archive_dir: str, cid: str, first_seq: int, last_seq: int) -> str:
    return os.path.join(archive_dir, f"{check_cid(cid)}.{first_seq:012d}-{last_seq:012d}{SUFFIX}")


def dropped_path(archive_dir: str, cid: str, last_seq: int) -> str:
    return os.path.join(archive_dir, f"{check_cid(cid)}.{1:012d}-{last_seq:012d}{DROPPED_SUFFIX}")


def archive_files(archive_dir: str, *, warn: bool = False) -> list[tuple[os.DirEntry[str], re.Match[str]]]:
    """The archive's segments (plain or compressed) and drop markers, each with its name's
    parts: names checked again (a conversation id read back from a file name is not trusted),
    and only regular files (``warn``: log the others, a symlink or a directory in the way)."""
    out = []
    with os.scandir(archive_dir) as entries:
        for entry in entries:
            m = _ARCHIVE_RE.fullmatch(entry.name)
            if not m or not _CID_RE.match(m["cid"]):
                continue
            if not entry.is_file(follow_symlinks=False):
                if warn:
                    log.error("log.segment_refused", path=entry.path, reason="not a regular file (a symlink?)")
                continue
            out.append((entry, m))
    return out


def list_archive(archive_dir: str) -> tuple[dict[str, list[ArchivedSegment]], dict[str, int]]:
    """Every archived segment, grouped by conversation, oldest first; and for each
    conversation retention has touched, the last seq it dropped.

    Names are checked again (a conversation id read back from a file name is not trusted),
    and anything but a regular file (a symlink, a directory, a FIFO) is left out: its
    conversation then has a gap, which the writer refuses as damage. A segment stored both
    plain and compressed (compression was cut short after the compressed copy was complete)
    is read compressed; a segment at or below the drop marker is gone, whatever is left of it.
    """
    found: dict[str, dict[int, ArchivedSegment]] = {}
    dropped: dict[str, int] = {}
    for entry, m in archive_files(archive_dir, warn=True):
        cid, last = m["cid"], int(m["last"])
        if m["kind"] == DROPPED_SUFFIX:
            dropped[cid] = max(dropped.get(cid, 0), last)
            continue
        seg = ArchivedSegment(entry.path, int(m["first"]), last)
        mine = found.setdefault(cid, {})
        if seg.first_seq not in mine or seg.compressed:
            mine[seg.first_seq] = seg
    segments = {
        cid: sorted((s for s in by_first.values() if s.last_seq > dropped.get(cid, 0)), key=lambda s: s.first_seq)
        for cid, by_first in found.items()
    }
    return {cid: segs for cid, segs in segments.items() if segs}, dropped


def rotate(active: str, archive_dir: str, cid: str, first_seq: int, last_seq: int) -> ArchivedSegment:
    """Seal the active segment into the archive; both directories are fsync'd before return."""
    target = archive_path(archive_dir, cid, first_seq, last_seq)
    os.rename(active, target)
    fsync_dir(archive_dir)
    fsync_dir(os.path.dirname(active))
    return ArchivedSegment(target, first_seq, last_seq)


class ArchiveListing:
    """A cached :func:`list_archive`, refreshed when the directory changes or a reader asks."""

    def __init__(self, archive_dir: str) -> None:
        self._dir = archive_dir
        self._stamp: int | None = None
        self._by_cid: dict[str, list[ArchivedSegment]] = {}
        self._dropped: dict[str, int] = {}
        # Each sealed segment's first and last timestamps, learned by readers (a segment never
        # changes; the cache goes whenever the directory does, so a name used again is read again).
        self.spans: dict[str, tuple[str, str]] = {}

    def get(self, cid: str, *, refresh: bool = False) -> list[ArchivedSegment]:
        self._maybe_refresh(refresh)
        return self._by_cid.get(cid, [])

    def dropped_through(self, cid: str, *, refresh: bool = False) -> int:
        """The last seq retention dropped from ``cid`` (0: none): its first kept seq is one past it."""
        self._maybe_refresh(refresh)
        return self._dropped.get(cid, 0)

    def conversations(self) -> set[str]:
        self._maybe_refresh(False)
        return set(self._by_cid) | set(self._dropped)

    def _maybe_refresh(self, force: bool) -> None:
        stamp = os.stat(self._dir).st_mtime_ns
        if force or stamp != self._stamp:
            self._by_cid, self._dropped = list_archive(self._dir)
            self._stamp = stamp
            self.spans = {}


# --- reading lines -------------------------------------------------------------------------


def line_end_before(fd: Source, start: int, end: int) -> int:
    """The offset just past the last newline in ``[start, end)``, or ``start`` when none.

    Bytes after it are an unterminated line: a write in progress elsewhere or a torn one.
    """
    pos = end
    while pos > start:
        lo = max(start, pos - _PROBE)
        block = pread(fd, pos - lo, lo)
        i = block.rfind(b"\n")
        if i >= 0:
            return lo + i + 1
        pos = lo
    return start


def iter_lines(fd: Source, start: int, end: int, first_block: int = 16 * 1024) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` for each complete line in ``[start, end)``, newline stripped.

    Reads grow from ``first_block`` so a short page is cheap and a long scan is fast.
    """
    block = first_block
    pos = start
    carry = b""
    carry_at = start
    while pos < end:
        chunk = pread_exact(fd, min(block, end - pos), pos)
        if not chunk:
            return
        pos += len(chunk)
        block = min(block * 2, 4 * 1024 * 1024)
        data = carry + chunk if carry else chunk
        base = carry_at
        lines = data.split(b"\n")
        carry = lines.pop()
        offset = base
        for line in lines:
            yield offset, line
            offset += len(line) + 1
        carry_at = offset


def iter_lines_backward(fd: Source, start: int, end: int) -> Iterator[bytes]:
    """Complete lines of ``[start, end)``, newest first; a trailing unterminated part is skipped.

    Reads start small and double (4 KiB up to 64 KiB): most callers want a few lines, and
    splitting a big block they never look at costs more than the reads it saves."""
    end = line_end_before(fd, start, end)
    pos = end
    carry = b""
    block = _PROBE
    while pos > start:
        lo = max(start, pos - block)
        data = pread(fd, pos - lo, lo) + carry
        pos = lo
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        carry = lines[0] if pos > start else b""
        yield from reversed(lines[1:] if pos > start else lines)
        block = min(2 * block, _BLOCK)


def read_line_at(fd: Source, offset: int, end: int) -> bytes:
    """The line starting at ``offset`` (without its newline)."""
    size = _PROBE
    while True:
        data = pread_exact(fd, min(size, end - offset), offset)
        i = data.find(b"\n")
        if i >= 0:
            return data[:i]
        if offset + len(data) >= end:
            return data
        size *= 4


def _line_start_at_or_after(fd: Source, pos: int, start: int, end: int) -> int:
    if pos <= start:
        return start
    probe = pos - 1  # pos is a line start exactly when the byte before it is a newline
    while probe < end:
        data = pread(fd, min(_PROBE, end - probe), probe)
        if not data:
            break
        i = data.find(b"\n")
        if i >= 0:
            return probe + i + 1
        probe += len(data)
    return end


def bisect_lines(fd: Source, start: int, end: int, key: Callable[[bytes], K], target: K) -> int:
    """Offset of the first line in ``[start, end)`` whose ``key`` is ``>= target`` (else ``end``).

    The lines must be sorted by ``key``; the cost is O(log bytes) small reads, and once the
    range is down to ``_WINDOW`` bytes, one read and a search in memory.
    """
    lo, hi, answer = start, end, end
    while lo < hi:
        if hi - lo <= _WINDOW:
            found = _bisect_window(fd, lo, hi, end, key, target)
            if found is not None:
                return answer if found >= hi else found
        mid = (lo + hi) // 2
        line_start = _line_start_at_or_after(fd, mid, lo, hi)
        if line_start >= hi:
            hi = mid
            continue
        line = read_line_at(fd, line_start, end)
        if key(line) < target:  # type: ignore[operator]
            lo = line_start + len(line) + 1
        else:
            answer = hi = line_start
    return answer


_WINDOW = 32 * 1024  # a range this small is read at once and searched in memory
_GUESS = 8 * 1024  # what is read around a seq's guessed place


def _bisect_window(fd: Source, lo: int, hi: int, end: int, key: Callable[[bytes], K], target: K) -> int | None:
    """:func:`bisect_lines` over the lines starting in ``[lo, hi)`` (``lo`` a line start),
    read at once: the first such line with ``key >= target``, else ``hi``; ``None`` when a
    line runs past what was read (a long one: the caller goes on probing)."""
    data = pread(fd, min(end, hi + _PROBE) - lo, lo)
    starts: list[int] = []
    lines: list[bytes] = []
    at = 0
    while lo + at < hi:
        nl = data.find(b"\n", at)
        if nl < 0:
            return None
        starts.append(lo + at)
        lines.append(data[at:nl])
        at = nl + 1
    a, b = 0, len(lines)
    while a < b:
        m = (a + b) // 2
        if key(lines[m]) < target:  # type: ignore[operator]
            a = m + 1
        else:
            b = m
    return starts[a] if a < len(starts) else hi


def line_with_seq(fd: Source, end: int, seq: int, first_seq: int | None = None) -> bytes | None:
    """The line holding ``seq`` in a segment ``[0, end)``.

    Seqs run one per line, so with the segment's ``first_seq`` known the line's place can be
    guessed from the sizes: a read around the guess (three at most, each guess narrower)
    usually holds it, for uneven lines too. What the guesses leave, a binary search finds."""
    lo, hi = 0, end
    if first_seq is not None and end > _WINDOW:
        lo, hi, found = _guess_seq(fd, end, seq, first_seq)
        if found is not None:
            return found
    offset = bisect_lines(fd, lo, hi, seq_of, seq)
    if offset >= end:
        return None
    line = read_line_at(fd, offset, end)
    return line if seq_of(line) == seq else None


def _guess_seq(fd: Source, end: int, seq: int, first_seq: int) -> tuple[int, int, bytes | None]:
    """Interpolation search for ``seq``: its line, or the ``[lo, hi)`` of line starts that
    must hold it, for the binary search."""
    lo, hi = 0, end
    try:
        last = next(iter_lines_backward(fd, 0, end), None)
        last_seq = seq_of(last) if last else None
        if last_seq is None or not first_seq <= seq <= last_seq:
            return lo, hi, None
        lo_seq, hi_seq = first_seq, last_seq + 1  # the seqs of the lines at lo and at hi
        for _ in range(3):
            if hi - lo <= _WINDOW:
                break
            guess = lo + int((seq - lo_seq) / (hi_seq - lo_seq) * (hi - lo))
            at = _line_start_at_or_after(fd, max(lo, guess - _GUESS // 2), lo, hi)
            if at >= hi:
                break
            lines = pread(fd, min(hi, at + _GUESS) - at, at).split(b"\n")
            lines.pop()  # what follows the last newline: a line cut short, or nothing
            if not lines:
                break
            first = seq_of(lines[0])
            i = seq - first
            if 0 <= i < len(lines):
                return (lo, hi, lines[i]) if seq_of(lines[i]) == seq else (lo, hi, None)
            if i < 0:
                hi, hi_seq = at, first
            else:
                lo, lo_seq = at + sum(len(line) + 1 for line in lines), first + len(lines)
    except DECODE_ERRORS:
        pass  # damage near a guess, or a blank line: the binary search copes, as it always has
    return lo, hi, None


def seq_of(line: bytes) -> int:
    return head_decoder.decode(line).seq


def timestamp_of(line: bytes) -> str:
    return head_decoder.decode(line).timestamp
