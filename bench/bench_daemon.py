"""Daemon benchmarks: figures through the real socket, beside baselines from the same run.

    python bench/bench_daemon.py                 # with a 1,000,000-event log for tail/get/RSS
    python bench/bench_daemon.py --events 100000 # quicker

Targets (issue "The daemon"): durable log.append from 16 clients x 8 in flight >= 4x the
plain open+flock+write+fsync+close loop (aiming for 10x), with the one-in-flight figure beside
it; log.append_many of 100 events >= 100,000 events/s; log.tail and log.get on the 1M log
within 3x a bare sys.health round trip; daemon RSS with that log open < 300 MB.

The load comes from one lean process multiplexing raw sockets (pre-encoded requests, no
client library), so the figures measure the daemon, not the client.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_log import plain_loop  # noqa: E402
from report import Report  # noqa: E402

REPORT = Report("daemon", width=62)
row = REPORT.row


class Daemon:
    def __init__(self, data_dir: Path, run_dir: Path) -> None:
        self.socket = str(run_dir / "s.sock")
        notify_path = str(run_dir / "notify")
        run_dir.mkdir(parents=True, exist_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(notify_path)
        self.notify.settimeout(600)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path, PYTHONPATH=f"{ROOT}:{ROOT / 'clients' / 'python'}")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--data-dir", str(data_dir), "--socket", self.socket],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        while not self.notify.recv(4096).startswith(b"READY=1"):
            pass

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.notify.close()


def request(i: int, method: str, params: dict) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}).encode() + b"\n"


def load(path: str, connections: int, in_flight: int, total: int, make) -> tuple[float, list[float]]:
    """Keep ``in_flight`` requests outstanding on each connection until ``total`` are answered.

    Returns (seconds, per-request latencies)."""
    sel = selectors.DefaultSelector()
    socks = []
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    next_id = 0
    for _ in range(connections):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, bytearray())
    t0 = time.perf_counter()
    for s in socks:
        batch = []
        for _ in range(in_flight):
            next_id += 1
            sent_at[next_id] = time.perf_counter()
            batch.append(make(next_id))
        s.sendall(b"".join(batch))
    done = 0
    while done < total:
        for key, _ in sel.select():
            s, buf = key.fileobj, key.data
            buf += s.recv(1 << 20)
            *lines, rest = bytes(buf).split(b"\n")
            buf[:] = rest
            now = time.perf_counter()
            out = []
            for line in lines:
                reply = json.loads(line)
                if "error" in reply:
                    raise SystemExit(f"error from the daemon: {reply['error']}")
                latencies.append(now - sent_at.pop(reply["id"]))
                done += 1
                if next_id < total:
                    next_id += 1
                    sent_at[next_id] = time.perf_counter()
                    out.append(make(next_id))
            if out:
                s.setblocking(True)
                s.sendall(b"".join(out))
                s.setblocking(False)
    took = time.perf_counter() - t0
    for s in socks:
        s.close()
    return took, latencies


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def round_trips(path: str, make, count: int) -> float:
    """Median seconds of ``count`` sequential round trips on one connection."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    f = s.makefile("rb")
    times = []
    for i in range(count):
        t = time.perf_counter()
        s.sendall(make(i))
        reply = json.loads(f.readline())
        times.append(time.perf_counter() - t)
        if "error" in reply:
            raise SystemExit(f"error: {reply['error']}")
    s.close()
    return statistics.median(times)


