"""Servers the benchmarks start and stop themselves, and a lean load generator for their sockets.

The load comes from one process multiplexing raw sockets with pre-encoded requests (no client
library), so the figures measure the servers, and the sidecar and Redis are driven by the same
code. Servers are ready when they say ``READY=1`` on ``$NOTIFY_SOCKET`` (as under systemd's
Type=notify), never after a sleep, and are always stopped, even when a benchmark fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Protocol

ROOT = Path(__file__).resolve().parent.parent


class Spawned:
    """A server process, started and waited for until it sends READY=1 (or dies)."""

    def __init__(self, argv: list[str], run_dir: Path, env: dict[str, str], timeout: float = 600) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        notify_path = run_dir / "notify"
        notify_path.unlink(missing_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(notify_path))
        self.stderr_path = run_dir / "stderr.log"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 -- closed in stop()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, env={**env, "NOTIFY_SOCKET": str(notify_path)}, stdout=subprocess.DEVNULL, stderr=self._stderr
        )
        try:
            self._wait_ready(argv[0], timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0

    def _wait_ready(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.notify], [], [], 1.0)  # wakes to notice a crash
            if readable:
                if b"READY=1" in self.notify.recv(4096).split(b"\n"):
                    return
            elif self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({self.proc.returncode}) before READY=1; see {self.stderr_path}")
        raise TimeoutError(f"{name} sent no READY=1 within {timeout:.0f} s; see {self.stderr_path}")

    def rss_mb(self) -> float:
        """Resident memory now (VmRSS), in MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        """SIGTERM (a clean drain), then SIGKILL if it does not exit within a minute."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()
        self._stderr.close()

    def __enter__(self) -> Spawned:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def clean_env() -> dict[str, str]:
    """The environment without SIDECAR_* settings, so no config file or LLM URL sneaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'clients' / 'python'}"
    return env


class Daemon(Spawned):
    """``sidecar serve`` on a data dir, as a supervisor would run it."""

    def __init__(self, data_dir: Path, run_dir: Path) -> None:
        self.socket = str(run_dir / "s.sock")
        argv = [sys.executable, "-m", "sidecar", "serve", "--data-dir", str(data_dir), "--socket", self.socket]
        super().__init__(argv, run_dir, clean_env())


REDIS = shutil.which("redis-server")


def redis_version() -> str:
    out = subprocess.run([REDIS or "redis-server", "--version"], capture_output=True, text=True).stdout
    found = re.search(r"v=(\S+)", out)
    return found.group(1) if found else "?"


class RedisServer(Spawned):
    """A private redis-server on a Unix socket: AOF on, fsync'd before every reply (or, with
    ``fsync=False``, never: a server that costs the load generator next to nothing, so its
    figures are the generator's own ceiling), no snapshots. ``appendfsync`` chooses another
    AOF policy (``everysec``)."""

    def __init__(self, run_dir: Path, *, fsync: bool = True, appendfsync: str = "always") -> None:
        if REDIS is None:
            raise FileNotFoundError("redis-server is not installed")
        self.socket = str(run_dir / "redis.sock")
        argv = [
            REDIS,
            "--port", "0",
            "--unixsocket", self.socket,
            "--unixsocketperm", "700",
            "--dir", str(run_dir),
            "--appendonly", "yes" if fsync else "no",
            "--appendfsync", appendfsync,
            "--save", "",
            "--supervised", "systemd",
            "--logfile", str(run_dir / "redis.log"),
        ]  # fmt: skip
        super().__init__(argv, run_dir, dict(os.environ), timeout=30)  # no READY=1 if built without systemd


class EchoServer(Spawned):
    """``bench/echo_server.py``: the least a Python server on a Unix socket can do per line
    (hand it back), on the event loop the daemon runs on. The floor of any round trip."""

    def __init__(self, run_dir: Path, loop: str) -> None:
        self.socket = str(run_dir / "echo.sock")
        argv = [sys.executable, str(ROOT / "bench" / "echo_server.py"), self.socket, loop]
        super().__init__(argv, run_dir, clean_env(), timeout=30)


def event_loop() -> str:
    """The loop the daemon runs on by default (``[server] event_loop = "auto"``)."""
    from sidecar.daemon.server import use_uvloop

    return "uvloop" if use_uvloop("auto") else "asyncio"


# --- the load generator ----------------------------------------------------------------------


class Wire(Protocol):
    def replies(self, buf: bytearray) -> list[int | None]:
        """Take the complete replies off the front of ``buf``: each one's request id, or None
        when replies come back in request order."""
        ...


class JsonRpc:
    """Newline-delimited JSON-RPC 2.0; replies may come out of order and are matched by id."""

    def replies(self, buf: bytearray) -> list[int | None]:
        *lines, rest = bytes(buf).split(b"\n")
        buf[:] = rest
        out: list[int | None] = []
        for line in lines:
            reply = json.loads(line)
            if "error" in reply:
                raise RuntimeError(f"error from the daemon: {reply['error']}")
            out.append(reply["id"])
        return out


