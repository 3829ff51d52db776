"""Start-up, readiness, SIGTERM drain, kill -9 and restart, systemd's protocols."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import pytest
from sidecar_client import AsyncClient, Client, DaemonUnavailable

from tests.daemon.conftest import child_env


def test_socket_is_private_and_health_answers(daemon) -> None:
    st = os.stat(daemon.socket_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(daemon.socket_path)).st_mode) == 0o700
    with Client(daemon.socket_path) as c:
        health = c.call("sys.health")
    assert health["status"] == "ok" and health["pid"] == daemon.proc.pid
    assert (daemon.data_dir / "tasks.graph.json").is_file()  # the scaffold was created


def test_logs_are_json_lines_on_stderr(daemon) -> None:
    with Client(daemon.socket_path) as c:
        c.call("sys.health")
    assert daemon.stop() == 0
    records = [json.loads(line) for line in daemon.stderr().splitlines()]
    events = [r["event"] for r in records]
    assert "daemon.ready" in events and "daemon.stopped" in events
    assert "daemon.connection_open" not in events  # per-connection lines are debug (tests/daemon/test_logging.py)
    assert all("timestamp" in r and "level" in r for r in records)


def test_sigterm_drains_in_flight_appends_and_exits_zero(daemon) -> None:
    acked: list[dict] = []

    async def flood() -> None:
        async with await AsyncClient.connect(daemon.socket_path) as client:

            async def worker() -> None:
                while True:  # keep requests in flight until the daemon goes away
                    try:
                        ack = await client.call("log.append", {"conversation_id": "drain", "type": "t.x"})
                    except ConnectionError:
                        return
                    acked.append(ack)
                    if len(acked) == 100:
                        daemon.proc.send_signal(signal.SIGTERM)

            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(worker)

    anyio.run(flood)
    started = time.monotonic()
    assert daemon.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    assert not os.path.exists(daemon.socket_path)  # unlinked on the way out
    assert acked, "no append was answered before the drain"
    lines = [json.loads(x) for x in (daemon.data_dir / "logs" / "drain.jsonl").read_text().splitlines()]
    on_disk = {e["id"]: e["seq"] for e in lines}
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))  # none half-written
    for ack in acked:
        assert on_disk[ack["id"]] == ack["seq"]


def test_subscribers_are_told_of_shutdown(daemon) -> None:
    with Client(daemon.socket_path) as c:
        events = c.subscribe({"conversation_id": "c1"})
        c2 = Client(daemon.socket_path)
        c2.call("log.append", {"conversation_id": "c1", "type": "a.b"})
        first = next(events)
        assert first["seq"] == 1
        daemon.proc.send_signal(signal.SIGTERM)
        assert list(events) == []  # the iterator ends at sys.shutdown instead of hanging
        c2.close()
    assert daemon.proc.wait(timeout=10) == 0


def test_kill_9_then_restart_keeps_every_acknowledged_append(start_daemon, tmp_path: Path) -> None:
    first = start_daemon()
    with Client(first.socket_path) as c:
        acks = [c.call("log.append", {"conversation_id": "k", "type": "a.b", "data": {"i": i}}) for i in range(50)]
    first.proc.kill()
    first.proc.wait(timeout=10)
    assert os.path.exists(first.socket_path)  # left behind by the crash
    second = start_daemon(socket_path=first.socket_path)  # reclaims the stale socket
    with Client(second.socket_path) as c:
        for ack in acks:
            assert c.call("log.get", {"event_id": ack["id"]})["seq"] == ack["seq"]
        assert c.call("log.append", {"conversation_id": "k", "type": "a.b"})["seq"] == 51


def test_second_daemon_on_the_same_socket_or_data_dir_is_refused(daemon, start_daemon, tmp_path: Path) -> None:
    same_socket = start_daemon(socket_path=daemon.socket_path, data_dir=tmp_path / "other", wait=False)
    assert same_socket.proc.wait(timeout=20) == 1
    assert "already running" in same_socket.stderr()
    same_data = start_daemon(data_dir=daemon.data_dir, wait=False)
    assert same_data.proc.wait(timeout=20) == 1
    assert "already running" in same_data.stderr() and "data directory" in same_data.stderr()
    with Client(daemon.socket_path) as c:  # the first one is untouched
        assert c.call("sys.health")["status"] == "ok"


def test_a_live_socket_is_never_unlinked(daemon, start_daemon, tmp_path: Path) -> None:
    os.unlink(daemon.socket_path + ".lock")  # even with its lock file gone...
    intruder = start_daemon(socket_path=daemon.socket_path, data_dir=tmp_path / "other", wait=False)
    assert intruder.proc.wait(timeout=20) == 1
    assert "already answers" in intruder.stderr()
    with Client(daemon.socket_path) as c:
        assert c.call("sys.health")["status"] == "ok"


def test_socket_path_too_long(start_daemon, tmp_path: Path) -> None:
    long_path = str(tmp_path / ("d" * 60) / ("s" * 60 + ".sock"))
    d = start_daemon(socket_path=long_path, wait=False)
    assert d.proc.wait(timeout=20) == 1
    assert "107-byte limit" in d.stderr()


def test_directory_writable_by_others_and_not_ours_is_refused(start_daemon, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, 65534, 65534)
    os.chmod(shared, 0o777)
    d = start_daemon(socket_path=str(shared / "s.sock"), wait=False)
    assert d.proc.wait(timeout=20) == 1
    assert "writable by others" in d.stderr()


@pytest.fixture
def public_dir():
    """A directory user nobody can reach (pytest's tmp dirs are owner-only)."""
    path = tempfile.mkdtemp(prefix="sidecar-peer-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def loosen(socket_path: str) -> None:
    """Let anyone reach the socket, so only the SO_PEERCRED check stands in the way."""
    os.chmod(os.path.dirname(socket_path), 0o755)
    os.chmod(socket_path, 0o666)


def test_peer_with_another_uid_is_refused(start_daemon, public_dir: str) -> None:
    daemon = start_daemon(socket_path=os.path.join(public_dir, "run", "s.sock"))
    loosen(daemon.socket_path)
    script = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
        's.sendall(b\'{"jsonrpc":"2.0","id":1,"method":"sys.health"}\\n\');'
        "print(s.makefile().readline().strip())"
    )
    run = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            script,
            daemon.socket_path,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    reply = json.loads(run.stdout)
    assert reply["error"]["code"] == -32003 and "uid 65534" in reply["error"]["message"]


def test_allow_list_lets_another_uid_in(start_daemon, public_dir: str) -> None:
    d = start_daemon(
        config_text="[server]\nallow_uids = [65534]\n", socket_path=os.path.join(public_dir, "run", "s.sock")
    )
    loosen(d.socket_path)
    script = "import sys; from sidecar_client import Client; print(Client(sys.argv[1]).call('sys.health')['status'])"
    run = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script, d.socket_path],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
    )
    assert run.stdout.strip() == "ok", run.stderr


