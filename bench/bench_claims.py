"""Task claims: claim-to-done with 8 agents beside SQLite and Redis, and claim latency against
the graph's size.

    python bench/bench_claims.py [--quick]     # this section alone (run_all.py --only claims)

Issue 18 ("Measure"): 8 agents, each on its own connection, loop claim -> done until a claim
answers null; the same 8 agents on a SQLite job table and on a Redis queue, and a plain loop
that rewrites the whole graph file per change (the baseline), all in the same run. Then the
claim latency of one client on a graph pre-filled with 10^3, 10^4 and 10^5 pending tasks,
which the issue wants flat, beside the same claim on SQLite and Redis, and the writer
thread's steps timed one by one on the same graphs, to show where a claim's time goes.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import selectors
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec
from bench_appends import in_threads
from bench_daemon import REDIS, Daemon, RedisServer, call, load, redis_version, request, resp_command
from plots import Panel, Series, figure
from report import Config, Section, count, ms, pct

from sidecar.fs import atomic_write
from sidecar.log.timestamps import format_timestamp
from sidecar.tasks.graph import TaskGraph
from sidecar.tasks.model import Task
from sidecar.tasks.queue import ClaimQueue
from sidecar.tasks.service import JOURNAL_MAX, JOURNAL_MIN
from sidecar.tasks.store import GRAPH_FILE, append_journal, read_graph, write_graph

AGENTS = 8
LEASE_S = 300  # long enough that no lease runs out during a run
CONVERSATION = "bench-claims"  # every task belongs to it, so every change is audited in the log
OUTPUTS = {"result": "ok", "files_changed": 3}
BASE_NS = 1_795_000_000_000_000_000  # 2026-11-18: every pre-filled task is older than the run


def sizes(cfg: Config) -> tuple[int, Sequence[int]]:
    """(tasks for the 8 agents to drain, graph sizes for the latency sweep)."""
    return (320, (1_000, 10_000)) if cfg.quick else (2_000, (1_000, 10_000, 100_000))


# --- what one run of the agents gives -----------------------------------------------------------


@dataclass
class Drained:
    """8 agents' run: how long it took, each claim's and each done's latency, the tasks done."""

    seconds: float
    claims: list[float] = field(default_factory=list)
    dones: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.ids) / self.seconds

    def check(self, expected: int) -> None:
        """Every task done once: none lost, none handed out twice."""
        if len(self.ids) != expected or len(set(self.ids)) != expected:
            raise RuntimeError(f"{len(self.ids)} tasks done ({len(set(self.ids))} distinct), expected {expected}")


# --- the wires: JSON-RPC to the daemon, RESP to Redis -------------------------------------------


class Wire(Protocol):
    def claim(self, agent: int, rid: int) -> bytes: ...
    def claimed(self, reply: Any) -> str | None: ...
    def done(self, agent: int, rid: int, task_id: str) -> bytes: ...
    def check_done(self, reply: Any) -> None: ...
    def take(self, buf: bytearray) -> tuple[Any] | None:
        """One complete reply off the front of ``buf`` (in a 1-tuple), or None if not all in."""
        ...


class SidecarWire:
    """``tasks.claim`` and ``tasks.update {status: done, agent_id, outputs}``."""

    def claim(self, agent: int, rid: int) -> bytes:
        return request(rid, "tasks.claim", {"agent_id": f"agent-{agent}", "lease_s": LEASE_S})

    def claimed(self, reply: Any) -> str | None:
        task = reply["task"]
        return None if task is None else task["id"]

    def done(self, agent: int, rid: int, task_id: str) -> bytes:
        params = {"id": task_id, "status": "done", "agent_id": f"agent-{agent}", "outputs": OUTPUTS}
        return request(rid, "tasks.update", params)

    def check_done(self, reply: Any) -> None:
        if reply["status"] != "done":
            raise RuntimeError(f"not done: {reply}")

    def take(self, buf: bytearray) -> tuple[Any] | None:
        end = buf.find(b"\n")
        if end < 0:
            return None
        reply = json.loads(bytes(buf[:end]))
        del buf[: end + 1]
        if "error" in reply:
            raise RuntimeError(f"error from the daemon: {reply['error']}")
        return (reply["result"],)


# The reliable-queue pattern (LMOVE pending -> processing, LREM when done), with the holder and
# its lease recorded at the claim and checked at done (fencing), each one atomic Lua script.
CLAIM_LUA = b"""
local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
if not id then return false end
redis.call('HSET', 'task:' .. id, 'status', 'running', 'owner', ARGV[1], 'lease_expires', ARGV[2])
redis.call('HINCRBY', 'task:' .. id, 'attempts', 1)
return id
"""
DONE_LUA = b"""
if redis.call('HGET', 'task:' .. ARGV[1], 'owner') ~= ARGV[2] then return redis.error_reply('not the holder') end
redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('HSET', 'task:' .. ARGV[1], 'status', 'done', 'outputs', ARGV[3])
return 1
"""
OUTPUTS_JSON = json.dumps(OUTPUTS).encode()