def bench_appends(tmp: Path, per_conn: int) -> None:
    baselines = [1 / plain_loop(str(tmp / "plain.jsonl"), 16, 200)]
    d = Daemon(tmp / "data", tmp / "run")
    try:
        results = []
        for conns, flight, label in ((16, 8, "16 clients x 8 in flight"), (16, 1, "16 clients x 1 in flight")):
            total = conns * per_conn

            def append(i: int, conns: int = conns) -> bytes:
                return request(
                    i, "log.append", {"conversation_id": f"c{i % conns}", "type": "agent.progress", "data": {"step": i}}
                )

            took, lat = load(d.socket, conns, flight, total, append)
            results.append((label, total / took, lat))
        many_total = 1200

        def many(i: int) -> bytes:
            events = [{"conversation_id": f"m{i % 4}", "type": "agent.progress", "data": {"n": k}} for k in range(100)]
            return request(i, "log.append_many", {"events": events})

        took_many, _ = load(d.socket, 4, 4, many_total, many)
    finally:
        d.stop()
    baselines.append(1 / plain_loop(str(tmp / "plain2.jsonl"), 16, 200))
    base = REPORT.baseline("plain open+flock+write+fsync+close loop, 16 threads (events/s)", baselines)
    for label, rate, lat in results:
        ratio = rate / base
        verdict = f"{ratio:.1f}x; p50 {pct(lat, 0.5) * 1e3:.2f} ms, p99 {pct(lat, 0.99) * 1e3:.2f} ms"
        if "8 in flight" in label:
            verdict += " OK (>= 4x)" if ratio >= 4 else " BELOW the 4x target"
        row(f"log.append through the socket, {label} (events/s)", f"{rate:,.0f}", f"{base:,.0f}", verdict)
    rate_many = many_total * 100 / took_many
    row(
        "log.append_many, 100 events per call, 4 x 4 in flight (events/s)",
        f"{rate_many:,.0f}",
        "-",
        "OK (>= 100,000)" if rate_many >= 100_000 else "BELOW 100,000",
    )


def bench_reads(tmp: Path, events: int) -> None:
    data = tmp / "big"
    d = Daemon(data, tmp / "run-big")
    ids: list[str] = []
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(d.socket)
        f = s.makefile("rb")
        batch = 5000
        for start in range(0, events, batch):
            evs = [
                {
                    "conversation_id": "big",
                    "type": "agent.progress",
                    "agent_id": "coder",
                    "data": {"msg": f"step {n}: reading files and planning the next edit", "pct": n % 100},
                }
                for n in range(start, min(events, start + batch))
            ]
            s.sendall(request(start, "log.append_many", {"events": evs}))
            reply = json.loads(f.readline())
            ids.extend(a["id"] for a in reply["result"][:: max(1, batch // 20)])
        s.close()
    finally:
        d.stop()
    t0 = time.perf_counter()
    d = Daemon(data, tmp / "run-big2")  # a fresh start on the big log
    start_s = time.perf_counter() - t0
    try:
        rss = d.rss_mb()
        health = round_trips(d.socket, lambda i: request(i, "sys.health", {}), 2000)
        tail = round_trips(d.socket, lambda i: request(i, "log.tail", {"conversation_id": "big", "limit": 20}), 2000)
        get = round_trips(d.socket, lambda i: request(i, "log.get", {"event_id": ids[i % len(ids)]}), 2000)
    finally:
        d.stop()
    row(f"daemon start on {events:,} events (to READY=1)", f"{start_s:.2f} s", "-", "")
    row("daemon RSS with that log open", f"{rss:.0f} MB", "-", "OK (< 300 MB)" if rss < 300 else "ABOVE 300 MB")
    row("sys.health round trip (median)", f"{health * 1e3:.3f} ms", "-", "the baseline")
    for name, t in (("log.tail(20)", tail), ("log.get(id)", get)):
        ratio = t / health
        row(
            f"{name} round trip on the big log (median)",
            f"{t * 1e3:.3f} ms",
            f"{health * 1e3:.3f} ms",
            f"{ratio:.1f}x sys.health " + ("OK (<= 3x)" if ratio <= 3 else "ABOVE 3x"),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="size of the big log for tail/get/RSS")
    parser.add_argument("--appends", type=int, default=1500, help="appends per connection in the append test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bench_appends(tmp, args.appends)
        bench_reads(tmp, args.events)
    REPORT.write()


if __name__ == "__main__":
    main()