def test_no_daemon_gives_a_clear_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing.sock")
    with pytest.raises(DaemonUnavailable, match="nothing.sock"):
        Client(missing)


def test_sighup_reloads_the_config(start_daemon, tmp_path: Path) -> None:
    d = start_daemon(config_text="[server]\nmax_message_bytes = 100000\n")
    big = (
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "log.append",
                "params": {"conversation_id": "h", "type": "a.b", "data": {"x": "y" * 5000}},
            }
        ).encode()
        + b"\n"
    )

    def send_big() -> dict:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        s.connect(d.socket_path)
        s.sendall(big)
        reply = json.loads(s.makefile("rb").readline())
        s.close()
        return reply

    assert "result" in send_big()
    config = next(tmp_path.glob("config*.toml"))
    config.write_text("[server]\nmax_message_bytes = 2000\n")
    d.proc.send_signal(signal.SIGHUP)
    for _ in range(200):  # the reload is asynchronous: poll with real requests, no sleeping
        reply = send_big()
        if "error" in reply:
            break
    assert reply["error"]["code"] == -32600
    assert "daemon.reloaded" in d.stderr()
    config.write_text("[server]\nmax_message_bytes = 'lots'\n")  # a broken file is refused...
    d.proc.send_signal(signal.SIGHUP)
    with Client(d.socket_path) as c:
        for _ in range(200):
            c.call("sys.health")
            if "daemon.reload_failed" in d.stderr():
                break
    assert "daemon.reload_failed" in d.stderr()
    assert send_big()["error"]["code"] == -32600  # ...and the last good one stays


def test_sigint_stops_cleanly_too(daemon) -> None:
    with Client(daemon.socket_path) as c:
        c.call("log.append", {"conversation_id": "i", "type": "a.b"})
    assert daemon.stop(signal.SIGINT) == 0
    assert not os.path.exists(daemon.socket_path)
    assert list((daemon.data_dir / "journal").glob("*.wal")) == []  # checkpointed on the way out


def test_sigterm_right_after_ready_is_a_graceful_stop(start_daemon, tmp_path) -> None:
    """READY=1 is sent once the signal handlers are in place: a supervisor may stop the
    daemon the instant it is ready (it used to die of the signal, -15, now and then)."""
    for n in range(5):
        d = start_daemon(data_dir=tmp_path / f"d{n}")
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=20) == 0, d.stderr()
        assert "daemon.stopped" in d.stderr()
