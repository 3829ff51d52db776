"""The one atomic write and the one lock helper, for every file the data directory holds.

Both sit on :mod:`sidecar.datadir`'s safe open (:func:`~sidecar.datadir.open_regular`:
never through a symlink, never anything but a regular file, 0600 when we create it), so
the rules for what we write and what we lock live in one place:

* :func:`atomic_write` replaces a file so that readers see the old bytes or the new ones,
  never half: a temp file beside it, written, fsync'd, renamed over it, the directory
  fsync'd.
* :func:`open_lock_file`, :func:`flock` and :func:`locked` take a shared or exclusive
  flock, waiting or not, on a lock file opened safely (or, with :func:`flock`, on any file
  or directory a caller already holds open).

This module depends on nothing of ours but :mod:`sidecar.datadir`: the log, the task graph,
the summaries and the daemon all build on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from sidecar.datadir import open_regular

TMP_PREFIX = ".tmp."


def write_all(fd: int, data: bytes) -> None:
    """``write`` until every byte is out; a short write followed by an error raises."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: str) -> None:
    """Make a create, rename or unlink inside ``path`` durable. (A link is followed here: the
    data directory itself may be one, and an fsync changes nothing but durability.)"""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, *, temp: str | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    The bytes go to a temp file in the same directory, which is fsync'd and renamed over
    ``path``; then the directory is fsync'd. By default the temp file is uniquely named
    (``.tmp.{pid}.{random}``) and created with ``O_EXCL`` (never anyone else's, nor a link),
    and removed again if anything fails before the rename. A caller that holds a lock making
    a fixed name its own may pass ``temp``: that file is created or truncated (never through
    a link) and left behind on failure, for the caller's own clean-up of stale temps.
    """
    directory = os.path.dirname(path)
    if temp is None:
        tmp = os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}.{os.urandom(8).hex()}")
        fd = open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    else:
        tmp = temp
        fd = open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        if temp is None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    fsync_dir(directory)


def open_lock_file(path: str) -> int:
    """Open (creating it, 0600) the lock file ``path``: never through a symlink, never
    anything but a regular file (:class:`~sidecar.datadir.UnsafePathError` otherwise)."""
    return open_regular(path, os.O_RDWR | os.O_CREAT)


def flock(fd: int, *, exclusive: bool, blocking: bool = True) -> None:
    """Take ``LOCK_EX`` or ``LOCK_SH`` on ``fd``; ``blocking=False`` raises
    :class:`BlockingIOError` instead of waiting for a holder."""
    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB))


@contextlib.contextmanager
def locked(path: str, *, exclusive: bool, blocking: bool = True) -> Iterator[int]:
    """Hold a flock on the lock file ``path`` (see :func:`open_lock_file`) for the block;
    yields its fd. Closing the fd at the end releases the lock."""
    fd = open_lock_file(path)
    try:
        flock(fd, exclusive=exclusive, blocking=blocking)
        yield fd
    finally:
        os.close(fd)
