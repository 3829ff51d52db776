"""A real daemon in a temp dir, over a real socket, started and stopped as a real process.

Readiness is the systemd notify protocol itself: the fixture hands the daemon a datagram
socket as ``NOTIFY_SOCKET`` and waits for ``READY=1``, so there is no polling and no sleep.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support_nats import jetstream_config

ROOT = Path(__file__).resolve().parents[2]


class NotifyListener:
    """Our end of ``$NOTIFY_SOCKET``: what a supervisor hears from the daemon it runs."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages: list[str] = []

    def wait_for(self, state: str, timeout: float = 20.0, context: Callable[[], str] = str) -> str:
        """The next datagram that starts with ``state`` (READY=1, STOPPING=1, ...)."""
        self.sock.settimeout(timeout)
        while True:
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                raise AssertionError(f"daemon never sent {state}\n{context()}") from None
            self.messages.append(msg)
            if msg.startswith(state):
                return msg

    def close(self) -> None:
        self.sock.close()


class Raw:
    """A bare socket speaking NDJSON, to test the wire exactly."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def recv(self) -> object:
        line = self.file.readline()
        assert line, "connection closed"
        return json.loads(line)

    def closed(self) -> bool:
        return self.file.readline() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@dataclass
class DaemonProc:
    proc: subprocess.Popen
    socket_path: str
    data_dir: Path
    notify: NotifyListener
    stderr_path: Path

    @property
    def messages(self) -> list[str]:
        return self.notify.messages

    def wait_for(self, state: str, timeout: float = 20.0) -> str:
        return self.notify.wait_for(state, timeout, lambda: f"stderr:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python"), env.get("PYTHONPATH", "")])
    for name in [n for n in env if n.startswith("SIDECAR_")]:
        del env[name]  # the test's own settings only
    env.update(extra or {})
    return env


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator:
    """Start daemons: ``start_daemon(config_text=None, env=None, wait=True, ...)`` -> DaemonProc.

    ``max_fds`` sets the daemon's RLIMIT_NOFILE."""
    started: list[DaemonProc] = []
    counter = [0]

    def start(
        config_text: str | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
        data_dir: Path | None = None,
        socket_path: str | None = None,
        args: list[str] | None = None,
        max_fds: int | None = None,
    ) -> DaemonProc:
        counter[0] += 1
        n = counter[0]
        run_dir = tmp_path / f"run{n}"
        sock = socket_path or str(run_dir / "sidecar.sock")
        data = data_dir or tmp_path / "data"
        notify_path = str(tmp_path / f"notify{n}")
        notify = NotifyListener(notify_path)
        cmd = [sys.executable, "-m", "sidecar", "serve", "--data-dir", str(data), "--socket", sock]
        if config_text is not None:
            cfg = tmp_path / f"config{n}.toml"
            cfg.write_text(config_text)
            cmd += ["--config", str(cfg)]
        cmd += args or []
        stderr_path = tmp_path / f"daemon{n}.log"
        with open(stderr_path, "wb") as stderr:  # the child has its own descriptor of it
            proc = subprocess.Popen(
                cmd,
                env=child_env({"NOTIFY_SOCKET": notify_path, **(env or {})}),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=None
                if max_fds is None
                else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds,) * 2),
            )
        d = DaemonProc(proc, sock, data, notify, stderr_path)
        started.append(d)
        if wait:
            d.wait_for("READY=1")
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=10)
        d.notify.close()


@pytest.fixture
def daemon(start_daemon) -> DaemonProc:
    return start_daemon()


@pytest.fixture(params=["file", "jetstream"])
def backend_daemon(request: pytest.FixtureRequest, start_daemon) -> DaemonProc:
    """A daemon on each storage backend in turn: the suites that use it are the contract both
    keep (the jetstream one on the shared 3-node cluster, a stream of its own)."""
    if request.param == "file":
        return start_daemon()
    urls = request.getfixturevalue("nats_urls")
    return start_daemon(config_text=jetstream_config(urls, request.getfixturevalue("token")))
