"""Clients that misbehave: floods of connections, too few file descriptors, clients that
never read, send half a line, or vanish mid-request. The daemon keeps its limits, keeps
serving everyone else, and gives every descriptor back."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
from sidecar_client import AsyncClient, Client

from tests.daemon.conftest import Raw, child_env

HEALTH = b'{"jsonrpc":"2.0","id":1,"method":"sys.health"}\n'


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def eventually(check: Callable[[], object], expected: object, timeout: float = 20.0) -> None:
    """Wait until ``check()`` returns ``expected``: the daemon learns of closes on its own
    schedule, so we watch for the state rather than guess a delay."""
    deadline = time.monotonic() + timeout
    while (got := check()) != expected:
        assert time.monotonic() < deadline, f"still {got!r}, never {expected!r}"
        time.sleep(0.01)


def flood(path: str, count: int) -> tuple[list[Raw], list[dict]]:
    """Open ``count`` connections, all at once, each asking sys.health; the replies in order."""
    socks = [Raw(path) for _ in range(count)]
    for s in socks:
        try:
            s.send(HEALTH)
        except BrokenPipeError:
            pass  # refused and closed before we spoke: the refusal is still there to read
    return socks, [s.recv() for s in socks]


def test_a_flood_of_connections_meets_max_connections(start_daemon) -> None:
    d = start_daemon(config_text="[server]\nmax_connections = 20\n")
    baseline = fds(d.proc.pid)
    settled = []
    with Client(d.socket_path) as watcher:
        for _ in range(2):
            socks, replies = flood(d.socket_path, 150)
            try:
                served = [r for r in replies if "result" in r]
                refused = [r for r in replies if "error" in r]
                assert len(served) == 19 and len(refused) == 131  # the watcher holds the 20th
                assert {r["error"]["code"] for r in refused} == {-32005}
                assert "too many connections" in refused[0]["error"]["message"]
                assert fds(d.proc.pid) <= baseline + 20 + 32 + 4  # served, refusals lingering, a few on demand
            finally:
                for s in socks:
                    s.close()
            stats = lambda: {k: watcher.call("sys.stats")[k] for k in ("connections", "refusing")}  # noqa: E731
            eventually(stats, {"connections": 1, "refusing": 0})
            settled.append(fds(d.proc.pid))
    assert settled[0] == settled[1], settled  # every descriptor given back


def test_file_descriptors_never_run_out(start_daemon) -> None:
    """RLIMIT_NOFILE of 128 with the default max_connections (1024): the daemon caps itself
    below the limit, refuses the rest with a reason, appends keep working throughout, and a
    second flood leaves it holding exactly what it held after the first."""
    d = start_daemon(max_fds=128)
    worker = Client(d.socket_path)
    settled = []
    for _ in range(2):
        socks, replies = flood(d.socket_path, 400)
        try:
            served = sum("result" in r for r in replies)
            assert 0 < served < 100  # the cap leaves descriptors for the store
            assert all(r["error"]["code"] == -32005 for r in replies if "error" in r)
            for n in range(20):  # log files, the journal: the store still gets its descriptors
                worker.call("log.append", {"conversation_id": f"fd{n}", "type": "agent.progress", "data": {}})
            assert fds(d.proc.pid) <= 128
        finally:
            for s in socks:
                s.close()
        eventually(lambda: worker.call("sys.stats")["connections"], 1)
        settled.append(fds(d.proc.pid))
    assert settled[0] == settled[1], settled  # nothing leaked
    worker.close()
    assert d.stop() == 0


def test_out_of_descriptors_the_accept_loop_refuses_with_a_spare(tmp_path: Path) -> None:
    """The EMFILE path on its own: a process with every descriptor in use frees its spare,
    accepts the waiting peer, tells it why, and is ready for the next."""
    path = str(tmp_path / "emfile.sock")
    script = f"""
import os, resource, select, socket
from sidecar.daemon.unix import SpareDescriptor
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind({path!r}); listener.listen(8)
spare = SpareDescriptor()
hog = []
try:
    while True:
        hog.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