def resp_take(buf: bytearray) -> tuple[Any] | None:
    """One RESP reply: a simple string, an integer or a bulk string (None when nil)."""
    end = buf.find(b"\r\n")
    if end < 0:
        return None
    kind, head = buf[:1], bytes(buf[1:end])
    if kind == b"-":
        raise RuntimeError(f"error from redis: {head.decode()}")
    if kind == b"$":
        size = int(head)
        if size < 0:
            del buf[: end + 2]
            return (None,)
        if len(buf) < end + 2 + size + 2:
            return None
        value: Any = bytes(buf[end + 2 : end + 2 + size]).decode()
        del buf[: end + 2 + size + 2]
        return (value,)
    del buf[: end + 2]
    return (int(head) if kind == b":" else head.decode(),)


class RedisWire:
    def __init__(self, claim_sha: str, done_sha: str) -> None:
        self.claim_sha, self.done_sha = claim_sha.encode(), done_sha.encode()

    def claim(self, agent: int, rid: int) -> bytes:
        expires = b"%d" % (time.time() + LEASE_S)
        return resp_command(b"EVALSHA", self.claim_sha, b"2", b"pending", b"processing", b"agent-%d" % agent, expires)

    def claimed(self, reply: Any) -> str | None:
        return reply

    def done(self, agent: int, rid: int, task_id: str) -> bytes:
        return resp_command(
            b"EVALSHA", self.done_sha, b"1", b"processing", task_id.encode(), b"agent-%d" % agent, OUTPUTS_JSON
        )

    def check_done(self, reply: Any) -> None:
        if reply != 1:
            raise RuntimeError(f"not done: {reply!r}")

    def take(self, buf: bytearray) -> tuple[Any] | None:
        return resp_take(buf)


def roundtrip(sock: socket.socket, wire: Wire, data: bytes, buf: bytearray) -> Any:
    """One request on a blocking socket, its reply's value."""
    sock.sendall(data)
    while (got := wire.take(buf)) is None:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise RuntimeError("the server closed the connection")
        buf += chunk
    return got[0]


def redis_setup(path: str, ids: Sequence[str]) -> RedisWire:
    """An empty queue filled with ``ids`` in claim order; the two scripts loaded."""
    wire = RedisWire("", "")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        buf = bytearray()
        roundtrip(s, wire, resp_command(b"FLUSHALL"), buf)
        for i in range(0, len(ids), 1000):
            roundtrip(s, wire, resp_command(b"RPUSH", b"pending", *(x.encode() for x in ids[i : i + 1000])), buf)
        shas = [roundtrip(s, wire, resp_command(b"SCRIPT", b"LOAD", lua), buf) for lua in (CLAIM_LUA, DONE_LUA)]
    return RedisWire(*shas)


# --- 8 agents on sockets: one process multiplexing them (as bench_daemon.load does) ---------------


class _Agent:
    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.buf = bytearray()
        self.sent = 0.0
        self.task: str | None = None  # the task held: a done is in flight


def agents_on_socket(path: str, wire: Wire, agents: int = AGENTS) -> Drained:
    """``agents`` connections, each looping claim -> done until its claim answers null."""
    sel = selectors.DefaultSelector()
    conns: list[_Agent] = []
    rid = 0

    def send(a: _Agent) -> None:
        nonlocal rid
        rid += 1
        data = wire.claim(a.index, rid) if a.task is None else wire.done(a.index, rid, a.task)
        a.sent = time.perf_counter()
        a.sock.sendall(data)  # small: the socket's buffer takes it whole

    try:
        for i in range(agents):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conns.append(_Agent(i, s))
            s.connect(path)
        out = Drained(0.0)
        t0 = time.perf_counter()
        for a in conns:
            send(a)
            sel.register(a.sock, selectors.EVENT_READ, a)
        active = len(conns)
        while active:
            for key, _ in sel.select():
                a = key.data
                chunk = a.sock.recv(1 << 16)
                if not chunk:
                    raise RuntimeError("the server closed the connection")
                a.buf += chunk
                got = wire.take(a.buf)
                if got is None:
                    continue
                lat = time.perf_counter() - a.sent
                if a.task is None:
                    a.task = wire.claimed(got[0])
                    if a.task is None:  # nothing left: this agent stops
                        sel.unregister(a.sock)
                        active -= 1
                        continue
                    out.claims.append(lat)
                else:
                    wire.check_done(got[0])
                    out.dones.append(lat)
                    out.ids.append(a.task)
                    a.task = None
                send(a)
        out.seconds = time.perf_counter() - t0
    finally:
        sel.close()
        for a in conns:
            a.sock.close()
    return out


# --- 8 agents as threads in this process: SQLite, and the plain file loop ------------------------


