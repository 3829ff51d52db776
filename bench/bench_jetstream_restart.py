"""Restarting a daemon on the JetStream backend over a long stream: time to READY=1 and memory.

    python bench/bench_jetstream_restart.py [--quick] [--before-tree DIR]
    ./dev bench --only jetstream_restart [--before-tree DIR]

A real 3-node cluster of ``nats-server`` processes on loopback (``tests/support_nats.py``: every
node with ``sync_interval: always``), one stream of 3 replicas. One daemon (``sidecar serve``
with ``[log] backend = "jetstream"``, the configuration of section 12) writes ``N`` events
(100,000; ``--quick`` 10,000) spread evenly over ``CONVERSATIONS`` conversations, with
``log.append_many`` calls of ``BATCH`` events naming ``PER_CALL`` conversations each, and stops
cleanly; so does a file-backend daemon, on a data directory of its own. Its search index falls
behind so fast a writer, and a stop gives its worker only a few seconds, so each data directory
is then started once, unmeasured, until its index has every event (read from the index's
progress table). Then a daemon is started, again and again, over that stream:

- *(a) resume:* on that data directory as it was left, with the position its clean stop saved
  (``jetstream-position``): it reads the stream only after it;
- *(b) from the beginning* (the baseline): the same data directory with ``jetstream-position``
  deleted, so its feed passes every message of the stream to its copy, which skips what it has;
- *(c) fresh:* an empty data directory, which copies the whole stream;
- *(d) the file backend* (the peer): a daemon with no NATS on a data directory holding the
  same events in the same conversations, written the same way.

Only the fresh start has its search index to build: its worker indexes the whole copy after
READY=1, beside what is measured next (as on a real first start).

Each start is timed from spawn to ``READY=1`` on ``$NOTIFY_SOCKET`` (the daemon reports ready
once its copy has caught up with the stream). Its memory is VmRSS of the daemon and its
children (the search worker) once ready, and again after one ``log.append`` to each of
``TOUCHED`` conversations, one after another (timed too: on JetStream a daemon reads a
conversation's history from the stream the first time it appends to it). Then ``TOUCHED``
appends more to the same conversations are timed: what is left is the append itself. Every
conversation of the daemon's copy is then checked to stand at the seq expected, and the daemon
is stopped with SIGTERM. Each start so appends ``2 * TOUCHED`` events: the stream grows by that
much per start. ``rounds`` rounds, the order of the setups reversed every other round; the
figures are the medians of the rounds.

``--before-tree DIR`` also starts (c), then (a) and (b), on the code of another checkout
(``git archive <commit> | tar -x -C DIR``), run with this interpreter and
``PYTHONPATH=DIR:DIR/clients/python``, on a data directory of its own over the same stream, in
each round: the before/after of a change to the start-up. That directory is made first by a
fresh start of that code, then settled like the others. A tree without the saved position
reads the whole stream at every start, so there (a) is (b).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # run alone: tests/ is imported too
    sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from bench_appends import event
from bench_daemon import ROOT, Daemon, Spawned, call, clean_env
from bench_scaleout import check_copies, config_text, cpu_of, log_complaints, note_complaints, with_children
from report import Config, Section

from sidecar.search.index import INDEX_FILE
from tests.support_nats import NatsCluster, jetstream_available, server_version

CONVERSATIONS = 1000
BATCH = 1000  # events per log.append_many: the JetStream backend's most (one atomic batch)
PER_CALL = 250  # conversations one log.append_many names (the file backend takes 256 at most)
TOUCHED = 10  # conversations appended to once the daemon is ready
STREAM = "RESTART"
POSITION_FILE = "jetstream-position"

RESUME = "resume"
BASELINE = "from the beginning"
FRESH = "fresh"
PEER = "file"


def cid(i: int) -> str:
    return f"c{i:04d}"


TOUCHED_CIDS = [cid(i * (CONVERSATIONS // TOUCHED)) for i in range(TOUCHED)]


def events_total(cfg: Config) -> int:
    return 10_000 if cfg.quick else 100_000


def rounds(cfg: Config) -> int:
    return 1 if cfg.quick else 3


class TreeDaemon(Daemon):
    """``sidecar serve`` of the checkout ``tree`` (its ``sidecar`` package, this interpreter),
    with a config file or none (the file backend)."""

    def __init__(self, tree: Path, data_dir: Path, run_dir: Path, config: Path | None) -> None:
        self.socket = str(run_dir / "s.sock")
        # -P: the working directory is not put first on sys.path, so ``-m sidecar`` is the tree's.
        argv = [sys.executable, "-P", "-m", "sidecar", "serve", "--data-dir", str(data_dir), "--socket", self.socket]
        if config is not None:
            argv += ["--config", str(config)]
        env = clean_env()
        env["PYTHONPATH"] = f"{tree}:{tree / 'clients' / 'python'}"
        Spawned.__init__(self, argv, run_dir, env)


def check_tree(tree: Path) -> None:
    """The daemon started from ``tree`` imports ``tree``'s sidecar, not this checkout's."""
    env = clean_env()
    env["PYTHONPATH"] = f"{tree}:{tree / 'clients' / 'python'}"
    got = subprocess.run(
        [sys.executable, "-P", "-c", "import sidecar; print(sidecar.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(got).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"the daemon of {tree} would import {got}")


def status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mib(pids: list[int]) -> float:
    return sum(status_kib(p, "VmRSS") for p in pids) / 1024


def short_commit(tree: Path) -> str:
    """The commit of a checkout (``git``) or of a ``git archive`` of one (its pax header is gone:
    the directory's name then)."""
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 and (tree / ".git").exists() else tree.name


# --- one start ---------------------------------------------------------------------------------------


@dataclass
class Start:
    ready_s: float
    rss_ready: float  # MiB, the daemon and its children, at READY=1
    daemon_rss_ready: float  # MiB, the daemon alone
    hwm_ready: float  # MiB, the daemon's peak (VmHWM) at READY=1
    cpu_ready: float  # CPU seconds of the daemon and its children by READY=1
    appends_s: float  # the TOUCHED appends, one after another
    again_s: float  # as many again, to the same conversations, after the RSS was read
    rss_after: float  # MiB, the daemon and its children after them
    daemon_rss_after: float  # MiB, the daemon alone
    worker_rss_settled: float  # MiB, its children once the copy was checked (a second or more later)
    resumed_from: int | None  # from jetstream.copy_caught_up (None: not logged)
    caught_up_at: int | None
    stream_last: int | None  # the stream's last sequence when the daemon started
    complaints: Counter[str]


@dataclass
class Setup:
    key: str
    label: str
    tree: Path
    data_dir: Path
    config: Path | None
    starts: list[Start] = field(default_factory=list)

    def med(self, what: str) -> float:
        return statistics.median(getattr(s, what) for s in self.starts)


CAUGHT_UP = re.compile(r"jetstream\.copy_caught_up")


def caught_up(stderr: Path) -> tuple[int | None, int | None]:
    for line in stderr.read_text(errors="replace").splitlines():
        if CAUGHT_UP.search(line):
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                return entry.get("resumed_from"), entry.get("stream_seq")
    return None, None


def stream_last(nats: NatsCluster | None) -> int | None:
    if nats is None:
        return None
    for i in range(nats.n):
        state = nats.stream_state(i, STREAM)
        if state:
            return int(state.get("last_seq", 0))
    return None


def start_once(setup: Setup, run_dir: Path, expected: Counter[str], nats: NatsCluster | None) -> Start:
    """One start of ``setup``'s daemon: ready, appended to, checked, stopped."""
    run_dir.mkdir(mode=0o700)
    last = stream_last(nats)
    d = TreeDaemon(setup.tree, setup.data_dir, run_dir, setup.config)
    try:
        pids = with_children([d.proc.pid])
        ready = (rss_mib(pids), rss_mib([d.proc.pid]), status_kib(d.proc.pid, "VmHWM") / 1024, cpu_of(pids))
        t0 = time.perf_counter()
        for c in TOUCHED_CIDS:
            call(d.socket, "log.append", event(c))
            expected[c] += 1
        appends_s = time.perf_counter() - t0
        rss_after = rss_mib(with_children([d.proc.pid])), rss_mib([d.proc.pid])
        t0 = time.perf_counter()
        for c in TOUCHED_CIDS:
            call(d.socket, "log.append", event(c))
            expected[c] += 1
        again_s = time.perf_counter() - t0
        check_copies([d], expected)
        worker = rss_mib(with_children([d.proc.pid])[1:])
    finally:
        d.stop()
    resumed, at = caught_up(d.stderr_path)
    return Start(
        ready_s=d.startup_s,
        rss_ready=ready[0],
        daemon_rss_ready=ready[1],
        hwm_ready=ready[2],
        cpu_ready=ready[3],
        appends_s=appends_s,
        again_s=again_s,
        rss_after=rss_after[0],
        daemon_rss_after=rss_after[1],
        worker_rss_settled=worker,
        resumed_from=resumed,
        caught_up_at=at,
        stream_last=last,
        complaints=log_complaints([d]),
    )


# --- writing the log ---------------------------------------------------------------------------------


def index_behind(data_dir: Path, expected: Counter[str]) -> int:
    """Events of ``expected`` that ``data_dir``'s search index has not taken in yet (read from
    the index's own progress table)."""
    path = data_dir / "index" / INDEX_FILE
    if not path.exists():
        return sum(expected.values())
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        done = dict(db.execute("SELECT conversation_id, last_seq FROM progress").fetchall())
    return sum(max(0, n - done.get(c, 0)) for c, n in expected.items())


def settle(setup: Setup, run_dir: Path, expected: Counter[str], timeout: float = 600.0) -> float:
    """Start ``setup``'s daemon, unmeasured, until its search index has every event of its data
    directory; seconds. A daemon that writes fast leaves its index behind (its worker is given
    a few seconds at a stop), and a start then catches up: beside what it measures."""
    run_dir.mkdir(mode=0o700)
    t0 = time.perf_counter()
    with TreeDaemon(setup.tree, setup.data_dir, run_dir, setup.config):
        while (left := index_behind(setup.data_dir, expected)) > 0:
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{setup.data_dir}: the search index still lacks {left:,} events")
            time.sleep(0.2)
    return time.perf_counter() - t0


def batches(n: int) -> list[list[dict[str, Any]]]:
    """``n`` events, ``n / CONVERSATIONS`` in each conversation, in calls of ``BATCH`` events
    naming ``PER_CALL`` conversations each, a few events of each, round after round."""
    per_conv, k = n // CONVERSATIONS, BATCH // PER_CALL
    out = []
    for done in range(0, per_conv, k):
        take = min(k, per_conv - done)
        for first in range(0, CONVERSATIONS, PER_CALL):
            out.append([event(cid(i)) for i in range(first, first + PER_CALL) for _ in range(take)])
    return out


def write(d: TreeDaemon, n: int, expected: Counter[str]) -> float:
    """``n`` events through ``d``'s socket with ``log.append_many``; returns events/s."""
    t0 = time.perf_counter()
    for batch in batches(n):
        acks = call(d.socket, "log.append_many", {"events": batch})
        if not isinstance(acks, list) or len(acks) != len(batch):
            raise RuntimeError(f"log.append_many answered {str(acks)[:200]}")
        for e in batch:
            expected[e["conversation_id"]] += 1
    return n / (time.perf_counter() - t0)


# --- the section -------------------------------------------------------------------------------------


def run(cfg: Config) -> list[Section]:
    n, n_rounds = events_total(cfg), rounds(cfg)
    before = cfg.before_tree
    sec = Section(
        "Restarting over a long stream (JetStream)",
        "./dev bench --only jetstream_restart"
        + (" --quick" if cfg.quick else "")
        + (f" --before-tree {before}" if before else ""),
        f"A 3-node NATS cluster (every node `sync_interval: always`), one stream of 3 replicas, holding "
        f"{n:,} events over {CONVERSATIONS:,} conversations, written by one daemon with `log.append_many` "
        f"({BATCH:,} events a call, {BATCH // PER_CALL} of each of {PER_CALL} conversations); each data "
        "directory is then started once, unmeasured, until its search index has every event. Then a daemon "
        "starts over it: *(a) resume* on that data directory "
        "as its clean stop left it (its saved `jetstream-position`); *(b) from the beginning* (the "
        "baseline), the same directory with `jetstream-position` deleted; *(c) fresh*, an empty data "
        "directory, which copies the whole stream (and indexes it for search after READY=1); *(d)* the file "
        "backend on a data directory holding the same events (the peer). Ready: spawn to `READY=1`. RSS: "
        "VmRSS of the daemon and its search worker, once ready and after one `log.append` to each of "
        f"{TOUCHED} conversations (timed, one after another), then {TOUCHED} more to the same ones (timed "
        "again). Every start then checks that its copy holds every conversation up to the seq expected. "
        f"{n_rounds} round(s), the order reversed every other round; medians of the rounds.",
    )
    why_not = jetstream_available()
    if why_not:
        sec.note(f"skipped: {why_not}.")
        return [sec]
    if before is not None:
        check_tree(before)
    with tempfile.TemporaryDirectory(dir=cfg.tmp, prefix="sidecar-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with NatsCluster(tmp / "nats", n=3, name="bench-restart") as cluster:
            conf = tmp / "restart.toml"
            conf.write_text(config_text(cluster.urls, STREAM, 3))
            expected: Counter[str] = Counter()  # each conversation's events in the stream
            on_file: Counter[str] = Counter()  # and in the file backend's directory
            runs = iter(range(1_000_000))

            def run_dir() -> Path:
                return tmp / f"run{next(runs)}"

            d = tmp / "d"
            main = Setup(RESUME, "(a) resume: its data directory, position saved at a clean stop", ROOT, d, conf)
            base = Setup(BASELINE, "(b) its data directory, `jetstream-position` deleted (baseline)", ROOT, d, conf)
            fresh = Setup(FRESH, "(c) fresh: an empty data directory", ROOT, tmp / "fresh", conf)
            peer = Setup(PEER, "(d) file backend, the same events (peer)", ROOT, tmp / "file", None)
            setups = [main, base, fresh, peer]

            t0 = time.perf_counter()
            rd = run_dir()
            rd.mkdir(mode=0o700)
            writer = TreeDaemon(ROOT, main.data_dir, rd, conf)
            with writer:
                rate = write(writer, n, expected)
            complaints = log_complaints([writer])
            took = time.perf_counter() - t0
            print(f"stream written: {n:,} events at {rate:,.0f} events/s ({took:.0f} s)", flush=True)
            rd = run_dir()
            rd.mkdir(mode=0o700)
            file_writer = TreeDaemon(ROOT, peer.data_dir, rd, None)
            with file_writer:
                file_rate = write(file_writer, n, on_file)
            settle_s = [settle(main, run_dir(), expected), settle(peer, run_dir(), on_file)]

            olds: list[Setup] = []
            if before is not None:
                tag = short_commit(before)
                old_fresh = Setup(FRESH, f"(c) fresh, {tag}", before, tmp / "before-fresh", conf)
                od = tmp / "before"
                old_main = Setup(RESUME, f"(a) resume, {tag} (no position: reads the whole stream)", before, od, conf)
                old_base = Setup(BASELINE, f"(b) `jetstream-position` deleted, {tag}", before, od, conf)
                olds = [old_main, old_base, old_fresh]
                # Its data directory is a copy of its own, made once by a fresh start of its code.
                start_once(old_main, run_dir(), expected, cluster)
                settle_s.append(settle(old_main, run_dir(), expected))

            for r in range(n_rounds):
                order = setups + olds
                for s in order if r % 2 == 0 else list(reversed(order)):
                    if s.key == BASELINE:
                        (s.data_dir / POSITION_FILE).unlink(missing_ok=True)
                    if s.key == FRESH:
                        shutil.rmtree(s.data_dir, ignore_errors=True)
                    t1 = time.perf_counter()
                    got = start_once(s, run_dir(), on_file if s.key == PEER else expected, cluster)
                    s.starts.append(got)
                    complaints.update(got.complaints)
                    print(
                        f"round {r + 1}: {s.label}: ready in {got.ready_s:.2f} s, RSS {got.rss_ready:.0f} / "
                        f"{got.rss_after:.0f} MiB, {TOUCHED} appends {got.appends_s * 1e3:.0f} ms, resumed from "
                        f"{got.resumed_from} to {got.caught_up_at} of {got.stream_last} "
                        f"({time.perf_counter() - t1:.1f} s with the checks)",
                        flush=True,
                    )
            version = server_version(cluster.binary)

    baseline = base.med("ready_s")
    t = sec.table(
        f"A daemon starting over {n:,} events in {CONVERSATIONS:,} conversations (medians of {n_rounds} round(s); "
        "x: against (b))",
        [
            "setup",
            "ready s",
            "x baseline",
            "RSS MiB ready: with the search worker (daemon alone)",
            f"RSS MiB after {TOUCHED} appends: with the worker (daemon alone)",
            f"{TOUCHED} appends, one after another: ms",
            f"{TOUCHED} more to the same: ms",
            "stream messages read at start",
            "CPU s to ready",
        ],
    )
    for s in setups + olds:
        if not s.starts:
            continue
        reads = [
            (x.caught_up_at - x.resumed_from) if x.caught_up_at is not None and x.resumed_from is not None else None
            for x in s.starts
        ]
        if s.key == PEER:
            read = "-"
        elif all(r is not None for r in reads):
            known = sorted(r for r in reads if r is not None)
            read = f"{known[0]:,}" if known[0] == known[-1] else f"{known[0]:,} to {known[-1]:,}"
        else:
            read = f"all ({statistics.median(x.stream_last or 0 for x in s.starts):,.0f})"
        t.row(
            s.label,
            f"{s.med('ready_s'):.2f}",
            f"{s.med('ready_s') / baseline:.2f}x",
            f"{s.med('rss_ready'):.0f} ({s.med('daemon_rss_ready'):.0f})",
            f"{s.med('rss_after'):.0f} ({s.med('daemon_rss_after'):.0f})",
            f"{s.med('appends_s') * 1e3:.0f}",
            f"{s.med('again_s') * 1e3:.0f}",
            read,
            f"{s.med('cpu_ready'):.2f}",
        )
    sec.note(
        f"nats-server {version}; the stream was written at {rate:,.0f} events/s (the file backend's copy at "
        f"{file_rate:,.0f}); each start appends {2 * TOUCHED} events, so the stream grew to "
        f"{sum(expected.values()):,} by the end. Stream messages read at start: from `jetstream.copy_caught_up` "
        "(its `stream_seq` minus `resumed_from`), the range over the rounds; *all* for code that does not log it, "
        "with the stream's length as the daemon started."
    )
    settled = [s.med("worker_rss_settled") for s in setups + olds if s.starts]
    sec.note(
        "the search worker (a child process) starts as the daemon reports ready: its RSS in the first two "
        "columns is its own start-up. Once the copy had been checked, a second or more later, it held "
        f"{min(settled):.0f} to {max(settled):.0f} MiB (the medians of the rows)."
    )
    sec.note(
        "before the rounds, each data directory was started once, unmeasured, until its search index had "
        f"every event: {', '.join(f'{x:.1f} s' for x in settle_s)} (the jetstream one, the file backend's"
        + (", the older code's" if before is not None else "")
        + ")."
    )
    if before is not None:
        sec.note(f"the rows marked {short_commit(before)} ran the code of {before}, on the same stream and machine.")
    note_complaints(sec, complaints, "the daemons logged no warning or error; every copy was complete.")
    sec.data = {
        "events": n,
        "conversations": CONVERSATIONS,
        "rounds": n_rounds,
        "write_rate": rate,
        "file_write_rate": file_rate,
        "settle_seconds": settle_s,
        "setups": {s.label: [vars(x) | {"complaints": dict(x.complaints)} for x in s.starts] for s in setups + olds},
        "complaints": dict(complaints),
    }
    return [sec]


if __name__ == "__main__":
    import run_all

    run_all.main(["--only", "jetstream_restart", *sys.argv[1:]])
