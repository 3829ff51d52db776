"""Small, careful file-system primitives of the log: locks, full writes, directory fsync.

Every write path in the log goes through these so the durability rules live in one place,
and so do the data directory's rules (:mod:`sidecar.datadir`): no symlink is followed,
nothing but a regular file is used as one, and what we create is 0600. Full writes,
directory fsync and the flock itself are :mod:`sidecar.fs`'s, shared with the rest of the
daemon; what is here is the log's own (rotation-aware locking, positioned I/O).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import stat
from collections.abc import Iterator
from typing import Protocol

from sidecar.datadir import FILE_MODE, check_regular, open_regular
from sidecar.fs import flock
from sidecar.fs import fsync_dir as fsync_dir  # re-exported: the log uses them from here
from sidecar.fs import write_all as write_all

# Indirection points for fault-injection tests: patch these to simulate a failing disk.
fdatasync = os.fdatasync
fsync = os.fsync


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """``pwrite`` until every byte is out."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class Readable(Protocol):
    """Something read like a file by offset: a compressed segment (:mod:`sidecar.log.compressed`)."""

    def pread(self, n: int, offset: int) -> bytes: ...
    def close(self) -> None: ...


Source = int | Readable  # an fd, or a compressed segment read as if it were the plain file


def pread(src: Source, n: int, offset: int) -> bytes:
    """``os.pread`` on either kind of source."""
    return os.pread(src, n, offset) if isinstance(src, int) else src.pread(n, offset)


def pread_exact(src: Source, size: int, offset: int) -> bytes:
    """Read ``size`` bytes at ``offset`` (fewer only at end of file)."""
    parts: list[bytes] = []
    while size > 0:
        chunk = pread(src, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


@contextlib.contextmanager
def shared_lock(fd: int, *, wait: bool = True) -> Iterator[None]:
    """Hold ``LOCK_SH`` on ``fd``: no writer is between write and fsync while we read.

    ``wait=False`` raises :class:`BlockingIOError` instead of waiting for a writer."""
    flock(fd, exclusive=False, blocking=wait)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def lock_path(path: str, *, exclusive: bool, create: bool) -> int | None:
    """Open ``path`` and flock it, making sure the lock is on the file the path names now.

    A writer that rotates a segment renames it while holding the lock, so someone who
    opened the old file and then waited must notice and open the new one. Returns the
    locked fd, or ``None`` when the file does not exist and ``create`` is false. A symlink,
    directory or FIFO at ``path`` raises :class:`~sidecar.datadir.UnsafePathError` (an ``OSError``).
    """
    flags = os.O_RDWR | os.O_APPEND if exclusive else os.O_RDONLY
    if create:
        flags |= os.O_CREAT
    while True:
        try:
            fd = open_regular(path, flags, check=False)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)  # the identity checked below does not change under the lock
            check_regular(path, st)
            if create and stat.S_IMODE(st.st_mode) != FILE_MODE and st.st_uid == os.geteuid():
                os.fchmod(fd, FILE_MODE)  # the umask took bits away, or an older version gave more
            flock(fd, exclusive=exclusive)
            if names(path, st):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def same_file(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    return names(path, os.fstat(fd))


def names(path: str, st: os.stat_result) -> bool:
    """Whether ``path`` names the file whose ``fstat`` is ``st`` (itself, not through a link)."""
    try:
        pst = os.lstat(path)
    except FileNotFoundError:
        return False
    return (pst.st_ino, pst.st_dev) == (st.st_ino, st.st_dev)


def flock_exclusive(fd: int) -> None:
    flock(fd, exclusive=True)


def unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass  # the fd is closed next anyway, which releases the lock


def unlock_close(fd: int) -> None:
    unlock(fd)
    os.close(fd)


def open_files_budget() -> int:
    """How many log files the writer keeps open between batches: an eighth of RLIMIT_NOFILE,
    at most 256, so that connections and reads keep descriptors of their own."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 256
    return max(4, min(256, soft // 8))