Claimer = Callable[[int], str | None]  # agent -> a claimed task id, or None
Finisher = Callable[[int, str], None]  # agent, task id -> done


def agents_in_threads(
    prepare: Callable[[int], tuple[Claimer, Finisher]], agents: int = AGENTS, limit: int | None = None
) -> Drained:
    """``agents`` threads, each set up by ``prepare(i)`` untimed, then released together; each
    loops claim -> done until a claim answers None (or ``limit`` tasks are done in all)."""
    lock = threading.Lock()
    out = Drained(0.0)
    taken = [0]

    def setup(i: int) -> Callable[[], list[float]]:
        claim, done = prepare(i)

        def work() -> list[float]:
            while True:
                with lock:
                    if limit is not None and taken[0] >= limit:
                        return []
                    taken[0] += 1
                t = time.perf_counter()
                task = claim(i)
                t1 = time.perf_counter()
                if task is None:
                    return []
                done(i, task)
                t2 = time.perf_counter()
                with lock:
                    out.claims.append(t1 - t)
                    out.dones.append(t2 - t1)
                    out.ids.append(task)

        return work

    out.seconds = in_threads(setup, agents).seconds
    return out


SQLITE_CLAIM = (
    "UPDATE jobs SET status = 'running', owner = ?, lease_expires = ?, attempts = attempts + 1 "
    "WHERE id = (SELECT id FROM jobs WHERE status = 'pending' ORDER BY priority, created LIMIT 1) RETURNING id"
)
SQLITE_DONE = "UPDATE jobs SET status = 'done', outputs = ? WHERE id = ? AND owner = ? AND status = 'running'"


def sqlite_fill(path: Path, tasks: Sequence[Task]) -> None:
    """A job table in WAL mode with a partial index of the pending jobs in claim order."""
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, type TEXT NOT NULL, status TEXT NOT NULL, "
            "priority INTEGER NOT NULL, created TEXT NOT NULL, owner TEXT, lease_expires REAL, "
            "attempts INTEGER NOT NULL DEFAULT 0, inputs TEXT, outputs TEXT)"
        )
        db.execute("CREATE INDEX ready ON jobs (priority, created) WHERE status = 'pending'")
        db.executemany(
            "INSERT INTO jobs (id, type, status, priority, created, inputs) VALUES (?, ?, ?, ?, ?, ?)",
            ((t.id, t.type, t.status, t.priority, t.created_at, json.dumps(t.inputs)) for t in tasks),
        )


def sqlite_agent(path: Path, opened: list[sqlite3.Connection]) -> Callable[[int], tuple[Claimer, Finisher]]:
    """Each agent its own connection, autocommit, synchronous=FULL: every statement is its own
    transaction, the WAL synced at its commit."""

    def prepare(_: int) -> tuple[Claimer, Finisher]:
        db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        opened.append(db)
        db.execute("PRAGMA synchronous=FULL")
        outputs = json.dumps(OUTPUTS)

        def claim(agent: int) -> str | None:
            rows = db.execute(SQLITE_CLAIM, (f"agent-{agent}", time.time() + LEASE_S)).fetchall()
            return rows[0][0] if rows else None

        def done(agent: int, task_id: str) -> None:
            if db.execute(SQLITE_DONE, (outputs, task_id, f"agent-{agent}")).rowcount != 1:
                raise RuntimeError(f"SQLite: {task_id} was not held by agent-{agent}")

        return claim, done

    return prepare


def file_loop_agent(path: Path) -> Callable[[int], tuple[Claimer, Finisher]]:
    """The baseline: every claim and every done locks the graph file, reads and decodes all of
    it, scans it for the best pending task, and writes all of it back (temp file, fsync,
    rename, directory fsync), in the daemon's own file format. No memory, no batching, no index."""
    lock_path = str(path) + ".lock"
    decoder = msgspec.json.Decoder()
    encoder = msgspec.json.Encoder()

    def change(apply: Callable[[list[dict[str, Any]]], str | None]) -> str | None:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            doc = decoder.decode(path.read_bytes())
            got = apply(doc["tasks"])
            if got is not None:
                doc["version"] += 1
                atomic_write(str(path), msgspec.json.format(encoder.encode(doc), indent=2) + b"\n")
            return got
        finally:
            os.close(fd)

    def prepare(_: int) -> tuple[Claimer, Finisher]:
        def claim(agent: int) -> str | None:
            def pick(tasks: list[dict[str, Any]]) -> str | None:
                pending = [t for t in tasks if t["status"] == "pending"]
                if not pending:
                    return None
                best = min(pending, key=lambda t: (t["priority"], t["created_at"], t["id"]))
                best.update(status="running", owner=f"agent-{agent}", lease_owner=f"agent-{agent}")
                best["attempts"] += 1
                return best["id"]

            return change(pick)

        def done(agent: int, task_id: str) -> None:
            def finish(tasks: list[dict[str, Any]]) -> str | None:
                task = next(t for t in tasks if t["id"] == task_id)
                if task["lease_owner"] != f"agent-{agent}":
                    raise RuntimeError(f"file loop: {task_id} not held by agent-{agent}")
                task.update(status="done", outputs=OUTPUTS, lease_owner=None)
                return task_id

            change(finish)

        return claim, done

    return prepare


