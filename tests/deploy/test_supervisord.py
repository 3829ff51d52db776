"""deploy/supervisord/sidecar.conf under a real supervisord: start, restart after kill -9, stop."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from sidecar_client import Client

from tests.deploy.conftest import BIN, ROOT, Site, ready_pid

CONF = ROOT / "deploy" / "supervisord" / "sidecar.conf"


def supervisord_conf(site: Site) -> Path:
    """The host's supervisord.conf: its own sockets in the temp dir, and our file included."""
    d = site.dir
    path = d / "supervisord.conf"
    path.write_text(
        f"""[unix_http_server]
file={d}/supervisor.sock
chmod=0700

[supervisord]
nodaemon=true
logfile={d}/supervisord.log
pidfile={d}/supervisord.pid
childlogdir={d}
directory={d}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{d}/supervisor.sock

[include]
files = {CONF}
"""
    )
    return path


def append(socket_path: str, n: int, start: int) -> list[str]:
    with Client(socket_path) as c:
        return [
            c.call("log.append", {"conversation_id": "sv", "type": "agent.progress", "data": {"i": i}})["id"]
            for i in range(start, start + n)
        ]


def test_supervisord_starts_restarts_after_kill_9_and_stops_with_exit_0(site: Site) -> None:
    conf = supervisord_conf(site)
    supervisord = subprocess.Popen(
        [BIN / "supervisord", "-c", conf], env=site.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )

    def ctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [BIN / "supervisorctl", "-c", conf, *args], env=site.env, capture_output=True, text=True, timeout=30
        )

    def log() -> str:
        return (site.dir / "supervisord.log").read_text(errors="replace")

    try:
        first = ready_pid(site.notify, context=log)
        assert ctl("pid", "sidecar").stdout.strip() == str(first)
        assert (site.data_dir / "logs").is_dir()  # SIDECAR_DATA_DIR came through supervisord
        before = append(site.socket_path, 20, 0)

        os.kill(first, signal.SIGKILL)
        second = ready_pid(site.notify, context=log)  # autorestart: a new daemon, ready again
        assert second != first
        assert ctl("pid", "sidecar").stdout.strip() == str(second)
        assert "exited: sidecar (terminated by SIGKILL; not expected)" in log()
        after = append(site.socket_path, 20, 20)

        with Client(site.socket_path) as c:
            events = c.call("log.query", {"conversation_id": "sv", "limit": 100})["events"]
        assert [e["seq"] for e in events] == list(range(1, 41))  # the log carried on, no gap
        assert [e["id"] for e in events] == before + after

        stop = ctl("stop", "sidecar")
        assert "sidecar: stopped" in stop.stdout, stop.stdout + stop.stderr
        # Exit 0 on SIGTERM: the drain finished before stopwaitsecs, no SIGKILL was needed.
        assert "stopped: sidecar (exit status 0)" in log(), log()
        assert not os.path.exists(site.socket_path)  # removed on the way out
    finally:
        supervisord.send_signal(signal.SIGTERM)
        supervisord.wait(timeout=30)


def test_the_program_section_says_what_the_issue_asks() -> None:
    text = CONF.read_text()
    settings = dict(
        line.split(";")[0].split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith(";")
    )
    settings = {k.strip(): v.strip() for k, v in settings.items()}
    assert "[program:sidecar]" in text
    assert settings["command"] == "sidecar serve"  # on PATH; paths from SIDECAR_*
    assert settings["stopsignal"] == "TERM"
    assert int(settings["stopwaitsecs"]) >= 10
    assert settings["autorestart"] == "true"
