"""The cost of vector clocks on appends: the same workload with clocks on and off, beside the plain loop.

    python bench/bench_clocks.py [--quick]     # this section alone (run_all.py --only clocks)

Issue: "the append cost with clocks, against without them: under 5%". The writer computes
every event's ``clock`` in ``LogWriter._stage_one``; ``LogWriter.clocks = False`` (a knob for
this benchmark only) skips that and writes ``{}``, which is the baseline. One store takes
the same workload with the knob on and off in interleaved rounds (on, off, then off, on,
...), so that a drift of the machine's speed falls on both alike and both write into the
same files; the figures are medians over the rounds. The plain loop (``bench_appends.plain_loop``: open + flock + write
+ fsync + close per event, same thread count) runs at the start of every round as the peer.

The workload: ``WRITERS`` threads, each an agent of its own (``agent_id``), half of them in
each of two conversations; each appends one event at a time with ``EventStore.append`` and
waits for it to be durable. Every ``CAUSE_EVERY``-th event names in ``caused_by`` the newest
event of another writer in its conversation, so the writer merges that event's clock into
the new one (the path a plain append does not take). Then the same with ``append_many`` of
``BATCH`` events per call, where no fsync hides the writer's work per event: the worst case
for the clocks' share.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_appends import Sample, in_threads, plain_loop
from report import Config, Section, pct

from sidecar.log import EventStore

WRITERS = 8  # threads, one agent_id each
CONVERSATIONS = 2  # writer i writes conversation i % CONVERSATIONS
CAUSE_EVERY = 4  # every 4th event is caused by another writer's newest event
BATCH = 100  # events per append_many in the batched run
BATCH_THREADS = 2
ON, OFF = "clocks on", "clocks off (baseline)"
THRESHOLD = 5.0  # % (the issue's)


def rounds(cfg: Config) -> int:
    return 4 if cfg.quick else 10


def per_round(cfg: Config) -> int:
    """Events per round and configuration, split between the writers."""
    return 800 if cfg.quick else 4000


def conversation(i: int) -> str:
    return f"clocks-{i % CONVERSATIONS}"


def agent(i: int) -> str:
    return f"agent-{i}"


@dataclass
class Workload:
    """The events of one store: who wrote what last, so a cause can name it."""

    store: EventStore
    newest: dict[int, str] = field(default_factory=dict)  # writer -> id of its newest event

    def cause_of(self, i: int, n: int) -> list[str]:
        """For the ``n``-th event of writer ``i``: the newest event of the next writer in the
        same conversation, every ``CAUSE_EVERY``-th event (once there is one)."""
        if n % CAUSE_EVERY:
            return []
        other = (i + CONVERSATIONS) % WRITERS  # same conversation, another agent
        ref = self.newest.get(other)
        return [ref] if ref is not None else []

    def event(self, i: int, n: int) -> dict[str, Any]:
        return {
            "conversation_id": conversation(i),
            "type": "agent.progress",
            "agent_id": agent(i),
            "caused_by": self.cause_of(i, n),
            "data": {
                "task": f"task-{i}",
                "msg": f"step {n}: read src/module_{n % 97}.py, ran the unit tests, now planning the next edit",
                "pct": n % 100,
            },
        }


def one_at_a_time(w: Workload, per_writer: int) -> tuple[Sample, float]:
    """``WRITERS`` threads, one durable append in flight each; the sample and the process's
    CPU seconds (every thread's: the writers', the commit thread's)."""

    def prepare(i: int) -> Callable[[], list[float]]:
        def work() -> list[float]:
            lat = []
            for n in range(per_writer):
                ev = w.event(i, n)
                t = time.perf_counter()
                ack = w.store.append(ev)
                lat.append(time.perf_counter() - t)
                w.newest[i] = ack.id
            return lat

        return work

    cpu = time.process_time()
    s = in_threads(prepare, WRITERS)
    return s, time.process_time() - cpu


def batched(w: Workload, per_thread: int) -> tuple[Sample, float]:
    """``BATCH_THREADS`` threads, each appending ``BATCH`` events per ``append_many``, its
    writers taking turns inside the batch; latencies are per call."""

    def prepare(t: int) -> Callable[[], list[float]]:
        mine = [i for i in range(WRITERS) if i % BATCH_THREADS == t]

        def work() -> list[float]:
            lat = []
            for start in range(0, per_thread, BATCH):
                count = min(BATCH, per_thread - start)
                evs = [w.event(mine[k % len(mine)], (start + k) // len(mine)) for k in range(count)]
                t0 = time.perf_counter()
                acks = w.store.append_many(evs)
                lat.append(time.perf_counter() - t0)
                for k, ack in enumerate(acks):
                    w.newest[mine[k % len(mine)]] = ack.id
            return lat

        return work

    cpu = time.process_time()
    s = in_threads(prepare, BATCH_THREADS)
    return s, time.process_time() - cpu


@dataclass
class Runs:
    """One configuration's rounds."""

    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # CPU seconds per event, per round
    line_bytes: list[float] = field(default_factory=list)  # bytes written per event, per round
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def overheads(on: Runs, off: Runs) -> list[float]:
    """Per round, how much longer an event took with clocks, in %: paired within the round."""
    return [(off_r / on_r - 1) * 100 for on_r, off_r in zip(on.rates, off.rates)]


def check_clocks(store: EventStore, want: bool) -> int:
    """The newest events (the last run's) carry clocks, some merged from a cause, or none at
    all; returns the widest clock seen. A knob that does not work fails the run."""
    widest = 0
    for c in range(CONVERSATIONS):
        clocks = [e.clock for e in store.tail(conversation(c), 50)]
        if want and not all(clocks):
            raise RuntimeError(f"clocks on, yet an event of {conversation(c)} has no clock")
        if not want and any(clocks):
            raise RuntimeError(f"clocks off, yet an event of {conversation(c)} has a clock: {clocks[-1]}")
        if want and not any(len(k) > 1 for k in clocks):
            raise RuntimeError(f"no clock of {conversation(c)} merged a cause: {clocks[-1]}")
        widest = max([widest, *(len(k) for k in clocks)])
    return widest


def log_bytes(store: EventStore) -> int:
    """The bytes of the conversations' files (one segment each: nothing rotates here)."""
    logs = Path(store.paths.logs_dir)
    return sum(p.stat().st_size for p in logs.iterdir() if p.name.endswith(".jsonl"))


Runner = Callable[[Workload, int], tuple[Sample, float]]


def measure(w: Workload, clocks: bool, fn: Runner, per: int, events: int, into: Runs) -> int:
    """One run of ``fn`` with the writer's clocks on or off, added to ``into``; returns the
    widest clock written (0 when off)."""
    w.store._writer.clocks = clocks
    before = log_bytes(w.store)
    s, cpu = fn(w, per)
    into.rates.append(events / s.seconds)
    into.cpu.append(cpu / events)
    into.line_bytes.append((log_bytes(w.store) - before) / events)
    into.latencies += s.latencies
    return check_clocks(w.store, clocks)


def run(cfg: Config) -> list[Section]:
    n_rounds, events = rounds(cfg), per_round(cfg)
    per_writer = events // WRITERS
    events = per_writer * WRITERS
    per_thread = max(BATCH, events // BATCH_THREADS // BATCH * BATCH * 2)  # twice the events: it is faster
    batch_events = per_thread * BATCH_THREADS
    sec = Section(
        "The cost of vector clocks on appends",
        "./dev bench --only clocks" + (" --quick" if cfg.quick else ""),
        f"One store takes the same workload with its writer computing every event's vector clock and with "
        f"`LogWriter.clocks = False` (the baseline: `{{}}` stored, nothing computed), in {n_rounds} interleaved "
        f"rounds (on, off, then off, on, ...) of {events:,} events each; figures are medians over the rounds. "
        f"{WRITERS} threads, each an agent of its own, {WRITERS // CONVERSATIONS} in each of {CONVERSATIONS} "
        f"conversations, each appending one event at a time with `EventStore.append` (durable before it "
        f"returns); every {CAUSE_EVERY}th event names the newest event of another agent of its conversation "
        "in `caused_by`, whose clock is merged. The peer: the plain loop (open + flock + write + fsync + close "
        f"per event) on {WRITERS} threads, at the start of every round. Then the same events by "
        f"`append_many`, {BATCH} per call from {BATCH_THREADS} threads, {batch_events:,} per round: no fsync per "
        "event hides the writer's work there, so it is the clocks' largest share. The overhead is, per round, "
        "how much longer an event took with clocks than without (the baseline's rate over the clocks' rate, "
        "minus 1), then the median of the rounds. CPU per event is the whole process's CPU time (the writer "
        "threads and the commit thread) over the events.",
    )
    with tempfile.TemporaryDirectory(dir=cfg.tmp, prefix="sidecar-bench-") as tmp_name:
        tmp = Path(tmp_name)
        plain = tmp / "plain.jsonl"
        with EventStore(tmp / "sidecar") as store:
            if not hasattr(store._writer, "clocks"):
                raise RuntimeError("LogWriter has no `clocks` attribute: this code cannot append without clocks")
            w = Workload(store)
            for clocks in (True, False):  # warm up: files created, code paths hot, a newest event per writer
                measure(w, clocks, one_at_a_time, 20, 20 * WRITERS, Runs())
                measure(w, clocks, batched, BATCH, BATCH * BATCH_THREADS, Runs())
            plain_loop(plain, WRITERS, 20)

            peer = Runs()
            single = {name: Runs() for name in (ON, OFF)}
            many = {name: Runs() for name in (ON, OFF)}
            widest = 0
            for r in range(n_rounds):
                s = plain_loop(plain, WRITERS, per_writer)
                peer.rates.append(events / s.seconds)
                peer.latencies += s.latencies
                for name in (ON, OFF) if r % 2 == 0 else (OFF, ON):
                    got = measure(w, name == ON, one_at_a_time, per_writer, events, single[name])
                    widest = max(widest, got)
            for r in range(n_rounds):
                for name in (ON, OFF) if r % 2 == 0 else (OFF, ON):
                    measure(w, name == ON, batched, per_thread, batch_events, many[name])
            store._writer.clocks = True

    t = sec.table(
        f"{WRITERS} writers, one durable append in flight each ({n_rounds} rounds of {events:,} events; "
        "appends/s the median of the rounds)",
        ["what", "appends/s", "vs plain loop", "p50 / p99 ms", "CPU per event", "bytes per line"],
    )
    base = peer.rate
    t.row(
        f"plain loop, {WRITERS} threads (peer)",
        f"{base:,.0f}",
        "1.00x",
        f"{pct(peer.latencies, 0.5) * 1e3:.2f} / {pct(peer.latencies, 0.99) * 1e3:.2f}",
        "-",
        "-",
    )
    for name in (OFF, ON):
        g = single[name]
        t.row(
            f"sidecar in-process, {name}",
            f"{g.rate:,.0f}",
            f"{g.rate / base:.2f}x",
            f"{pct(g.latencies, 0.5) * 1e3:.2f} / {pct(g.latencies, 0.99) * 1e3:.2f}",
            f"{statistics.median(g.cpu) * 1e6:.1f} us",
            f"{statistics.median(g.line_bytes):.0f}",
        )
    t2 = sec.table(
        f"`append_many`, {BATCH} events per call, {BATCH_THREADS} threads ({n_rounds} rounds of "
        f"{batch_events:,} events)",
        ["what", "events/s", "p50 / p99 ms per call", "CPU per event"],
    )
    for name in (OFF, ON):
        g = many[name]
        t2.row(
            f"sidecar in-process, {name}",
            f"{g.rate:,.0f}",
            f"{pct(g.latencies, 0.5) * 1e3:.2f} / {pct(g.latencies, 0.99) * 1e3:.2f}",
            f"{statistics.median(g.cpu) * 1e6:.1f} us",
        )

    one = overheads(single[ON], single[OFF])
    bat = overheads(many[ON], many[OFF])

    def cpu_overhead(g: dict[str, Runs]) -> float:
        return (statistics.median(g[ON].cpu) / statistics.median(g[OFF].cpu) - 1) * 100

    t3 = sec.table(
        "The clocks' overhead: how much longer an event takes with them",
        ["workload", "median of the rounds", "rounds (min .. max)", "CPU per event", "p50 latency", "target"],
    )
    p50 = (pct(single[ON].latencies, 0.5) / pct(single[OFF].latencies, 0.5) - 1) * 100
    t3.row(
        f"{WRITERS} writers, one append in flight each",
        f"{statistics.median(one):+.1f}%",
        f"{min(one):+.1f}% .. {max(one):+.1f}%",
        f"{cpu_overhead(single):+.1f}%",
        f"{p50:+.1f}%",
        f"< {THRESHOLD:.0f}%",
    )
    p50b = (pct(many[ON].latencies, 0.5) / pct(many[OFF].latencies, 0.5) - 1) * 100
    t3.row(
        f"`append_many` x {BATCH}",
        f"{statistics.median(bat):+.1f}%",
        f"{min(bat):+.1f}% .. {max(bat):+.1f}%",
        f"{cpu_overhead(many):+.1f}%",
        f"{p50b:+.1f}%",
        "(the worst case, for scale)",
    )
    sec.target(
        f"appends with clocks take < {THRESHOLD:.0f}% longer than without (median of {n_rounds} paired rounds: "
        f"{statistics.median(one):+.1f}%)",
        statistics.median(one) < THRESHOLD,
    )
    on_bytes, off_bytes = (statistics.median(single[n].line_bytes) for n in (ON, OFF))
    sec.note(
        f"the widest clock written had {widest} entries; with its clock a line is {on_bytes - off_bytes:.0f} "
        f"bytes longer ({on_bytes:.0f} against {off_bytes:.0f})."
    )
    sec.data = {
        "rounds": n_rounds,
        "events_per_round": events,
        "plain_loop_rate": peer.rates,
        "one_at_a_time": {n: {"rates": g.rates, "cpu_per_event": g.cpu} for n, g in single.items()},
        "append_many": {n: {"rates": g.rates, "cpu_per_event": g.cpu} for n, g in many.items()},
        "overhead_pct": statistics.median(one),
        "overhead_pct_append_many": statistics.median(bat),
        "bytes_per_line": {ON: on_bytes, OFF: off_bytes},
    }
    return [sec]


if __name__ == "__main__":
    import sys

    import run_all

    run_all.main(["--only", "clocks", *sys.argv[1:]])