class Resp:
    """Redis's RESP: simple, integer and bulk-string replies, in request order."""

    def replies(self, buf: bytearray) -> list[int | None]:
        out: list[int | None] = []
        pos = 0
        while (end := buf.find(b"\r\n", pos)) >= 0:
            kind = buf[pos : pos + 1]
            if kind == b"-":
                raise RuntimeError(f"error from redis: {bytes(buf[pos:end]).decode()}")
            if kind == b"$" and (size := int(buf[pos + 1 : end])) >= 0:
                if len(buf) < end + 2 + size + 2:
                    break
                end += 2 + size
            out.append(None)
            pos = end + 2
        del buf[:pos]
        return out


def resp_command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def request(i: int, method: str, params: dict) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}).encode() + b"\n"


class _Conn:
    """One connection of the load generator: what it has received and what it awaits."""

    def __init__(self, index: int, sock: socket.socket, to_send: int) -> None:
        self.index = index
        self.sock = sock
        self.buf = bytearray()
        self.pending: dict[int, float] = {}  # request id -> when it was sent, in send order
        self.to_send = to_send


def load(
    path: str,
    connections: int,
    in_flight: int,
    per_connection: int,
    make: Callable[[int, int], bytes],
    wire: Wire | None = None,
) -> tuple[float, list[float]]:
    """Send ``per_connection`` requests on each connection, ``in_flight`` outstanding at a time
    (the next one goes as soon as a reply comes); ``make(connection, id)`` encodes one.

    Returns (seconds, each request's latency from send to reply)."""
    wire = wire or JsonRpc()
    sel = selectors.DefaultSelector()
    conns: list[_Conn] = []
    latencies: list[float] = []
    next_id = 0

    def send(c: _Conn, n: int) -> None:
        nonlocal next_id
        out = []
        for _ in range(n):
            next_id += 1
            c.pending[next_id] = time.perf_counter()
            out.append(make(c.index, next_id))
        c.to_send -= n
        data = b"".join(out)
        try:
            sent = c.sock.send(data)  # small: the socket's buffer almost always takes it whole
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            c.sock.setblocking(True)
            c.sock.sendall(data[sent:])
            c.sock.setblocking(False)

    try:
        for i in range(connections):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conns.append(_Conn(i, s, per_connection))
            s.connect(path)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, conns[-1])
        t0 = time.perf_counter()
        for c in conns:
            send(c, min(in_flight, c.to_send))
        remaining = connections * per_connection
        while remaining:
            for key, _ in sel.select():
                c = key.data
                chunk = c.sock.recv(1 << 20)
                if not chunk:
                    raise RuntimeError("the server closed the connection")
                c.buf += chunk
                now = time.perf_counter()
                answered = wire.replies(c.buf)
                for rid in answered:
                    sent = c.pending.pop(rid if rid is not None else next(iter(c.pending)))
                    latencies.append(now - sent)
                remaining -= len(answered)
                if answered and c.to_send:
                    send(c, min(len(answered), c.to_send))
        took = time.perf_counter() - t0
    finally:
        sel.close()
        for c in conns:
            c.sock.close()
    return took, latencies


def pin(pid: int, cpus: set[int]) -> None:
    """Run every thread of process ``pid`` (0: this one) on ``cpus`` only."""
    tids = [pid] if pid == 0 else [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


@contextlib.contextmanager
def placed(client: int, server: int, *pids: int) -> Iterator[None]:
    """This process on CPU ``client`` and the servers ``pids`` on CPU ``server``, for the
    duration: a round trip then costs the same every time. Left to the scheduler, the two
    ends sometimes share a core (each wake-up a plain switch) and sometimes not (a wake-up
    of another core, about 35 us on these virtual machines), and the figures jump between
    the two from one run to the next."""
    everything = set(range(os.cpu_count() or 1))
    try:
        pin(0, {client})
        for pid in pids:
            pin(pid, {server})
        yield
    finally:
        pin(0, everything)
        for pid in pids:
            pin(pid, everything)


def regimes() -> dict[str, tuple[int, int]]:
    """Where the two ends of a round trip run: (client CPU, server CPU)."""
    if (os.cpu_count() or 1) < 2:
        return {"the same core": (0, 0)}
    return {"another core": (0, 1), "the same core": (0, 0)}


def round_trips(path: str, make: Callable[[int], bytes], count: int) -> float:
    """Median seconds of ``count`` sequential round trips on one connection.

    The clock stops when the whole reply line is in; it is decoded after (every reply is
    checked), so that a big reply's decoding in this Python client is not counted as the
    server's time."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        f = s.makefile("rb")
        times = []
        for i in range(count):
            t = time.perf_counter()
            s.sendall(make(i))
            line = f.readline()
            times.append(time.perf_counter() - t)
            reply = json.loads(line)
            if "error" in reply:
                raise RuntimeError(f"error from the daemon: {reply['error']}")
    return statistics.median(times)


def call(path: str, method: str, params: dict) -> object:
    """One request, its result (for setting things up)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(request(1, method, params))
        reply = json.loads(s.makefile("rb").readline())
    if "error" in reply:
        raise RuntimeError(f"error from the daemon: {reply['error']}")
    return reply["result"]
