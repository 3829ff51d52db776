"""The write-ahead journal: one fdatasync per batch, however many conversations it touches.

Every process that writes keeps its own journal, ``journal/{pid}-{random}.wal``, locked for
as long as it lives. A batch's lines go to their conversation files (page cache only) and
to the journal, and only the journal is fdatasync'd before the answer. That keeps the flush
cost flat: eight files cost eight fdatasyncs, one journal costs one (the figures are in
docs/performance.md, "Why a journal").

A checkpoint fdatasyncs the conversation files and empties the journal. After a crash, the
journals of dead processes are replayed into the conversation files; a kill -9 never needs
it (the page cache survives), a power loss does. Replay runs under ``journal/replay.lock``
so that no writer appends to a conversation while lines it has not yet seen are restored.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from typing import Annotated

import msgspec
import structlog
from msgspec import Meta

from sidecar.datadir import UnsafePathError, open_regular, private_dir
from sidecar.fs import flock, locked
from sidecar.log import files
from sidecar.log.events import ConversationId, EventId, EventType, decode_event
from sidecar.log.segments import DECODE_ERRORS, iter_lines

log = structlog.get_logger("sidecar.log")

SUFFIX = ".wal"
REPLAY_LOCK = "replay.lock"


class _LineKey(msgspec.Struct):
    """The fields of a journal line that name files or other events, held to the patterns
    writers are held to (a line on disk is not trusted to have been checked)."""

    conversation_id: ConversationId
    seq: Annotated[int, Meta(ge=1)]
    id: EventId
    type: EventType
    caused_by: list[EventId] = []


_key_decoder = msgspec.json.Decoder(_LineKey)


class Journal:
    """This process's journal. Only the log's single writer touches it.

    The file is zero-filled ahead of the writes (a MiB at a time), so the fdatasync after
    each batch flushes data blocks only, with no size change for the file system to journal:
    measured here, 120 us against 200 us for a growing file. Replay stops at the zeros.
    """

    def __init__(self, directory: str, limit_bytes: int, zero_step: int = 1 << 20) -> None:
        self.directory = directory
        self.limit_bytes = limit_bytes
        self.zero_step = zero_step
        self.path: str | None = None
        self._fd = -1
        self.size = 0  # bytes of lines written
        self._zeroed = 0  # bytes of the file zero-filled and durable

    def _open(self) -> int:
        if self._fd < 0:
            created = not os.path.lexists(self.directory)
            private_dir(self.directory, what="journal directory")  # 0700; never a symlink
            if created:
                files.fsync_dir(os.path.dirname(self.directory))
            self.path = os.path.join(self.directory, f"{os.getpid()}-{os.urandom(4).hex()}{SUFFIX}")
            fd = open_regular(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL)  # 0600
            flock(fd, exclusive=True, blocking=False)  # held for life: tells replayers we live
            files.fsync_dir(self.directory)
            self._fd, self.size, self._zeroed = fd, 0, 0
        return self._fd

    def write(self, data: bytes) -> None:
        """Add ``data`` (whole lines) after what is there; durable only after :meth:`sync`."""
        fd = self._open()
        end = self.size + len(data)
        if end > self._zeroed:
            try:
                self._zero_to(max(end, self._zeroed + self.zero_step))
            except OSError:
                self._zero_to(end)  # a nearly full disk: ask for no more than this batch needs
        start, self.size = self.size, end
        try:
            files.pwrite_all(fd, data, start)
        except OSError:
            self.erase(start)
            raise

    def _zero_to(self, end: int) -> None:
        block = bytes(min(self.zero_step, end - self._zeroed))
        offset = self._zeroed
        try:
            while offset < end:
                files.pwrite_all(self._fd, block[: end - offset], offset)
                offset += min(len(block), end - offset)
            files.fdatasync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._zeroed)
            raise
        self._zeroed = end

    def sync(self) -> None:
        files.fdatasync(self._fd)

    def erase(self, start: int) -> None:
        """Zero out everything written after ``start`` (a failed batch), best effort."""
        with contextlib.suppress(OSError):
            files.pwrite_all(self._fd, bytes(self.size - start), start)
        self.size = start

    @property
    def full(self) -> bool:
        return self.size >= self.limit_bytes

    def detach(self) -> None:
        """Stop using this journal but keep the file: the next start replays it.

        For when the files it covers could not be fdatasync'd: only the journal holds them.
        """
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock: from now on it is an orphan like any other
            self._fd = -1
            self.size = self._zeroed = 0
            log.error("log.journal_detached", path=self.path)

    def retire(self) -> None:
        """Delete the journal: call only once every file it covers is fdatasync'd.

        The next write starts a fresh file, so a journal whose fsync once failed is never
        trusted again.
        """
        if self._fd >= 0:
            assert self.path is not None
            os.unlink(self.path)
            os.close(self._fd)
            self._fd = -1
            self.size = self._zeroed = 0
            with contextlib.suppress(OSError):
                files.fsync_dir(self.directory)


def replay_orphans(directory: str, restore: Callable[[str, list[tuple[int, bytes]]], None]) -> int:
    """Restore the lines of dead processes' journals, then delete those journals.

    ``restore(conversation_id, [(seq, line), ...])`` gets each conversation's lines in seq
    order, merged across journals. Returns how many journals were replayed.

    Nothing in a journal is trusted. Only our own writers make journals, so a journal is
    replayed only when it could be nobody else's: a regular file (not a symlink) that belongs
    to our uid and that no other user may write (0600 now; 0644 from older versions). That
    is the defence for its visibility ``user`` lines, which passed the speak gate when first
    written and are replayed without a grant. Any other journal is left where it is, with an
    error log. And every line must decode as a whole event whose conversation id, event ids
    and type match the patterns writers are held to; a line that does not is dropped with an
    error log, never written (a torn last line, never acknowledged, is dropped quietly).
    """
    if not private_dir(directory, create=False, what="journal directory"):
        return 0
    with locked(os.path.join(directory, REPLAY_LOCK), exclusive=True):
        orphans = _orphans(directory)
        if not orphans:
            return 0
        by_cid: dict[str, dict[int, bytes]] = {}
        for path, fd in orphans:
            for cid, seq, line in _valid_lines(path, fd):
                by_cid.setdefault(cid, {})[seq] = line
        failed = []
        for cid in sorted(by_cid):
            lines = by_cid[cid]
            try:
                restore(cid, [(seq, lines[seq]) for seq in sorted(lines)])
            except OSError as exc:  # e.g. its log is a symlink: that conversation only
                log.error("log.replay_failed", conversation_id=cid, error=str(exc))
                failed.append(cid)
        for path, fd in orphans:
            if not failed:  # else kept, to be replayed again (it is idempotent) once repaired
                os.unlink(path)
            os.close(fd)
        files.fsync_dir(directory)
        log.info("log.journals_replayed", journals=len(orphans), conversations=len(by_cid), failed=failed)
        return len(orphans)


def _orphans(directory: str) -> list[tuple[str, int]]:
    """The journals of dead writers that may be replayed, each opened and locked."""
    orphans: list[tuple[str, int]] = []
    me = os.geteuid()
    with os.scandir(directory) as entries:
        names = sorted(entry.name for entry in entries if entry.name.endswith(SUFFIX))
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = open_regular(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        except UnsafePathError as exc:
            log.error("log.journal_refused", path=path, reason=str(exc))
            continue
        st = os.fstat(fd)
        if st.st_uid != me or stat.S_IMODE(st.st_mode) & 0o022:
            os.close(fd)
            reason = f"owned by uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}: not written by us alone"
            log.error("log.journal_refused", path=path, reason=reason)
            continue
        try:
            flock(fd, exclusive=True, blocking=False)
        except BlockingIOError:
            os.close(fd)  # its writer is alive
            continue
        orphans.append((path, fd))
    return orphans


def _valid_lines(path: str, fd: int) -> list[tuple[str, int, bytes]]:
    """``(conversation_id, seq, line)`` for each line of a journal that is a valid event."""
    out: list[tuple[str, int, bytes]] = []
    bad: tuple[int, str] | None = None  # the last bad line: only a last one may be torn
    for offset, line in iter_lines(fd, 0, os.fstat(fd).st_size):
        if line.startswith(b"\0"):
            break  # the zero-filled space after the last batch
        if bad is not None:
            log.error("log.journal_line_dropped", path=path, offset=bad[0], reason=bad[1])
            bad = None
        try:
            _key_decoder.decode(line)  # the ids, against their patterns
            event = decode_event(line)  # and the whole event, field by field
        except DECODE_ERRORS as exc:
            bad = (offset, f"{type(exc).__name__}: {exc}")
            continue
        out.append((event.conversation_id, event.seq, line))
    if bad is not None and not bad[1].startswith("DecodeError"):
        log.error("log.journal_line_dropped", path=path, offset=bad[0], reason=bad[1])
    return out
