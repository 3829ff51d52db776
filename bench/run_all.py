"""Every benchmark, into bench/results/: README.md (a table per section), results.json and PNG plots.

    ./dev bench                      # the full run: about 150 s on 2 cores (claims: 50 s), search 140 s,
                                     # scaleout 50 s and jetstream_restart 90 s more
    ./dev bench --quick              # small sizes, about 25 s (search 20 s, scaleout 12 s,
                                     # jetstream_restart 17 s more): checks that it all works
    ./dev bench --only appends,tasks # some sections (appends, log, summary, tasks, claims, groups,
                                     # clocks, compression, search, scaleout, jetstream_restart)
    ./dev bench --only jetstream_restart --before-tree DIR  # and the same starts on DIR's code

Sections: durable appends against clients (sidecar, the plain loop, SQLite, Redis), queries and
daemon start-up against log size, summaries and context, the task graph's ready(), task claims
(8 agents claim -> done beside SQLite and Redis; claim latency against the graph's size), consumer
groups (one consumer drains a conversation and acks, beside Redis Streams with a group), the cost
of vector clocks on appends (on against off, beside the plain loop), compressed segments (ratio
and reads against the same data plain, beside gzip and SQLite), full-text search (latency against
the log's size beside a naive scan, the index's size and throughput, the cost of indexing on
appends), scale-out on NATS JetStream (durable appends with 1, 2 and 3 daemons on a 3-node
cluster of real nats-servers, beside the file backend and a single NATS node), and a daemon
restarting over a long JetStream stream (time to READY=1 and memory, resuming from its saved
position, from the stream's beginning and on an empty data directory, beside the file backend).
Every figure sits beside a baseline measured in the same run: these machines are noisy, so
compare ratios, not absolute numbers from different runs. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # the sibling modules, and tests/ for the summary's traffic

import bench_appends  # noqa: E402
import bench_claims  # noqa: E402
import bench_clocks  # noqa: E402
import bench_compression  # noqa: E402
import bench_groups  # noqa: E402
import bench_jetstream_restart  # noqa: E402
import bench_log  # noqa: E402
import bench_scaleout  # noqa: E402
import bench_search  # noqa: E402
import bench_summary  # noqa: E402
import bench_tasks  # noqa: E402
from bench_daemon import REDIS, redis_version  # noqa: E402
from report import Config, Section  # noqa: E402

SECTIONS: dict[str, Callable[[Config], list[Section]]] = {
    "appends": bench_appends.run,
    "log": bench_log.run,
    "summary": bench_summary.run,
    "tasks": bench_tasks.run,
    "claims": bench_claims.run,
    "groups": bench_groups.run,
    "clocks": bench_clocks.run,
    "compression": bench_compression.run,
    "search": bench_search.run,
    "scaleout": bench_scaleout.run,
    "jetstream_restart": bench_jetstream_restart.run,
}


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(x.replace("_", "")) for x in text.split(","))


def busy_neighbours() -> list[str]:
    """Other processes that would skew the figures: daemons, redis servers, test runs."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if any(word in cmd for word in ("sidecar serve", "redis-server", "pytest")):
            found.append(f"{proc.name} {cmd[:100]}")
    return found


def filesystem(path: Path) -> str:
    """The type of the filesystem holding ``path`` (a tmpfs would make every fsync free)."""
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, fstype, *_ = line.split()
        if str(path.resolve()).startswith(mount) and len(mount) > len(best):
            best, kind = mount, fstype
    return f"{kind} at {best}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a check that everything works")
    parser.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--clients", type=ints, help="client counts for the append sweep, e.g. 1,4,16")
    parser.add_argument("--events-per-point", type=int, help="events per append point, split between the clients")
    parser.add_argument("--log-sizes", type=ints, help="log sizes for queries and start-up, e.g. 10000,100000")
    parser.add_argument("--summary-sizes", type=ints, help="conversation sizes for summaries and context")
    parser.add_argument("--task-sizes", type=ints, help="task counts for ready()")
    parser.add_argument("--out", type=Path, help="where results go (default bench/results)")
    parser.add_argument("--tmp", type=Path, help="where the logs are built (default $TMPDIR or /tmp): a real disk")
    parser.add_argument(
        "--before-tree",
        type=Path,
        help="jetstream_restart: also start the daemon of this checkout (git archive COMMIT | tar -x -C DIR)",
    )
    args = parser.parse_args(argv)

    overrides = {
        k: v
        for k, v in {
            "clients": args.clients,
            "events_per_point": args.events_per_point,
            "log_sizes": args.log_sizes,
            "summary_sizes": args.summary_sizes,
            "task_sizes": args.task_sizes,
            "out": args.out,
            "tmp": args.tmp or Path(os.environ.get("TMPDIR", "/tmp")),
            "before_tree": args.before_tree,
        }.items()
        if v is not None
    }
    cfg = Config.quick_run(**overrides) if args.quick else Config(**overrides)
    chosen = args.only.split(",") if args.only else list(SECTIONS)
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    # SIGTERM unwinds like Ctrl-C, so every daemon and redis-server started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    neighbours = busy_neighbours()
    for n in neighbours:
        print(f"WARNING: running beside {n}: the figures will be noisy", file=sys.stderr)
    started = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    sections: list[Section] = []
    timings: list[str] = []
    for name in chosen:
        ts = time.perf_counter()
        done = SECTIONS[name](cfg)
        timings.append(f"{name} {time.perf_counter() - ts:.0f} s")
        seen = busy_neighbours()  # a test run that started meanwhile skews this section's figures
        for n in seen:
            print(f"WARNING: {name} ended beside {n}: its figures may be noisy", file=sys.stderr)
        if seen:
            done[-1].note(
                "WARNING: when this section ended, these were running too: " + "; ".join(f"`{n}`" for n in seen)
            )
        sections += done
    took = time.perf_counter() - t0

    header = [
        "# Benchmark results",
        "",
        f"`./dev bench{' --quick' if cfg.quick else ''}"
        f"{' --only ' + args.only if args.only else ''}"
        f"{' --before-tree ' + str(args.before_tree) if args.before_tree else ''}` on {started:%Y-%m-%d %H:%M} UTC, "
        f"{took:.0f} s ({', '.join(timings)}).",
        "",
        f"- machine: {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, " + (f"redis-server {redis_version()}" if REDIS else "no redis-server"),
        f"- logs built in {cfg.tmp} ({filesystem(cfg.tmp)})",
        f"- load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after",
        "- other processes at the start: " + ("; ".join(f"`{n}`" for n in neighbours) or "none of note"),
        "- each figure sits beside a baseline from this same run; compare ratios across runs, not absolute numbers",
        "",
    ]
    (cfg.out / "README.md").write_text("\n".join(header) + "\n" + "\n".join(s.markdown() for s in sections))
    (cfg.out / "results.json").write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "quick": cfg.quick,
                "seconds": took,
                **{s.title: s.data for s in sections},
            },
            indent=1,
        )
    )
    print(f"\n{took:.0f} s; written to {cfg.out / 'README.md'}, results.json and the PNG plots beside them")


if __name__ == "__main__":
    main()
