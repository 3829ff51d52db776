"""The data directory: where it is, its layout, and the rules every path in it obeys.

Nothing in the data directory is trusted (contract §9). So every file in it is opened
through :func:`open_regular` (never following a symlink, never blocking on a FIFO, refusing
anything but a regular file), every file we create is 0600 and every directory we create or
use is 0700 whatever the umask, and a directory that belongs to another user or that every
user may write is refused with a one-line reason.

Group-writable directories of ours are tightened, not refused: that is what ``mkdir`` and
``git clone`` give under the common umask 002 (a user's private group), and since nothing
found inside is trusted anyway, closing the door is enough. A directory any user may write
(0777, 0757) or another user's is refused: either is a setup mistake worth stopping for.
"""

from __future__ import annotations

import errno
import os
import stat

import structlog

DEFAULT_DATA_DIR = "./data"
SUBDIRS = ("logs", "summaries", "archive")
# Made on demand by their features; when present they must be as safe as the scaffold.
OPTIONAL_SUBDIRS = ("journal",)
EMPTY_GRAPH = b'{"tasks": []}\n'
FILE_MODE = 0o600
DIR_MODE = 0o700
# O_NONBLOCK: opening a FIFO for reading would otherwise wait forever for a writer. It has no
# effect on regular files, the only kind kept open.
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

log = structlog.get_logger("sidecar.datadir")


class UnsafePathError(PermissionError):
    """A path we refuse to use: a symlink, not the kind of file expected, another user's, or
    writable by others. ``str()`` is the one-line reason, naming the path."""

    def __init__(self, message: str, code: int = errno.EPERM) -> None:
        super().__init__(code, message)

    def __str__(self) -> str:
        return str(self.strerror)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, flags: int, *, dir_fd: int | None = None, check: bool = True) -> int:
    """``os.open`` for a file in the data directory: never through a symlink, never anything
    but a regular file, and a file we create (or open with ``O_CREAT``) is 0600.

    Raises :class:`UnsafePathError` (an ``OSError``) naming the path for a symlink, a
    directory, a FIFO or a device; other errors (``FileNotFoundError``...) pass through.
    ``check=False`` leaves the kind to the caller, who must pass an ``fstat`` it makes anyway
    to :func:`check_regular` before reading (a hot read path saves a syscall).
    """
    try:
        fd = os.open(path, flags | _OPEN_FLAGS, FILE_MODE, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = f"{path} is a symbolic link; links in the data directory are never followed"
            raise UnsafePathError(reason, errno.ELOOP) from None
        if exc.errno == errno.EISDIR:
            raise UnsafePathError(f"{path} is a directory where a file belongs", errno.EISDIR) from None
        raise
    if not check:
        return fd
    try:
        st = os.fstat(fd)
        check_regular(path, st)
        if flags & os.O_CREAT and stat.S_IMODE(st.st_mode) != FILE_MODE and st.st_uid == os.geteuid():
            os.fchmod(fd, FILE_MODE)  # the umask may have taken bits away, or an old file had more
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path: str, st: os.stat_result) -> None:
    """Raise :class:`UnsafePathError` unless ``st`` (of ``path``) is a regular file's."""
    if not stat.S_ISREG(st.st_mode):
        code = errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL
        raise UnsafePathError(f"{path} is {_kind(st.st_mode)}, not a regular file", code)


