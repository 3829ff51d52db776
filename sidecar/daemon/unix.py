"""The socket, made safe: an owner-only directory, 0600 from the first instant, one daemon
per socket and data dir, stale sockets reclaimed only when nothing answers, peers checked,
and file descriptors shared out so that a flood of connections cannot starve the store."""

from __future__ import annotations

import errno
import os
import resource
import socket
import stat
import struct
from typing import NamedTuple

from sidecar.datadir import UnsafePathError, private_dir
from sidecar.fs import flock, open_lock_file
from sidecar.log.files import open_files_budget

MAX_PATH_BYTES = 107  # sun_path is 108 bytes including the terminating NUL
FD_RESERVE = 96  # std streams, the listener, journal, locks, inotify, files read by worker threads


class SocketSetupError(Exception):
    """The socket cannot be set up safely; the message says why and what to do."""


def check_path_length(path: str) -> None:
    size = len(os.fsencode(path))
    if size > MAX_PATH_BYTES:
        raise SocketSetupError(
            f"socket path is {size} bytes, over the {MAX_PATH_BYTES}-byte limit of Unix sockets: {path} "
            "(choose a shorter --socket or SIDECAR_SOCKET)"
        )


def prepare_directory(directory: str) -> None:
    """Make the socket's directory one only we can enter: created 0700 (whatever the umask),
    tightened to 0700 when ours and open to others; refused when it is a symlink, another
    user's, or writable by every user (anyone could replace the socket, or read what a
    client sends)."""
    try:
        private_dir(directory, what="socket directory")
    except UnsafePathError as exc:
        raise SocketSetupError(str(exc)) from None


def acquire_lock(path: str, what: str) -> int:
    """Hold ``path`` locked for the daemon's life; a second daemon is told who has it.

    The lock file is never followed through a symlink (we truncate it: a link would have us
    truncate its target) and must be a regular file of ours."""
    try:
        fd = open_lock_file(path)
    except UnsafePathError as exc:
        raise SocketSetupError(f"refusing the lock file: {exc}; remove it") from None
    try:
        owner = os.fstat(fd).st_uid
        if owner != os.geteuid():
            raise SocketSetupError(f"refusing the lock file {path}: it belongs to uid {owner}, not to us; remove it")
        flock(fd, exclusive=True, blocking=False)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise SocketSetupError(f"another sidecar (pid {holder}) is already running on this {what} ({path})") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def answers(path: str) -> bool:
    """Whether something accepts connections on the socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()


def bind_listener(path: str, backlog: int = 512) -> socket.socket:
    """A listening socket at ``path``, mode 0600 from its first instant (bound under umask 177)."""
    check_path_length(path)
    prepare_directory(os.path.dirname(path))
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise SocketSetupError(f"{path} exists and is not a socket; refusing to replace it")
        if answers(path):
            raise SocketSetupError(f"a daemon already answers on {path}")
        os.unlink(path)  # stale: left by a daemon that died
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # sockets take 0777 & ~umask: 0600
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(backlog)
    return sock


def inherited_listener() -> socket.socket | None:
    """The listening socket systemd passed (``LISTEN_FDS``), if it is meant for us."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    sock = socket.socket(fileno=3)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise SocketSetupError("LISTEN_FDS: fd 3 is not a Unix stream socket")
    return sock


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


class DescriptorBudget(NamedTuple):
    connections: int  # served at once
    lingering_refusals: int  # refused peers we wait on, to read their request before closing


def descriptor_budget(max_connections: int) -> DescriptorBudget:
    """Share RLIMIT_NOFILE out so that a flood of connections can never starve the store:
    its open log files (``open_files_budget``) and a reserve come first."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DescriptorBudget(max_connections, 32)
    lingering = max(1, min(32, soft // 16))
    spare = soft - open_files_budget() - min(FD_RESERVE, soft // 3) - lingering
    return DescriptorBudget(max(1, min(max_connections, spare)), lingering)


def hang_up(raw: socket.socket, reply: bytes) -> None:
    """Tell a refused peer why in one non-blocking send (best effort), and close at once.

    Whatever the peer already sent is read first: closing with it unread would make the
    kernel reset the connection, and the peer could not read the reply."""
    with raw:
        raw.setblocking(False)
        try:
            raw.send(reply)
            for _ in range(4):  # at most 256 KiB: a peer that keeps sending gets its reset
                if not raw.recv(65536):
                    break
        except OSError:  # BlockingIOError: nothing more to read; or the peer is gone
            pass


class SpareDescriptor:
    """One descriptor held in reserve, so that when ``accept`` fails with EMFILE we can free
    it, accept the waiting peer, tell it why and hang up, instead of leaving it queued (and
    the listener readable, which would spin the accept loop)."""

    def __init__(self) -> None:
        self.fd: int | None = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def refuse_one(self, listener: socket.socket, reply: bytes) -> bool:
        """Accept one pending connection with the spare descriptor, send ``reply``, close it.
        Returns whether there was a connection to refuse."""
        self.close()
        try:
            try:
                raw, _ = listener.accept()
            except OSError:  # BlockingIOError: nobody waiting; EMFILE: the spare was not enough
                return False
            hang_up(raw, reply)
            return True
        finally:
            self._reopen()  # only once the peer's descriptor is closed

    def _reopen(self) -> None:
        try:
            self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd = None  # still out of descriptors: try again next time

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
