"""Queries and daemon start-up against the log's size (10^4 .. 10^6 events, one conversation).

    python bench/bench_log.py [--quick]     # these sections alone (run_all.py --only log)

One log is grown in steps (``append_many`` in batches of 5,000) and measured at each size:
``tail``, ``get`` and ``since`` in-process beside a naive read or scan of the same file, the
same through the daemon's socket beside a bare ``sys.health`` round trip, and the daemon's
start-up (spawn to READY=1) and memory beside a daemon on an empty data dir. Indexed queries
should cost the same at every size; the naive ones grow with the file.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from bench_daemon import Daemon, EchoServer, clean_env, event_loop, placed, regimes, request, round_trips
from plots import Panel, Series, figure
from report import Config, Section, best_time, count, ms, per_call

from sidecar.log import Event, EventStore

CID = "big"
BATCH = 5000
SAMPLE_EVERY = 50  # ids kept for random get()s: enough, without holding a million strings


def log_event(n: int) -> dict:
    return {
        "conversation_id": CID,
        "type": "agent.progress",
        "visibility": "status",
        "agent_id": "coder",
        "task_id": f"task-{n % 50}",
        "turn": n // 10,
        "data": {"msg": f"step {n}: reading files and planning the next edit", "pct": n % 100},
    }


def grow(data_dir: Path, have: int, want: int) -> tuple[list[str], float]:
    """Append events ``have`` .. ``want`` in batches; returns a sample of their ids and the seconds."""
    ids: list[str] = []
    t0 = time.perf_counter()
    with EventStore(data_dir) as store:
        for start in range(have, want, BATCH):
            acks = store.append_many([log_event(n) for n in range(start, min(want, start + BATCH))])
            ids.extend(a.id for a in acks[::SAMPLE_EVERY])
    return ids, time.perf_counter() - t0


# --- the naive baselines: no index, just the file ------------------------------------------------


def naive_tail(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()[-20:]]


def naive_get(path: Path, event_id: str) -> dict | None:
    target = f'"id":"{event_id}"'.encode()
    with open(path, "rb") as f:
        for line in f:
            if target in line:
                return json.loads(line)
    return None


TS = b'"timestamp":"'


def naive_since(path: Path, timestamp: str) -> list[dict]:
    """The first 100 events at or after ``timestamp``: a scan from the start to the first one."""
    t = timestamp.encode()
    with open(path, "rb") as f:
        for line in f:
            i = line.find(TS) + len(TS)
            if line[i : i + len(t)] >= t:
                return [json.loads(x) for x in itertools.chain([line], itertools.islice(f, 99))]
    return []


def mean_time(fn: Callable[[str], object], args: list[str]) -> float:
    t0 = time.perf_counter()
    for a in args:
        fn(a)
    return (time.perf_counter() - t0) / len(args)


# --- one size --------------------------------------------------------------------------------------


def queries(data_dir: Path, ids: list[str], calls: int) -> tuple[dict[str, float], list[str]]:
    """In-process query times beside the naive ones, each checked to give the same answer;
    also some events' timestamps, for ``since`` through the socket."""
    path = data_dir / "logs" / f"{CID}.jsonl"
    rng = random.Random(7)
    out: dict[str, float] = {}
    with EventStore(data_dir) as store:
        store.load()
        assert [e.id for e in store.tail(CID, 20)] == [e["id"] for e in naive_tail(path)]
        out["tail"] = per_call(lambda: store.tail(CID, 20), calls)
        out["tail naive"] = best_time(lambda: naive_tail(path), 2)

        picks = itertools.cycle(rng.choices(ids, k=calls))
        out["get"] = per_call(lambda: store.get(next(picks)), calls)
        few = rng.sample(ids, 3)
        assert all(store.get(i) == msgspec.convert(naive_get(path, i), Event) for i in few)
        out["get naive"] = mean_time(lambda i: naive_get(path, i), few)

        stamps = [e.timestamp for e in map(store.get, rng.choices(ids, k=200)) if e]
        cycle = itertools.cycle(stamps)
        out["since"] = per_call(lambda: store.since(next(cycle), limit=100), calls)
        few = stamps[:3]
        for s in few:
            assert [e.id for e in store.since(s, limit=100).events] == [e["id"] for e in naive_since(path, s)]
        out["since naive"] = mean_time(lambda s: naive_since(path, s), few)

    t0 = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
    out["raw read"] = time.perf_counter() - t0
    return out, stamps


OPEN = """
import sys, time
from sidecar.log import EventStore
t0 = time.perf_counter()
store = EventStore(sys.argv[1])
store.load()
print(time.perf_counter() - t0)
store.close()
"""