# --- the graphs -----------------------------------------------------------------------------------


def pending_tasks(n: int, seed: int = 1) -> list[Task]:
    """``n`` pending tasks of one conversation, priorities 0-4 at random, one microsecond apart."""
    rng = random.Random(seed)
    return [
        Task(
            id=f"t{i:06d}",
            type="work",
            created_at=(ts := format_timestamp(BASE_NS + i * 1000)),
            updated_at=ts,
            conversation_id=CONVERSATION,
            priority=rng.randint(0, 4),
            inputs={"path": f"src/module_{i % 97}.py", "step": i},
        )
        for i in range(n)
    ]


def mostly_done(n: int, pending: int) -> list[Task]:
    """``n`` tasks of which all but the newest ``pending`` are done (a graph with a history)."""
    return [
        t if i >= n - pending else msgspec.structs.replace(t, status="done", outputs=OUTPUTS, attempts=1, version=3)
        for i, t in enumerate(pending_tasks(n, seed=n))
    ]


def claim_order(tasks: Sequence[Task]) -> list[str]:
    pending = (t for t in tasks if t.status == "pending")
    return [t.id for t in sorted(pending, key=lambda t: (t.priority, t.created_at, t.id))]


def write_graph_file(data_dir: Path, tasks: list[Task]) -> Path:
    """The daemon's graph file written directly, before it starts (as ``write_graph`` does)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / GRAPH_FILE
    write_graph(str(path), TaskGraph(tasks, len(tasks)))
    return path


# --- 1. claim to done with 8 agents ---------------------------------------------------------------


def fill_daemon(socket_path: str, tasks: Sequence[Task]) -> float:
    """Create ``tasks`` through ``tasks.create``, 8 connections x 8 in flight; creates per second."""
    per = len(tasks) // AGENTS
    assert per * AGENTS == len(tasks)

    made = [0] * AGENTS  # how many each connection has sent: it sends its own slice of the tasks

    def make(c: int, i: int) -> bytes:
        t = tasks[c * per + made[c]]
        made[c] += 1
        return request(
            i,
            "tasks.create",
            {"type": t.type, "id": t.id, "priority": t.priority, "conversation_id": CONVERSATION, "inputs": t.inputs},
        )

    took, lat = load(socket_path, AGENTS, 8, per, make)
    return len(lat) / took


def throughput(sec: Section, tmp: Path, stack: ExitStack, n: int) -> dict[str, Any]:
    tasks = pending_tasks(n)
    order = claim_order(tasks)
    rows: dict[str, tuple[str, Drained]] = {}

    # The baseline first, on its own file of n tasks; it is slow, so it drains only part of it.
    limit = max(AGENTS * 4, n // 10)
    base_file = tmp / "baseline" / GRAPH_FILE
    write_graph_file(base_file.parent, tasks)
    agents_in_threads(file_loop_agent(base_file), 2, limit=4)  # warm: code paths hot
    base = agents_in_threads(file_loop_agent(base_file), limit=limit)
    base.check(limit)
    graph_mb = base_file.stat().st_size / 1e6

    # The daemon: n tasks created through its socket (so they are in the log's audit too).
    daemon = stack.enter_context(Daemon(tmp / "sidecar", tmp / "run"))
    call(daemon.socket, "tasks.create", {"type": "warm", "id": "warm-0", "conversation_id": CONVERSATION})
    created = fill_daemon(daemon.socket, tasks)
    # The warm-up task has priority 2 and is the oldest at 2: the agents take it with the rest.
    before = call(daemon.socket, "sys.stats", {})
    got = agents_on_socket(daemon.socket, SidecarWire())
    after = call(daemon.socket, "sys.stats", {})
    got.check(n + 1)
    writes = after["task_graph_writes"] - before["task_graph_writes"]
    rows["sidecar"] = (
        "the changed tasks appended to the graph's journal and the audit event, both fdatasync'd, before each "
        "answer (the whole file rewritten once the journal outgrows it)",
        got,
    )

    # SQLite: the same tasks in a job table, the same claim order.
    db_path = tmp / "jobs.db"
    sqlite_fill(db_path, tasks)
    opened: list[sqlite3.Connection] = []
    try:
        lite = agents_in_threads(sqlite_agent(db_path, opened))
    finally:
        for db in opened:
            db.close()
    lite.check(n)
    rows["SQLite WAL, synchronous=FULL"] = ("WAL fsync'd at every commit (each statement its own transaction)", lite)
    sqlite_fill(db_path, tasks)  # the same again with one agent: SQLite takes one writer at a time
    opened = []
    try:
        alone = agents_in_threads(sqlite_agent(db_path, opened), 1)
    finally:
        for db in opened:
            db.close()
    alone.check(n)

    if REDIS is None:
        sec.note("Redis was skipped: redis-server is not installed here (`./dev bench` installs it as root on Debian).")
    for fsync, name, durability in (
        (True, "Redis AOF always", "AOF written and fsync'd before each reply"),
        (False, "Redis, no AOF", "none: in memory only, lost on a crash (the ceiling)"),
    ):
        if REDIS is None:
            break
        try:
            server = RedisServer(tmp / ("redis" if fsync else "redis-nofsync"), fsync=fsync)
        except (OSError, RuntimeError, TimeoutError) as e:
            sec.note(f"{name} was skipped: {e}")
            continue
        stack.callback(server.stop)
        wire = redis_setup(server.socket, order)
        drained = agents_on_socket(server.socket, wire)
        drained.check(n)
        rows[name] = (durability, drained)

    t = sec.table(
        f"Claim to done, {AGENTS} agents, {n:,} pending tasks",
        ["system", "durable before each answer", "tasks/s", "vs baseline", "claim p50 / p99 ms", "done p50 / p99 ms"],
    )
    whole_file = "the whole graph file rewritten per change: temp, fsync, rename, dir fsync"
    all_rows = {"baseline: plain file loop": (whole_file, base), **rows}
    for name, (durability, d) in all_rows.items():
        t.row(
            name,
            durability,
            f"{d.rate:,.0f}",
            f"{d.rate / base.rate:.1f}x",
            f"{pct(d.claims, 0.5) * 1e3:.2f} / {pct(d.claims, 0.99) * 1e3:.2f}",
            f"{pct(d.dones, 0.5) * 1e3:.2f} / {pct(d.dones, 0.99) * 1e3:.2f}",
        )
    changes = 2 * len(got.ids)
    sec.note(
        f"the sidecar's {n:,} tasks were created through its socket with `tasks.create` ({AGENTS} connections x 8 in "
        f"flight, {created:,.0f} creates/s); while the agents ran it made {writes:,} batches durable for "
        f"{changes:,} changes (claims and dones): {changes / max(writes, 1):.1f} changes per batch"
    )
    sec.note(
        f"the baseline drained {limit:,} of its {n:,} tasks (it is slow); its graph file was {graph_mb:.1f} MB, the "
        "same format and size as the daemon's. It runs as threads in this process, as SQLite does; the sidecar and "
        "Redis are driven through their sockets by one Python process (the 8 agents multiplexed, each one "
        "request in flight)."
    )
    sec.note(
        "Redis: the reliable-queue pattern, `LMOVE pending processing` then `LREM processing`, each in a Lua script "
        "(`EVALSHA`) that also records the holder and its lease at the claim and checks the holder at done; the "
        "list is filled in claim order (priority, then age), so it claims in the same order, but it keeps no "
        "priorities after that, no dependencies and no lease expiry. SQLite: `UPDATE ... WHERE id = (SELECT ... "
        "ORDER BY priority, created LIMIT 1) RETURNING id` on a partial index of the pending jobs, and "
        "`UPDATE ... WHERE id = ? AND owner = ?` at done."
    )
    sec.note(
        f"SQLite takes one writer at a time: one agent alone drained the same {n:,} tasks at {alone.rate:,.0f}/s "
        f"(the 8 agents: {lite.rate / alone.rate:.1f}x that); its per-call latencies do not count the wait "
        "for the other threads (the write lock, the GIL) before each call"
    )
    if REDIS is not None:
        sec.note(f"Redis is redis-server {redis_version()}.")
    return {
        "tasks": n,
        "rows": {
            k: {
                "rate": d.rate,
                "claim_p50": pct(d.claims, 0.5),
                "claim_p99": pct(d.claims, 0.99),
                "done_p50": pct(d.dones, 0.5),
                "done_p99": pct(d.dones, 0.99),
                "tasks_done": len(d.ids),
            }
            for k, (_, d) in all_rows.items()
        },
        "graph_writes": writes,
        "changes_per_write": changes / max(writes, 1),
        "creates_per_s": created,
        "sqlite_one_agent": alone.rate,
    }


# --- 2. claim latency against the graph's size ------------------------------------------------------


def sequential(one: Callable[[], object], most: int, budget_s: float, least: int = 20) -> list[float]:
    """Up to ``most`` calls one after another, each timed; stops after ``budget_s`` once ``least`` are in."""
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(times) < most and (len(times) < least or time.perf_counter() < t_end):
        t = time.perf_counter()
        one()
        times.append(time.perf_counter() - t)
    return times


def sidecar_claims(path: str, most: int, budget_s: float) -> list[float]:
    wire = SidecarWire()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        buf = bytearray()
        rid = [0]

        def one() -> None:
            rid[0] += 1
            if wire.claimed(roundtrip(s, wire, wire.claim(0, rid[0]), buf)) is None:
                raise RuntimeError("the daemon had no task to claim")

        return sequential(one, most, budget_s)


def sidecar_calls(path: str, make: Callable[[int], bytes], calls: int) -> list[float]:
    """``calls`` round trips of another method on the same daemon, each timed."""
    wire = SidecarWire()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        buf = bytearray()
        return sequential(lambda: roundtrip(s, wire, make(1), buf), calls, 0.0, least=calls)


def redis_claims(path: str, order: Sequence[str], most: int) -> list[float]:
    wire = redis_setup(path, order)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        buf = bytearray()

        def one() -> None:
            if roundtrip(s, wire, wire.claim(0, 0), buf) is None:
                raise RuntimeError("redis had no task to claim")

        return sequential(one, most, 0.0, least=most)


def sqlite_claims(path: Path, tasks: Sequence[Task], most: int) -> list[float]:
    sqlite_fill(path, tasks)
    opened: list[sqlite3.Connection] = []
    claim, _ = sqlite_agent(path, opened)(0)
    try:

        def one() -> None:
            if claim(0) is None:
                raise RuntimeError("SQLite had no job to claim")

        return sequential(one, most, 0.0, least=most)
    finally:
        for db in opened:
            db.close()


@dataclass
class Phases:
    """The writer thread's steps for one batch of one claim, on a graph of n tasks, as
    ``TaskService._apply_and_write`` takes them, timed in this process (medians); and what a
    checkpoint (the whole file, once the journal has outgrown it) costs when it comes."""

    copy: float  # TaskGraph.copy: the graph every batch is applied to (buckets shared until written)
    claim: float  # queue.take + graph.claim + queue.changed: the claim itself
    journal: float  # append_journal: the changed task encoded, appended, fdatasync'd
    checkpoint: float  # write_graph: sort, encode, indent, temp file, fsync, rename, dir fsync
    every: int  # batches of one claim between two checkpoints (the journal outgrows the file)
    size: int
    rounds: int

    STEPS = ("copy", "claim", "journal")

    @property
    def per_batch(self) -> float:
        return sum(getattr(self, k) for k in self.STEPS) + self.checkpoint / self.every


def phases(path: Path, scratch: Path, rounds: int) -> Phases:
    """``rounds`` batches of one claim each, step by step as the daemon's writer does them, on
    a copy of the graph file at ``path`` (its journal in ``scratch``, on the same disk), and
    one checkpoint."""
    graph = read_graph(str(path))
    queue = ClaimQueue()
    queue.rebuild(graph)
    scratch.mkdir(parents=True, exist_ok=True)
    target = str(scratch / GRAPH_FILE)
    times: dict[str, list[float]] = {k: [] for k in Phases.STEPS}
    line = 0
    for i in range(rounds):
        t0 = time.perf_counter()
        work = graph.copy()
        t1 = time.perf_counter()
        chosen = queue.take(work, None)
        assert chosen is not None
        claimed = work.claim(chosen.id, "agent-0", LEASE_S, BASE_NS + 10**15 + i)
        queue.changed(work, chosen, claimed)
        t2 = time.perf_counter()
        size = append_journal(target, work.version, [claimed])
        t3 = time.perf_counter()
        graph, line = work, size // (i + 1)
        for k, a, b in zip(Phases.STEPS, (t0, t1, t2), (t1, t2, t3), strict=True):
            times[k].append(b - a)
    t4 = time.perf_counter()
    write_graph(target, graph)
    checkpoint = time.perf_counter() - t4
    size = os.path.getsize(target)
    every = max(1, min(JOURNAL_MAX, max(JOURNAL_MIN, size)) // max(1, line))
    return Phases(
        **{k: pct(v, 0.5) for k, v in times.items()}, checkpoint=checkpoint, every=every, size=size, rounds=rounds
    )


class Pinger:
    """``sys.health`` on its own connection, one at a time, every millisecond or so, while
    something else runs: how long the daemon's event loop keeps others waiting meanwhile."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        wire = SidecarWire()
        health = request(1, "sys.health", {})
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(self.path)
            buf = bytearray()
            while not self._stop.wait(0.001):
                t = time.perf_counter()
                roundtrip(s, wire, health, buf)
                self.times.append(time.perf_counter() - t)

    def __enter__(self) -> Pinger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def latency(cfg: Config, sec: Section, tmp: Path, ns: Sequence[int]) -> dict[str, Any]:
    most, budget = 200, (5.0 if cfg.quick else 15.0)
    keys = (
        "claim_p50",
        "claim_p99",
        "claims",
        "claim_ms_mean",
        "health_p50",
        "health_p99",
        "get_p50",
        "append_p50",
        "startup",
        "file_s",
        "sqlite_p50",
        "sqlite_p99",
        "redis_p50",
        "redis_p99",
    )
    out: dict[str, Any] = {k: [] for k in (*keys, "phases")}
    t = sec.table(
        "Claim latency against the graph's size: one client, one claim at a time, p50 / p99 ms",
        [
            "tasks in the graph",
            "graph file",
            "daemon start to READY=1",
            "`tasks.claim` (claims timed)",
            "the daemon's own `claim_ms_mean`",
            "`sys.health` on another connection, meanwhile",
            "`log.append` (same daemon)",
            "`tasks.get` (same daemon)",
            "SQLite WAL FULL claim",
            "Redis AOF always claim",
        ],
    )
    redis = None
    if REDIS is not None:
        try:
            redis = RedisServer(tmp / "redis-latency", fsync=True)
        except (OSError, RuntimeError, TimeoutError) as e:
            sec.note(f"Redis (latency) was skipped: {e}")
    history = (10_000, 200)  # a graph that has done most of its work: n tasks, few pending
    found: list[Phases] = []
    try:
        for n, pending in [(n, n) for n in ns] + [history]:
            tasks = pending_tasks(n, seed=n) if pending == n else mostly_done(n, pending)
            t0 = time.perf_counter()
            graph_path = write_graph_file(tmp / f"latency-{n}-{pending}", tasks)
            file_s = time.perf_counter() - t0
            size = graph_path.stat().st_size
            with Daemon(graph_path.parent, tmp / f"run-{n}-{pending}") as d:
                call(d.socket, "sys.health", {})
                with Pinger(d.socket) as pinger:
                    claims = sidecar_claims(d.socket, min(most, pending), budget)
                stats = call(d.socket, "sys.stats", {})
                assert isinstance(stats, dict)
                event = {"conversation_id": CONVERSATION, "type": "agent.progress", "data": {"msg": "step"}}
                appends = sidecar_calls(d.socket, lambda i, e=event: request(i, "log.append", e), 50)
                last = {"id": tasks[-1].id}
                gets = sidecar_calls(d.socket, lambda i, r=last: request(i, "tasks.get", r), 200)
                startup = d.startup_s
            lite = sqlite_claims(tmp / f"jobs-{n}-{pending}.db", tasks, min(most, pending))
            reds = redis_claims(redis.socket, claim_order(tasks), min(most, pending)) if redis else []
            health = pinger.times
            row = {
                "claim_p50": pct(claims, 0.5),
                "claim_p99": pct(claims, 0.99),
                "claims": len(claims),
                "claim_ms_mean": stats["claim_ms_mean"],
                "health_p50": pct(health, 0.5),
                "health_p99": pct(health, 0.99),
                "get_p50": pct(gets, 0.5),
                "append_p50": pct(appends, 0.5),
                "startup": startup,
                "file_s": file_s,
                "sqlite_p50": pct(lite, 0.5),
                "sqlite_p99": pct(lite, 0.99),
                "redis_p50": pct(reds, 0.5) if reds else None,
                "redis_p99": pct(reds, 0.99) if reds else None,
            }
            if pending == n:
                found.append(ph := phases(graph_path, tmp / f"scratch-{n}", 20 if n <= 10_000 else 5))
                for k, v in row.items():
                    out[k].append(v)
                out["phases"].append(ph.__dict__)
            else:
                out["history"] = {"tasks": n, "pending": pending, **row}
            t.row(
                f"{n:,}" + ("" if pending == n else f" ({pending:,} pending, the rest done)"),
                f"{size / 1e6:.1f} MB (written directly in {ms(file_s)})",
                f"{startup * 1e3:,.0f} ms",
                f"{pct(claims, 0.5) * 1e3:.2f} / {pct(claims, 0.99) * 1e3:.2f} ({len(claims)})",
                f"{stats['claim_ms_mean']:.2f} (mean)",
                f"{pct(health, 0.5) * 1e3:.2f} / {pct(health, 0.99) * 1e3:.2f}",
                f"{pct(appends, 0.5) * 1e3:.2f} / {pct(appends, 0.99) * 1e3:.2f}",
                f"{pct(gets, 0.5) * 1e3:.3f} / {pct(gets, 0.99) * 1e3:.3f}",
                f"{pct(lite, 0.5) * 1e3:.2f} / {pct(lite, 0.99) * 1e3:.2f}",
                f"{pct(reds, 0.5) * 1e3:.2f} / {pct(reds, 0.99) * 1e3:.2f}" if reds else "skipped",
            )
    finally:
        if redis:
            redis.stop()
    p = sec.table(
        "Where a claim's time goes: the writer thread's steps for a batch of one claim, as "
        "`TaskService._apply_and_write` takes them, timed in-process on the same graphs (medians), and the "
        "checkpoint that comes once the journal has outgrown the file",
        [
            "pending tasks",
            "`TaskGraph.copy`",
            "take + claim",
            "journal append + fdatasync",
            "a checkpoint (whole file)",
            "batches between checkpoints",
            "sum per batch, checkpoint shared out",
            "`tasks.claim` p50 through the daemon",
        ],
    )
    for n, ph, claim in zip(ns, found, out["claim_p50"], strict=True):
        p.row(
            f"{n:,} ({ph.rounds} batches)",
            *(ms(getattr(ph, k)) for k in Phases.STEPS),
            ms(ph.checkpoint),
            f"{ph.every:,}",
            ms(ph.per_batch),
            f"{ms(claim)} ({claim / ph.per_batch:.1f}x the sum)",
        )
    out["tasks"] = list(ns)
    return out


