"""deploy/systemd: the units pass ``systemd-analyze``, and the daemon speaks the protocols they
rely on (notify, watchdog, LISTEN_FDS) when run the way sidecar.service runs it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from sidecar_client import Client

from tests.daemon.conftest import NotifyListener, child_env
from tests.deploy.conftest import BIN, ROOT

UNITS = ROOT / "deploy" / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed on this machine")


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as ordered (key, value) pairs: keys may repeat, as systemd allows."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, value = line.split("=", 1)
            current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    (value,) = values(section, key)
    return value


def offline_root(tmp_path: Path, service_text: str | None = None) -> Path:
    """A file-system root holding systemd's own units, ours, and the binaries our units name,
    where the install instructions put them, for ``systemd-analyze --root``."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "lib/systemd").mkdir(parents=True)
    shutil.copytree("/lib/systemd/system", root / "lib/systemd/system", symlinks=True)
    for unit in UNITS.glob("sidecar.*"):
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    if service_text is not None:
        (root / "etc/systemd/system/sidecar.service").write_text(service_text)
    service = parse_unit(UNITS / "sidecar.service")["Service"]
    for line in values(service, "ExecStart") + values(service, "ExecReload"):
        exe = root / shlex.split(line)[0].lstrip("/")
        exe.parent.mkdir(parents=True, exist_ok=True)
        exe.write_text(f'#!/bin/sh\nexec {BIN / "sidecar"} "$@"\n')
        exe.chmod(0o755)
    return root


def analyze(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, *args, f"--root={root}"], capture_output=True, text=True, timeout=60)


@needs_analyze
def test_systemd_analyze_verify_passes_on_both_units(tmp_path: Path) -> None:
    run = analyze(offline_root(tmp_path), "verify", "sidecar.service", "sidecar.socket")
    assert (run.returncode, run.stdout + run.stderr) == (0, "")


@needs_analyze
def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    broken = (UNITS / "sidecar.service").read_text().replace("WatchdogSec=", "WatchdogSecs=")
    run = analyze(offline_root(tmp_path / "broken", broken), "verify", "sidecar.service")
    assert "Unknown key 'WatchdogSecs'" in run.stderr


@needs_analyze
def test_the_service_is_hardened(tmp_path: Path) -> None:
    run = analyze(offline_root(tmp_path), "security", "--offline=true", "sidecar.service")
    assert run.returncode == 0, run.stderr
    level = re.search(r"Overall exposure level for sidecar.service: ([\d.]+)", run.stdout)
    assert level is not None, run.stdout
    assert float(level.group(1)) <= 2.0, run.stdout  # systemd's scale: 0 (safe) .. 10 (exposed)


def test_the_units_say_what_the_issue_asks() -> None:
    service = parse_unit(UNITS / "sidecar.service")["Service"]
    sock = parse_unit(UNITS / "sidecar.socket")["Socket"]
    env = dict(v.split("=", 1) for v in values(service, "Environment"))
    assert one(service, "Type") == "notify"
    assert int(one(service, "WatchdogSec")) > 0
    assert one(service, "RuntimeDirectoryMode") == "0700"
    assert (one(service, "NoNewPrivileges"), one(service, "ProtectSystem"), one(service, "PrivateTmp")) == (
        "yes",
        "strict",
        "yes",
    )
    writable = one(service, "ReadWritePaths").split()
    assert env["SIDECAR_DATA_DIR"] in writable and os.path.dirname(env["SIDECAR_SOCKET"]) in writable
    assert one(sock, "ListenStream") == env["SIDECAR_SOCKET"]  # activation and plain start agree
    assert (one(sock, "SocketMode"), one(sock, "DirectoryMode")) == ("0600", "0700")


def test_the_daemon_runs_as_the_unit_says_with_socket_activation_notify_and_watchdog(tmp_path: Path) -> None:
    """What systemd does, done by hand: the unit's command and environment (paths moved into
    the temp dir), the socket bound as sidecar.socket binds it and passed as fd 3 with
    LISTEN_PID/LISTEN_FDS, a notify socket, and a watchdog."""
    service = parse_unit(UNITS / "sidecar.service")["Service"]
    sock_unit = parse_unit(UNITS / "sidecar.socket")["Socket"]

    def moved(path: str) -> str:
        return str(tmp_path / path.lstrip("/"))

    env = {k: moved(v) for k, v in (e.split("=", 1) for e in values(service, "Environment"))}
    path = moved(one(sock_unit, "ListenStream"))
    os.makedirs(os.path.dirname(path), mode=int(one(sock_unit, "DirectoryMode"), 8))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, int(one(sock_unit, "SocketMode"), 8))
    listener.listen(int(one(sock_unit, "Backlog")))

    argv = shlex.split(one(service, "ExecStart"))
    argv[0] = str(BIN / os.path.basename(argv[0]))
    notify = NotifyListener(str(tmp_path / "notify"))
    watchdog_usec = 200_000  # the unit's 30 s, shortened: a ping every 0.1 s
    proc = subprocess.Popen(
        ["sh", "-c", f"LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=sidecar.socket exec {shlex.join(argv)}"],
        pass_fds=(3,),
        preexec_fn=lambda: os.dup2(listener.fileno(), 3),
        env=child_env({**env, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(watchdog_usec)}),
        stderr=open(tmp_path / "daemon.log", "wb"),  # noqa: SIM115 - the child owns it
    )
    try:
        ready = notify.wait_for("READY=1", context=lambda: (tmp_path / "daemon.log").read_text())
        assert f"MAINPID={proc.pid}" in ready
        notify.wait_for("WATCHDOG=1")
        notify.wait_for("WATCHDOG=1")
        with Client(path) as c:  # the inherited socket, not one the daemon bound
            assert c.call("sys.health")["status"] == "ok"
            c.call("log.append", {"conversation_id": "unit", "type": "agent.progress", "data": {}})
        assert (Path(env["SIDECAR_DATA_DIR"]) / "logs" / "unit.jsonl").exists()
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        assert proc.wait(timeout=int(one(service, "TimeoutStopSec"))) == 0
        assert stat.S_ISSOCK(os.stat(path).st_mode)  # systemd's socket: not ours to remove
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        notify.close()
        listener.close()