print("full", flush=True)
for _ in range(2):
    select.select([listener], [], [])
    try:
        listener.accept()
        print("accepted?", flush=True)
    except OSError as exc:
        print(exc.errno, spare.refuse_one(listener, b"out of file descriptors\\n"), flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert proc.stdout.readline().strip() == "full"
        for _ in range(2):
            conn = Raw(path)
            assert conn.sock.recv(100) == b"out of file descriptors\n"
            conn.close()
            assert proc.stdout.readline().split() == ["24", "True"]  # EMFILE, and refused
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()


def test_a_client_that_never_reads_stalls_only_itself(start_daemon) -> None:
    """A client that sends requests and never reads its (large) replies."""
    d = start_daemon()
    with Client(d.socket_path) as c:
        for _ in range(50):
            c.call("log.append", {"conversation_id": "big", "type": "a.b", "data": {"pad": "x" * 4000}})
    before = rss_kb(d.proc.pid)
    stalled = Raw(d.socket_path)
    stalled.sock.setblocking(False)
    request = b'{"jsonrpc":"2.0","id":1,"method":"log.tail","params":{"conversation_id":"big","limit":50}}\n'
    try:  # ask for ~200 KB answers until the daemon stops reading from us (back-pressure)
        for _ in range(20_000):
            stalled.sock.send(request)
    except BlockingIOError:
        pass  # its socket buffers are full: the daemon has stopped reading from it

    async def others() -> list[int]:
        async with await AsyncClient.connect(d.socket_path) as c:
            with anyio.fail_after(10):
                return [
                    (await c.call("log.append", {"conversation_id": "busy", "type": "a.b", "data": {"n": n}}))["seq"]
                    for n in range(100)
                ]

    try:
        assert anyio.run(others) == list(range(1, 101))  # everyone else is served as usual
        # Replies wait in a bounded buffer (1 MiB), not in memory without end: answered in
        # place, each ~200 KB tail would otherwise stay queued for a client that never reads.
        assert rss_kb(d.proc.pid) - before < 32_000
    finally:
        stalled.close()
    with Client(d.socket_path) as c:
        eventually(lambda: c.call("sys.stats")["connections"], 1)
        assert c.call("sys.health")["status"] == "ok"


def test_half_a_line_holds_up_nobody(daemon) -> None:
    slow = Raw(daemon.socket_path)
    try:
        slow.send(HEALTH[:20])  # and then nothing, for now
        with Client(daemon.socket_path) as c:
            assert c.call("sys.health")["status"] == "ok"
        slow.send(HEALTH[20:])
        assert slow.recv()["result"]["status"] == "ok"
    finally:
        slow.close()


def vanish(path: str, n: int) -> None:
    """Connect, ask for an append and a subscription (whole, or cut short), and vanish."""
    raw = Raw(path)
    if n % 2:  # an abortive close: RST, not FIN
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    append = {"conversation_id": "gone", "type": "a.b", "data": {"n": n}}
    subscribe = {"conversation_id": "gone", "from_seq": 1}
    lines = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "log.append", "params": append}) + "\n"
    lines += json.dumps({"jsonrpc": "2.0", "id": 2, "method": "log.subscribe", "params": subscribe}) + "\n"
    raw.send(lines.encode()[: len(lines) - n % 3 * 30])  # whole, or cut mid-request
    raw.close()


def test_clients_that_vanish_mid_request_leave_nothing_behind(daemon) -> None:
    pid = daemon.proc.pid
    settled = []
    with Client(daemon.socket_path) as c:
        for _ in range(2):
            for n in range(60):
                vanish(daemon.socket_path, n)
            stats = lambda: {k: c.call("sys.stats")[k] for k in ("connections", "subscriptions")}  # noqa: E731
            eventually(stats, {"connections": 1, "subscriptions": 0})
            settled.append(fds(pid))
        assert settled[0] == settled[1], settled  # no descriptor leaked per connection
        events = c.call("log.tail", {"conversation_id": "gone", "limit": 200})["events"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # whatever landed, no gap
        assert len(events) >= 40  # the whole requests were served before the hang-up was noticed
        assert c.call("sys.health")["status"] == "ok"
