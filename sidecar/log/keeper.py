"""The archive keeper: retention and compression of sealed segments, in the background.

Sealed segments never change, so the keeper can work on them beside the writer and the
readers without a lock: each step is one atomic file-system change, ordered so that a crash
(kill -9, power cut) between any two leaves a log every reader accepts and no retained event
lost. The next pass finishes what a crashed one began.

Dropping the oldest segments of a conversation (``[log] retain_days``, ``retain_bytes``):

1. ``before_drop(cid, last_seq)`` is called first (the task graph carries the tasks whose
   newest version is in those segments forward into the log; see
   :mod:`sidecar.tasks.retention`). If it fails, nothing is dropped this time.
2. The drop marker ``{cid}.000000000001-{last:012d}.dropped`` is created and its directory
   fsync'd: from here the segments are gone for every reader (:func:`list_archive` hides
   what the marker covers) and the writer knows where seqs go on.
3. The segments and older markers are unlinked.

Compressing a segment (``[log] compress_archive``): the compressed copy is written beside it
under a temporary name, checked, renamed to ``{segment}.zst`` (readers prefer it from then
on), and only then is the plain segment unlinked.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.datadir import open_regular
from sidecar.log.compressed import COMPRESSED_SUFFIX, TEMP_SUFFIX, compress_segment
from sidecar.log.conversation import LogPaths
from sidecar.log.files import fsync_dir
from sidecar.log.segments import (
    DECODE_ERRORS,
    DROPPED_SUFFIX,
    SUFFIX,
    ArchivedSegment,
    archive_files,
    close_source,
    dropped_path,
    iter_lines_backward,
    list_archive,
    open_segment,
    timestamp_of,
)
from sidecar.log.timestamps import format_timestamp

log = structlog.get_logger("sidecar.log")

DAY_NS = 86_400 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What the keeper does: 0 keeps everything (the default)."""

    retain_days: float = 0.0  # sealed segments whose newest event is older than this are dropped
    retain_bytes: int = 0  # bytes on disk per conversation (active segment included)
    compress: bool = False  # sealed segments are stored compressed

    @property
    def active(self) -> bool:
        return self.retain_days > 0 or self.retain_bytes > 0 or self.compress


@dataclass
class KeeperStats:
    """What the keeper has done since start, for ``sys.stats``."""

    passes: int = 0
    dropped_segments: int = 0
    dropped_bytes: int = 0
    compressed_segments: int = 0
    plain_bytes: int = 0  # of the segments compressed
    compressed_bytes: int = 0  # what they became
    failures: int = 0
    last_pass_ms: float = 0.0


DropHook = Callable[[str, int], object]  # (conversation, last seq dropped); before: raising cancels the drop


