"""The daemon's logs: readable on a terminal, JSON lines otherwise, per-connection lines at debug.

The terminal is a real pseudo-terminal on the daemon's stderr; a thread drains it so the daemon
never blocks on a full terminal buffer, and readiness is the notify socket's READY=1.
"""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from sidecar_client import Client

from sidecar.daemon.logging import configure, use_console
from tests.daemon.conftest import NotifyListener, child_env


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_a_file_gets_json_lines_and_connections_only_at_debug(start_daemon) -> None:
    quiet = start_daemon()
    with Client(quiet.socket_path) as c:
        c.call("sys.health")
    assert quiet.stop() == 0
    events = [r["event"] for r in records(quiet.stderr())]
    assert "daemon.ready" in events
    assert "daemon.connection_open" not in events and "daemon.connection_closed" not in events

    chatty = start_daemon(config_text='[server]\nlog_level = "debug"\n')
    with Client(chatty.socket_path) as c:
        c.call("sys.health")
    assert chatty.stop() == 0
    levels = {r["event"]: r["level"] for r in records(chatty.stderr())}
    assert levels["daemon.connection_open"] == "debug" and levels["daemon.connection_closed"] == "debug"


def served(d) -> None:
    """One request answered: the daemon is fully up (its signal handling included)."""
    with Client(d.socket_path) as c:
        assert c.call("sys.health")["status"] == "ok"


def test_the_config_key_and_the_flag_choose_the_format(start_daemon) -> None:
    readable = start_daemon(config_text='[server]\nlog_format = "console"\n')
    served(readable)
    assert readable.stop() == 0
    text = readable.stderr()
    ready = next(line for line in text.splitlines() if "daemon.ready" in line)
    assert not ready.startswith("{") and "[info" in ready
    assert "\x1b[" not in text  # a file: no colour codes even when console is forced

    flagged = start_daemon(config_text='[server]\nlog_format = "console"\n', args=["--log-format", "json"])
    served(flagged)
    assert flagged.stop() == 0
    assert "daemon.ready" in [r["event"] for r in records(flagged.stderr())]  # the flag wins


def test_a_bad_log_format_is_a_one_line_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nlog_format = "pretty"\n')
    run = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "log_format" in run.stderr and "'console'" in run.stderr and "Traceback" not in run.stderr


class TerminalOutput:
    """Everything written to a pseudo-terminal, drained by a thread until its writers close it."""

    def __init__(self, controller: int) -> None:
        self._fd = controller
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self._fd, 4096)
            except OSError:  # EIO: every writer is gone
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    def text(self, timeout: float = 10.0) -> str:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the terminal never closed"
        return b"".join(self._chunks).decode(errors="replace")


@pytest.fixture
def on_a_terminal(tmp_path: Path) -> Iterator:
    """``run(*args)``: a daemon whose stderr is a terminal; returns what it printed there."""
    procs: list[subprocess.Popen] = []

    def run(*args: str) -> str:
        controller, terminal = pty.openpty()
        notify = NotifyListener(str(tmp_path / f"notify{len(procs)}"))
        sock = str(tmp_path / f"run{len(procs)}" / "s.sock")
        env = {k: v for k, v in child_env({"NOTIFY_SOCKET": notify.path}).items() if k != "NO_COLOR"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--data-dir", str(tmp_path / "data"), "--socket", sock, *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
        )
        procs.append(proc)
        os.close(terminal)
        out = TerminalOutput(controller)
        try:
            notify.wait_for("READY=1")
            with Client(sock) as c:
                c.call("sys.health")
            proc.terminate()
            assert proc.wait(timeout=10) == 0
            return out.text()
        finally:
            notify.close()
            os.close(controller)

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_a_terminal_gets_readable_coloured_lines(on_a_terminal) -> None:
    text = on_a_terminal()
    lines = [line for line in text.splitlines() if line.strip()]
    assert any("daemon.ready" in line for line in lines) and any("daemon.stopped" in line for line in lines)
    assert not any(line.lstrip().startswith("{") for line in lines)  # no JSON
    assert "\x1b[" in text  # coloured


def test_json_on_a_terminal_when_asked(on_a_terminal) -> None:
    lines = [line for line in on_a_terminal("--log-format", "json").splitlines() if line.strip()]
    assert "daemon.ready" in [json.loads(line)["event"] for line in lines]


def test_the_console_escapes_terminal_controls_from_log_values() -> None:
    """A value may quote a client or the LLM server: it must not steer the operator's terminal."""
    out = io.StringIO()
    try:
        configure("info", "console", stream=out)
        log = structlog.get_logger("t")
        log.warning("narrator.failed", error="\x1b]52;c;aGVsbG8=\x07\x1b[2Jgone\u202e")
        try:
            raise ValueError("boom \x1b[31mred")
        except ValueError:
            log.exception("narrator.crashed")
    finally:
        structlog.reset_defaults()
    text = out.getvalue()
    assert "narrator.failed" in text and "narrator.crashed" in text and "ValueError" in text
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    assert "\\u001b]52" in text and "\\u001b[31mred" in text


def test_auto_means_console_only_on_a_terminal() -> None:
    controller, terminal = pty.openpty()
    try:
        with open(terminal, "w", closefd=False) as tty:
            assert use_console("auto", tty) and not use_console("json", tty)
        assert not use_console("auto", io.StringIO()) and use_console("console", io.StringIO())
    finally:
        os.close(controller)
        os.close(terminal)
