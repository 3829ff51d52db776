"""Fixtures for the console: a real ``sidecar web`` process beside a real daemon, and a real
headless Chromium (Debian's, through Playwright's ``executable_path``)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.daemon.conftest import DaemonProc, child_env, daemon, start_daemon  # noqa: F401


@dataclass
class Console:
    """A running ``sidecar web``: its printed URL, split into the parts tests need."""

    proc: subprocess.Popen[str]
    url: str  # the line's URL, token included
    stderr_path: Path

    @property
    def base(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def token(self) -> str:
        return self.url.rpartition("token=")[2]

    def http(self, **kw: object) -> httpx.Client:
        """An HTTP client for the console, with no credentials unless given."""
        return httpx.Client(base_url=self.base, timeout=10, **kw)  # type: ignore[arg-type]

    def authed(self) -> httpx.Client:
        return self.http(headers={"Authorization": f"Bearer {self.token}"})

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@pytest.fixture
def start_console(tmp_path: Path) -> Iterator[Callable[..., Console]]:
    """``start_console(socket_path, *args)``: ``sidecar web --port 0`` on it, once its URL is printed."""
    started: list[Console] = []

    def start(socket_path: str, *args: str) -> Console:
        stderr_path = tmp_path / f"web{len(started)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "web", "--socket", socket_path, "--port", "0", *args],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=open(stderr_path, "wb"),  # noqa: SIM115 - the child owns it
            text=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed once the socket listens
        assert first.startswith("sidecar web: http://"), (first, stderr_path.read_text())
        console = Console(proc, first.split(" ", 2)[2].strip(), stderr_path)
        started.append(console)
        return console

    yield start
    for console in started:
        if console.proc.poll() is None:
            console.proc.kill()
            console.proc.wait(timeout=10)


@pytest.fixture
def console(daemon: DaemonProc, start_console: Callable[..., Console]) -> Console:  # noqa: F811  # noqa: F811
    return start_console(daemon.socket_path)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report how long a new event took to reach the page (test_browser measures it)."""
    from tests.web.test_browser import LATENCIES_MS

    if LATENCIES_MS:
        ordered = sorted(LATENCIES_MS)
        terminalreporter.write_line(
            f"console: a new event reached the page {ordered[len(ordered) // 2]:.0f} ms after its acknowledgement "
            f"(median of {len(ordered)}; max {ordered[-1]:.0f} ms; the promise is under 1000 ms)"
        )