def open_fresh(data_dir: Path) -> float:
    """Seconds to open the log (recovery) and load its index, in a fresh process: the bench's own
    heap would make the garbage collector's passes longer than a real opener's."""
    out = subprocess.run(
        [sys.executable, "-c", OPEN, str(data_dir)], env=clean_env(), capture_output=True, text=True, check=True
    )
    return float(out.stdout.split()[-1])


def start(data_dir: Path, run_dir: Path) -> tuple[float, float]:
    """Spawn to READY=1 in seconds, and VmRSS in MB once ready."""
    with Daemon(data_dir, run_dir) as d:
        return d.startup_s, d.rss_mb()


def through_socket(data_dir: Path, run_dir: Path, ids: list[str], stamps: list[str], calls: int) -> dict[str, float]:
    """Start-up and memory (best of two starts), and median round trips on the second daemon."""
    first = start(data_dir, run_dir)
    health = request(0, "sys.health", {})
    calls_of: dict[str, Callable[[int], bytes]] = {
        "sys.health": lambda i: health,
        "log.tail": lambda i: request(i, "log.tail", {"conversation_id": CID, "limit": 20}),
        "log.get": lambda i: request(i, "log.get", {"event_id": ids[i % len(ids)]}),
        "log.since": lambda i: request(i, "log.since", {"timestamp": stamps[i % len(stamps)], "limit": 20}),
    }
    rtt: dict[str, float] = {}
    with Daemon(data_dir, run_dir) as d, EchoServer(run_dir, event_loop()) as echo:
        second = (d.startup_s, d.rss_mb())
        for regime, (client, server) in regimes().items():
            with placed(client, server, d.proc.pid, echo.proc.pid):
                rtt[f"echo, {regime}"] = round_trips(echo.socket, lambda i: health, calls)
                for method, make in calls_of.items():
                    rtt[f"{method}, {regime}"] = round_trips(d.socket, make, calls)
    return {"start": min(first[0], second[0]), "rss": second[1], **rtt}


# --- the sweep ---------------------------------------------------------------------------------


