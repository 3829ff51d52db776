"""Files an operator drops into the data directory to override what ships (``data/prompts/``,
``data/playbooks/``), read as the untrusted input they are.

The directory and its files are never followed through a symlink; a file must be a regular
file of ours, of at most ``max_bytes``; anything else raises :class:`UnsafePathError` (an
``OSError``) naming the path, for the caller to log and refuse while it keeps what it had.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import structlog
import watchfiles

from sidecar.datadir import UnsafePathError, check_dir, open_regular, private_dir

log = structlog.get_logger("sidecar.overrides")


def _open_dir(directory: str, what: str) -> int | None:
    """A descriptor of ``directory`` (checked: ours, not open to all), ``None`` when absent."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(f"{directory} is not a directory of ours (a symlink?)") from None
        raise
    try:
        check_dir(directory, os.fstat(dir_fd), what, fd=dir_fd)
    except BaseException:
        os.close(dir_fd)
        raise
    return dir_fd


def read_text(directory: str, name: str, max_bytes: int, what: str) -> str | None:
    """The text of ``directory/name``; ``None`` when there is no such file."""
    dir_fd = _open_dir(directory, what)
    if dir_fd is None:
        return None
    path = os.path.join(directory, name)
    try:
        try:
            fd = open_regular(name, os.O_RDONLY, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UnsafePathError(f"{path} belongs to uid {st.st_uid}, not to us")
        if st.st_size > max_bytes:
            raise UnsafePathError(f"{path} is over {max_bytes} bytes")
        data = b""
        while len(data) <= max_bytes and (chunk := os.read(fd, max_bytes + 1 - len(data))):
            data += chunk
        if len(data) > max_bytes:
            raise UnsafePathError(f"{path} grew over {max_bytes} bytes")
        return data.decode("utf-8")
    finally:
        os.close(fd)


def names(directory: str, suffix: str, what: str, limit: int) -> list[str]:
    """The names in ``directory`` ending in ``suffix`` (sorted, at most ``limit``); links and
    whatever is not a regular file are left out (reading them would be refused anyway)."""
    dir_fd = _open_dir(directory, what)
    if dir_fd is None:
        return []
    try:
        with os.scandir(dir_fd) as entries:
            found = sorted(e.name for e in entries if e.name.endswith(suffix) and e.is_file(follow_symlinks=False))
    finally:
        os.close(dir_fd)
    return found[:limit]


async def watch(
    directory: str | None,
    what: str,
    changed: Callable[[list[str]], Awaitable[None]],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``changed(paths)`` whenever files of ``directory`` change. The directory is made
    0700 first (and never followed through a symlink); one that cannot be made so is logged
    and not watched, and what was read from it stays in use."""
    if not directory:
        task_status.started()
        return
    try:
        private_dir(directory, what=what)
    except OSError as exc:
        log.error("overrides.not_watched", path=directory, what=what, error=str(exc))
        task_status.started()
        return
    task_status.started()
    async for changes in watchfiles.awatch(directory, recursive=False, rust_timeout=200):
        await changed([path for _change, path in changes])