# --- the section --------------------------------------------------------------------------------


def run(cfg: Config) -> list[Section]:
    n, ns = sizes(cfg)
    sec = Section(
        "Task claims",
        "./dev bench --only claims" + (" --quick" if cfg.quick else ""),
        f"{AGENTS} agents, each on its own connection with one request in flight, loop `tasks.claim` -> "
        "`tasks.update {status: done, agent_id, outputs}` until a claim answers null; the same agents on a "
        "SQLite job table and a Redis queue, and the baseline: a plain loop that rewrites the whole graph file "
        "per change. Every task belongs to one conversation, so the daemon also audits every claim and done "
        "as an event in the log. Then one client's claim latency on a daemon whose graph was pre-filled with n "
        "pending tasks (the graph file written directly before the daemon starts: the fastest way to get 10^5 "
        "tasks, and the only one past `[tasks] max_pending`, 10,000 by default), while a second connection "
        "sends `sys.health` every millisecond; beside a durable `log.append` and a `tasks.get` on the same "
        "daemon and the same claim on SQLite and Redis. The last latency row is a graph of 10^4 tasks of which "
        "200 are pending and the rest done. Last, the writer thread's steps for one batch, timed one by one "
        "in-process on the same graphs.",
    )
    with tempfile.TemporaryDirectory(dir=cfg.tmp, prefix="sidecar-bench-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        first = throughput(sec, tmp / "throughput", stack, n)
        stack.close()  # the throughput run's servers stopped before the latency sweep
        second = latency(cfg, sec, tmp / "latency", ns)

    small, large = second["claim_p50"][0], second["claim_p50"][-1]
    growth = large / small
    sec.target(
        f"claim latency flat from {count(ns[0])} to {count(ns[-1])} pending tasks (p50 within 2x: "
        f"{small * 1e3:.2f} -> {large * 1e3:.2f} ms, {growth:.1f}x)",
        growth <= 2,
    )
    ph_small, ph_large = second["phases"][0], second["phases"][-1]
    sec.note(
        f"a batch appends only what it changed to the graph's journal (fdatasync'd): "
        f"{ms(ph_small['journal'])} at {count(ns[0])} tasks, {ms(ph_large['journal'])} at {count(ns[-1])}; the "
        f"whole file ({ph_large['size'] / 1e6:.0f} MB at {count(ns[-1])}) is written once the journal outgrows it, "
        f"every {ph_large['every']:,} batches of one claim there, at {ms(ph_large['checkpoint'])} each: the p99 of "
        f"the claims that meet one. The copy of the graph each batch works on shares its buckets, "
        f"{ms(ph_small['copy'])} -> {ms(ph_large['copy'])}"
    )
    sec.data = {"throughput": first, "latency": second}
    x = list(ns)
    lat = second
    sec.plots.append(
        figure(
            cfg.out / "claims.png",
            [
                Panel(
                    "Claim latency (p50), one client",
                    "pending tasks",
                    "ms",
                    [
                        Series("tasks.claim", x, [v * 1e3 for v in lat["claim_p50"]]),
                        Series("log.append (same daemon)", x, [v * 1e3 for v in lat["append_p50"]], "k--"),
                        Series("tasks.get (same daemon)", x, [v * 1e3 for v in lat["get_p50"]], "k:"),
                        Series("sys.health p99 during the claims", x, [v * 1e3 for v in lat["health_p99"]], "r--"),
                        Series("SQLite WAL FULL", x, [v * 1e3 for v in lat["sqlite_p50"]]),
                        *(
                            [Series("Redis AOF always", x, [v * 1e3 for v in lat["redis_p50"]])]
                            if all(v is not None for v in lat["redis_p50"])
                            else []
                        ),
                    ],
                    logx=True,
                    logy=True,
                ),
                Panel(
                    "The writer's steps per batch, in-process",
                    "pending tasks",
                    "ms",
                    [
                        Series(label, x, [ph[k] * 1e3 for ph in lat["phases"]])
                        for k, label in (
                            ("copy", "TaskGraph.copy"),
                            ("claim", "take + claim"),
                            ("journal", "journal append + fdatasync"),
                            ("checkpoint", "a checkpoint (whole file), when it comes"),
                        )
                    ],
                    logx=True,
                    logy=True,
                ),
            ],
        )
    )
    return [sec]


if __name__ == "__main__":
    import sys

    import run_all

    run_all.main(["--only", "claims", *sys.argv[1:]])