def read_regular(path: str, limit: int) -> bytes:
    """The whole of a regular file of at most ``limit`` bytes (see :func:`open_regular`)."""
    fd = open_regular(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise UnsafePathError(f"{path} is {size} bytes, over the {limit}-byte limit for it", errno.EFBIG)
        parts = []
        got = 0
        while chunk := os.read(fd, max(size - got, 65536)):
            parts.append(chunk)
            got += len(chunk)
            if got > limit:
                raise UnsafePathError(f"{path} grew past the {limit}-byte limit for it", errno.EFBIG)
        return b"".join(parts)
    finally:
        os.close(fd)


def private_dir(path: str, *, follow: bool = False, create: bool = True, what: str = "directory") -> bool:
    """Make sure ``path`` is a directory only we can use: created 0700 when missing (with
    ``create``), tightened to 0700 when ours but open to others, refused (raises
    :class:`UnsafePathError`) when it is a symlink (unless ``follow``: a path the operator
    chose may be one), not a directory, another user's, or writable by every user.

    Returns whether the directory exists now."""
    try:
        fd = os.open(path, _DIR_FLAGS | (0 if follow else os.O_NOFOLLOW))
    except FileNotFoundError:
        if not create:
            return False
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass  # made meanwhile: checked below like any other
        fd = os.open(path, _DIR_FLAGS | (0 if follow else os.O_NOFOLLOW))
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                kind = _kind(os.lstat(path).st_mode)
            except OSError:
                kind = "not a directory"
            raise UnsafePathError(f"refusing {what} {path}: it is {kind}, not a directory of ours") from None
        raise
    try:
        check_dir(path, os.fstat(fd), what, fd=fd)
    finally:
        os.close(fd)
    return True


def check_dir(path: str, st: os.stat_result, what: str, *, fd: int | None = None) -> None:
    """Refuse a directory of another user's or one every user may write; tighten ours to 0700
    (through ``fd`` when given, so the check and the change are on one directory)."""
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o002:
        raise UnsafePathError(
            f"refusing {what} {path}: it is writable by others (mode {mode:04o}); "
            "use a directory only its owner can write"
        )
    if st.st_uid != os.geteuid():
        raise UnsafePathError(
            f"refusing {what} {path}: it belongs to uid {st.st_uid}, not to us (uid {os.geteuid()}); "
            "use a directory of our own"
        )
    if mode & 0o077 or mode & DIR_MODE != DIR_MODE:
        if fd is not None:
            os.fchmod(fd, DIR_MODE)
        else:
            os.chmod(path, DIR_MODE)
        log.warning("datadir.tightened", path=path, mode_was=f"{mode:04o}", mode=f"{DIR_MODE:04o}")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> str:
    """``data_dir``, else ``$SIDECAR_DATA_DIR``, else ``./data``, as an absolute path."""
    chosen = data_dir if data_dir is not None else os.environ.get("SIDECAR_DATA_DIR") or DEFAULT_DATA_DIR
    return os.path.abspath(os.fspath(chosen))


def ensure_layout(data_dir: str | os.PathLike[str]) -> str:
    """Create whatever of the scaffold is missing (never touching what exists), and hold the
    directory to the rules above (raises :class:`UnsafePathError`); returns the path.

    The data directory itself may be a symlink (the operator named it); nothing in it may.
    """
    root = os.path.abspath(os.fspath(data_dir))
    private_dir(root, follow=True, what="data directory")
    for sub in SUBDIRS:
        private_dir(os.path.join(root, sub), what="data directory part")
    for sub in OPTIONAL_SUBDIRS:
        private_dir(os.path.join(root, sub), create=False, what="data directory part")
    graph = os.path.join(root, "tasks.graph.json")
    try:
        fd = open_regular(graph, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return root  # whatever it is, the task graph's loader judges it
    try:
        os.write(fd, EMPTY_GRAPH)
        os.fsync(fd)
    finally:
        os.close(fd)
    return root


BACKEND_FILE = "log-backend"  # whose log this directory holds: "file", or "jetstream STREAM"


def claim_backend(data_dir: str, backend: str) -> str | None:
    """Hold ``data_dir`` to one storage backend: a directory keeps the log of the backend that
    first wrote it (the ``file`` backend's own, or a copy of one JetStream stream), so the two
    are never mixed in one ``logs/``. Returns why ``backend`` may not use it, or None."""
    path = os.path.join(data_dir, BACKEND_FILE)
    try:
        recorded = read_regular(path, 256).decode("utf-8", "replace").strip()
    except FileNotFoundError:
        recorded = None
    if recorded is None:
        with os.scandir(os.path.join(data_dir, "logs")) as entries:
            written = any(True for _ in entries)
        if written and backend != "file":  # written before the marker existed: the file backend's
            recorded = "file"
        else:
            fd = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                os.write(fd, backend.encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            return None
    if recorded == backend:
        return None
    return (
        f"the data directory {data_dir} holds the log of the {recorded!r} backend ({path}), "
        f"not of {backend!r}: give this backend a data directory of its own"
    )