def run(cfg: Config) -> list[Section]:
    flag = " --quick" if cfg.quick else ""
    sizes = list(cfg.log_sizes)
    q = Section(
        "Queries against log size",
        "./dev bench --only log" + flag,
        "One conversation, grown in steps with `append_many`; in-process through `EventStore` (per call, "
        "the best of 3 rounds) beside a naive read or scan of the same file, and through the daemon's "
        "socket (median round trip) beside `sys.health`, itself beside a minimal echo server on the same kind of "
        "socket and event loop (the floor of a round trip). The last column is the largest size's figure "
        "over the smallest's: flat is about 1x, the naive ones grow with the file.",
    )
    s = Section(
        "Daemon start-up against log size",
        "./dev bench --only log" + flag,
        "Spawn to `READY=1` on `$NOTIFY_SOCKET` (the best of two starts, page cache warm), and VmRSS "
        "once ready, beside the same daemon on an empty data dir and a raw read of the log file.",
    )
    figures: dict[str, list[float]] = {}
    mb: list[float] = []
    built = 0.0
    with tempfile.TemporaryDirectory(dir=cfg.tmp, prefix="sidecar-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        ids: list[str] = []
        have = 0
        for size in sizes:
            new_ids, took = grow(data, have, size)
            ids += new_ids
            built += took
            have = size
            print(f"log grown to {size:,} events", flush=True)
            got, stamps = queries(data, ids, cfg.calls)
            got["open"] = open_fresh(data)
            empty = start(tmp / "empty", tmp / "run-empty")
            got |= {"empty start": empty[0], "empty rss": empty[1]}
            got |= through_socket(data, tmp / "run", ids, stamps, cfg.calls)
            for k, v in got.items():
                figures.setdefault(k, []).append(v)
            mb.append((data / "logs" / f"{CID}.jsonl").stat().st_size / 1e6)

    first, last = count(sizes[0]), count(sizes[-1])
    t = q.table("In-process, per call", ["query", *map(count, sizes), f"{last} / {first}"])
    for key, label in (
        ("tail", "`tail(20)`"),
        ("tail naive", "baseline: read the file, decode the last 20"),
        ("get", "`get(id)`, random ids"),
        ("get naive", "baseline: scan the file for the id"),
        ("since", "`since(t)`, first page of 100, random t"),
        ("since naive", "baseline: scan the file to t"),
    ):
        v = figures[key]
        t.row(label, *map(ms, v), f"{v[-1] / v[0]:.1f}x")
    for regime in regimes():
        t = q.table(
            f"Through the socket, the client on {regime} as the server: median round trip (x `sys.health`)",
            ["method", *map(count, sizes), f"{last} / {first}"],
        )
        for key, label in (
            ("echo", f"floor: a minimal echo server ({event_loop()})"),
            ("sys.health", "baseline: `sys.health` (x the floor)"),
            ("log.tail", "`log.tail`, 20"),
            ("log.get", "`log.get`, random ids"),
            ("log.since", "`log.since`, 20, random t"),
        ):
            v, h = figures[f"{key}, {regime}"], figures[f"{'echo' if key == 'sys.health' else 'sys.health'}, {regime}"]
            cells = [ms(x) if key == "echo" else f"{ms(x)} ({x / y:.2f}x)" for x, y in zip(v, h)]
            t.row(label, *cells, f"{v[-1] / v[0]:.1f}x")
    q.note(f"the log was built with `append_many` in batches of {BATCH:,} at {sizes[-1] / built:,.0f} events/s")
    q.note(f"log file sizes: {', '.join(f'{m:,.1f} MB' for m in mb)}")
    if sizes[-1] >= 1_000_000:
        for key in ("tail", "get", "since"):
            q.target(f"`{key}` under 1 ms on {sizes[-1]:,} events", figures[key][-1] < 1e-3)
        for key in ("log.tail", "log.get", "log.since"):
            for regime in regimes():
                q.target(
                    f"`{key}` (20 events) within 2x `sys.health` on {sizes[-1]:,} events, client on {regime}",
                    figures[f"{key}, {regime}"][-1] <= 2 * figures[f"sys.health, {regime}"][-1],
                )
    for regime in regimes():
        q.target(
            f"`sys.health` within 1.3x of the echo server's round trip, client on {regime}",
            figures[f"sys.health, {regime}"][-1] <= 1.3 * figures[f"echo, {regime}"][-1],
        )

    t = s.table(
        "Start-up and memory",
        [
            "events",
            "log file",
            "daemon start to READY=1",
            "baseline: empty data dir",
            "open + index, in a fresh process",
            "baseline: raw read of the file",
            "daemon RSS after READY",
            "baseline: empty data dir RSS",
        ],
    )
    for i, size in enumerate(sizes):
        t.row(
            f"{size:,}",
            f"{mb[i]:,.1f} MB",
            ms(figures["start"][i]),
            ms(figures["empty start"][i]),
            ms(figures["open"][i]),
            ms(figures["raw read"][i]),
            f"{figures['rss'][i]:.0f} MB",
            f"{figures['empty rss'][i]:.0f} MB",
        )
    if sizes[-1] >= 1_000_000:
        s.target(f"opening {sizes[-1]:,} events (recovery + index) under 3 s", figures["open"][-1] < 3)
        s.target(f"daemon RSS with {sizes[-1]:,} events under 300 MB", figures["rss"][-1] < 300)
    q.data = s.data = {"sizes": sizes, "mb": mb, **figures}

    def line(key: str, label: str, style: str = "o-", scale: float = 1e3) -> Series:
        return Series(label, sizes, [v * scale for v in figures[key]], style)

    q.plots.append(
        figure(
            cfg.out / "queries.png",
            [
                Panel(
                    "In-process query, per call",
                    "events in the log",
                    "ms",
                    [
                        line("tail", "tail(20)", "C0o-"),
                        line("get", "get(id)", "C1o-"),
                        line("since", "since(t), 100", "C2o-"),
                        line("tail naive", "baseline: read all, last 20", "C0x--"),
                        line("get naive", "baseline: scan for the id", "C1x--"),
                        line("since naive", "baseline: scan to t", "C2x--"),
                    ],
                    logx=True,
                    logy=True,
                ),
                *(
                    Panel(
                        f"Through the socket, client on {regime}",
                        "events in the log",
                        "ms",
                        [
                            line(f"log.tail, {regime}", "log.tail"),
                            line(f"log.get, {regime}", "log.get"),
                            line(f"log.since, {regime}", "log.since"),
                            line(f"sys.health, {regime}", "sys.health (baseline)", "k--"),
                            line(f"echo, {regime}", "echo server (floor)", "k:"),
                        ],
                        logx=True,
                        logy=True,
                    )
                    for regime in regimes()
                ),
            ],
        )
    )
    s.plots.append(
        figure(
            cfg.out / "startup.png",
            [
                Panel(
                    "Start-up",
                    "events in the log",
                    "seconds",
                    [
                        line("start", "daemon, spawn to READY=1", scale=1),
                        line("open", "open + index, fresh process", scale=1),
                        line("empty start", "daemon, empty data dir", "k--", scale=1),
                        line("raw read", "raw read of the file", "x--", scale=1),
                    ],
                    logx=True,
                ),
                Panel(
                    "Daemon memory once ready",
                    "events in the log",
                    "VmRSS, MB",
                    [line("rss", "daemon RSS", scale=1), line("empty rss", "empty data dir", "k--", scale=1)],
                    logx=True,
                ),
            ],
        )
    )
    return [q, s]


if __name__ == "__main__":
    import sys

    import run_all

    run_all.main(["--only", "log", *sys.argv[1:]])