class ArchiveKeeper:
    """One pass at a time (:meth:`run_once`), from one thread: the daemon's, or a test's."""

    def __init__(
        self,
        paths: LogPaths,
        policy: RetentionPolicy,
        *,
        clock: Clock = SYSTEM_CLOCK,
        before_drop: DropHook | None = None,
        after_drop: DropHook | None = None,
        step: Callable[[str], None] | None = None,
    ) -> None:
        self.paths = paths
        self.policy = policy
        self.clock = clock
        self.before_drop = before_drop
        self.after_drop = after_drop  # told what went (the search index forgets it)
        self._step = step  # called after each file-system change: crash tests stop there
        self.stats = KeeperStats()

    def run_once(self) -> None:
        """Apply the policy to every conversation's sealed segments, then compress."""
        started = time.monotonic()
        self._tidy()
        if self.policy.retain_days > 0 or self.policy.retain_bytes > 0:
            segments, _ = list_archive(self.paths.archive_dir)
            for cid, segs in sorted(segments.items()):
                try:
                    self._retain(cid, segs)
                except Exception as exc:  # one conversation's trouble stays its own
                    self.stats.failures += 1
                    log.error("log.retention_failed", conversation_id=cid, error=str(exc))
        if self.policy.compress:
            segments, _ = list_archive(self.paths.archive_dir)
            for segs in segments.values():
                for seg in segs:
                    if not seg.compressed:
                        self._compress(seg)
        self.stats.passes += 1
        self.stats.last_pass_ms = (time.monotonic() - started) * 1000

    # --- retention ---------------------------------------------------------------------------

    def _retain(self, cid: str, segs: list[ArchivedSegment]) -> None:
        drop = self._to_drop(cid, segs)
        if not drop:
            return
        last = drop[-1].last_seq
        if self.before_drop is not None:
            self.before_drop(cid, last)
        self.step("carried")
        marker = dropped_path(self.paths.archive_dir, cid, last)
        fd = open_regular(marker, os.O_WRONLY | os.O_CREAT)
        os.fsync(fd)
        os.close(fd)
        fsync_dir(self.paths.archive_dir)
        self.step("marked")
        freed = 0
        for seg in drop:
            freed += _disk_size(seg.path)
            _unlink(seg.path)
        self._remove_covered(cid, last, keep=marker)
        fsync_dir(self.paths.archive_dir)
        self.stats.dropped_segments += len(drop)
        self.stats.dropped_bytes += freed
        log.info("log.retention_dropped", conversation_id=cid, segments=len(drop), through_seq=last, bytes=freed)
        self.step("dropped")
        if self.after_drop is not None:
            self.after_drop(cid, last)

    def _to_drop(self, cid: str, segs: list[ArchivedSegment]) -> list[ArchivedSegment]:
        """The oldest segments the policy no longer keeps (a prefix: segments are in time order)."""
        n = 0
        policy = self.policy
        if policy.retain_days > 0:
            cutoff = format_timestamp(self.clock.now_ns() - int(policy.retain_days * DAY_NS))
            while n < len(segs) and _newest_timestamp(segs[n]) < cutoff:
                n += 1
        if policy.retain_bytes > 0:
            sizes = [_disk_size(seg.path) for seg in segs]
            total = sum(sizes) + _disk_size(os.path.join(self.paths.logs_dir, cid + SUFFIX))
            m = 0
            while m < len(segs) and total > policy.retain_bytes:
                total -= sizes[m]
                m += 1
            n = max(n, m)
        return segs[:n]

    def _remove_covered(self, cid: str, last: int, *, keep: str) -> bool:
        """Unlink what a drop marker of ``cid`` covers: segments at or below ``last`` and
        older markers; whether there was any."""
        removed = False
        for name, m in _archive_files(self.paths.archive_dir):
            path = os.path.join(self.paths.archive_dir, name)
            if m["cid"] == cid and int(m["last"]) <= last and path != keep:
                removed |= _unlink(path)
        return removed

    # --- compression ---------------------------------------------------------------------------

    def _compress(self, seg: ArchivedSegment) -> None:
        target = seg.path + COMPRESSED_SUFFIX
        try:
            plain, packed = compress_segment(seg.path, target)
        except FileNotFoundError:
            return  # dropped meanwhile
        except Exception as exc:  # a damaged segment stays as it is, plain, and readable
            self.stats.failures += 1
            log.error("log.compress_failed", segment=seg.path, error=str(exc))
            return
        self.step("compressed")
        _unlink(seg.path)
        fsync_dir(self.paths.archive_dir)
        self.stats.compressed_segments += 1
        self.stats.plain_bytes += plain
        self.stats.compressed_bytes += packed
        log.info("log.compressed", segment=target, bytes=plain, compressed=packed)
        self.step("plain_removed")

    # --- finishing what a crash left ---------------------------------------------------------

    def _tidy(self) -> None:
        """Remove what an interrupted pass left: temporary compressed files, plain segments
        whose compressed copy is complete, and segments a drop marker covers."""
        archive = self.paths.archive_dir
        files = _archive_files(archive)
        names = {name for name, _ in files}
        dropped: dict[str, int] = {}
        changed = False
        for name, m in files:
            if m["kind"] == DROPPED_SUFFIX:
                dropped[m["cid"]] = max(dropped.get(m["cid"], 0), int(m["last"]))
            elif m["kind"] == SUFFIX and name + COMPRESSED_SUFFIX in names:
                changed |= _unlink(os.path.join(archive, name))
        with os.scandir(archive) as entries:
            temps = [e.path for e in entries if e.name.endswith(COMPRESSED_SUFFIX + TEMP_SUFFIX)]
        for path in temps:
            changed |= _unlink(path)
        for cid, last in dropped.items():
            changed |= self._remove_covered(cid, last, keep=dropped_path(archive, cid, last))
        if changed:
            fsync_dir(archive)

    def step(self, name: str) -> None:
        if self._step is not None:
            self._step(name)


def _archive_files(archive_dir: str) -> list[tuple[str, re.Match[str]]]:
    return [(entry.name, m) for entry, m in archive_files(archive_dir)]


def _newest_timestamp(seg: ArchivedSegment) -> str:
    """The timestamp of a segment's newest event; "~" (after every timestamp: never too old)
    when it cannot be read, so that damage is kept for a person to look at, not dropped."""
    try:
        src, end = open_segment(seg.path)
    except OSError:
        return "~"  # unreadable or gone: never dropped by age
    try:
        newest = next(iter_lines_backward(src, 0, end), None)
        return timestamp_of(newest) if newest else "~"
    except (OSError, *DECODE_ERRORS):
        return "~"
    finally:
        close_source(src)


def _disk_size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return 0


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
