"""The write-ahead journal: one fdatasync per batch, however many conversations it touches.

Every process that writes keeps its own journal, ``journal/{pid}-{random}.wal``, locked for
as long as it lives. A batch's lines go to their conversation files (page cache only) and
to the journal, and only the journal is fdatasync'd before the answer. That keeps the flush
cost flat: eight files cost eight fdatasyncs, one journal costs one (``shared/MEASURED.md``).

A checkpoint fdatasyncs the conversation files and empties the journal. After a crash, the
journals of dead processes are replayed into the conversation files; a kill -9 never needs
it (the page cache survives), a power loss does. Replay runs under ``journal/replay.lock``
so that no writer appends to a conversation while lines it has not yet seen are restored.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable

import msgspec
import structlog

from sidecar.log import files
from sidecar.log.segments import head_decoder, iter_lines

log = structlog.get_logger("sidecar.log")

SUFFIX = ".wal"
REPLAY_LOCK = "replay.lock"


class _LineKey(msgspec.Struct):
    conversation_id: str
    seq: int


_key_decoder = msgspec.json.Decoder(_LineKey)


class Journal:
    """This process's journal. Only the log's single writer touches it."""

    def __init__(self, directory: str, limit_bytes: int) -> None:
        self.directory = directory
        self.limit_bytes = limit_bytes
        self.path: str | None = None
        self._fd = -1
        self.size = 0

    def _open(self) -> int:
        if self._fd < 0:
            created = not os.path.isdir(self.directory)
            os.makedirs(self.directory, exist_ok=True)
            if created:
                files.fsync_dir(os.path.dirname(self.directory))
            self.path = os.path.join(self.directory, f"{os.getpid()}-{os.urandom(4).hex()}{SUFFIX}")
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held for life: tells replayers we live
            files.fsync_dir(self.directory)
            self._fd, self.size = fd, 0
        return self._fd

    def write(self, data: bytes) -> None:
        """Append ``data`` (whole lines); on error the journal is cut back to where it was."""
        fd = self._open()
        try:
            files.write_all(fd, data)
        except OSError:
            self.cut(self.size)
            raise
        self.size += len(data)

    def sync(self) -> None:
        files.fdatasync(self._fd)

    def cut(self, size: int) -> None:
        """Drop everything after ``size`` (a failed batch)."""
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, size)
        self.size = size

    @property
    def full(self) -> bool:
        return self.size >= self.limit_bytes

    def reset(self) -> None:
        """Empty the journal: call only once every file it covers is fdatasync'd."""
        if self._fd >= 0 and self.size:
            os.ftruncate(self._fd, 0)
            files.fsync(self._fd)
            self.size = 0

    def close(self) -> None:
        """Remove the journal: call only after a checkpoint."""
        if self._fd >= 0:
            assert self.path is not None
            os.unlink(self.path)
            os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(OSError):
                files.fsync_dir(self.directory)


def replay_orphans(directory: str, restore: Callable[[str, list[tuple[int, bytes]]], None]) -> int:
    """Restore the lines of dead processes' journals, then delete those journals.

    ``restore(conversation_id, [(seq, line), ...])`` gets each conversation's lines in seq
    order, merged across journals. Returns how many journals were replayed.
    """
    if not os.path.isdir(directory):
        return 0
    lock_fd = os.open(os.path.join(directory, REPLAY_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        orphans: list[tuple[str, int]] = []
        for name in sorted(os.listdir(directory)):
            if not name.endswith(SUFFIX):
                continue
            path = os.path.join(directory, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # its writer is alive
                continue
            orphans.append((path, fd))
        if not orphans:
            return 0
        by_cid: dict[str, dict[int, bytes]] = {}
        for path, fd in orphans:
            for _, line in iter_lines(fd, 0, os.fstat(fd).st_size):
                try:
                    key = _key_decoder.decode(line)
                    head_decoder.decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # a torn last line: never acknowledged
                by_cid.setdefault(key.conversation_id, {})[key.seq] = line
        for cid in sorted(by_cid):
            lines = by_cid[cid]
            restore(cid, [(seq, lines[seq]) for seq in sorted(lines)])
        for path, fd in orphans:
            os.unlink(path)
            os.close(fd)
        files.fsync_dir(directory)
        log.info("log.journals_replayed", journals=len(orphans), conversations=len(by_cid))
        return len(orphans)
    finally:
        os.close(lock_fd)
