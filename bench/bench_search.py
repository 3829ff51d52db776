"""Full-text search: latency against the log's size beside a naive scan, the index's size and
throughput, and what indexing costs the appends.

    python bench/bench_search.py [--quick]     # these sections alone (run_all.py --only search)

Issue ("Measure"): search p50 and p99 on 10^4, 10^5 and 10^6 events (p50 under 10 ms at
10^6); the index's size against the log's; indexing throughput; the append cost with
indexing on, against off (under 5%).

One log of agent traffic over ``CONVERSATIONS`` conversations (progress lines, tool calls
with a commit hash, tool output, chat messages, a few errors; words drawn with Zipf's law
from the vocabulary of section 10's generator, ``bench_compression.Text``, the same every
run) is grown with ``append_many`` (journal on, as in the daemon) to each size in turn. At
each size the in-process ``Indexer`` brings the index up to the log (what a daemon does at
start with a new or stale index; timed: the indexing throughput), the index is measured
against the log, and a fixed set of queries runs through ``SearchService.search`` (the
daemon's path minus the socket: the index's best matches, each read back from the log),
with and without a ``conversation_id``. The peer is a naive scan of the same log for the
same query: every event read, its text folded with ``words_of`` (as the index folds it) and
matched, the best 20 kept by how often the words occur; its match count must equal the
index's. At 10^5 a daemon started on the log answers the same queries over its socket. At
the largest size the queries are taken apart in SQL against the index file: where the time
goes.

The append cost: two daemons, one with ``[search] enabled = false`` (the baseline), take the
same durable-append workload over their sockets (``CLIENTS`` clients, one ``log.append`` in
flight each, events of the same traffic) in interleaved rounds; after each round, the
indexing daemon's wait for its indexer to drain is not timed, but its CPU is counted. The
peer: the plain loop at the start of every round.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_appends import plain_loop
from bench_compression import AGENTS, TOOLS, Text
from bench_daemon import Daemon, Spawned, call, clean_env, load, placed, regimes, request, round_trips
from plots import Panel, Series, figure
from report import Config, Section, count, ms, pct

from sidecar.log import EventStore
from sidecar.search.index import INDEX_DIR, INDEX_FILE, SearchIndex, body_of
from sidecar.search.indexer import Indexer, doc_of
from sidecar.search.query import to_fts, words_of
from sidecar.search.service import SearchService

SEED = 20261130
CONVERSATIONS = 20
RUN = 40  # consecutive events of one conversation, then the next
FILL_BATCH = 5000  # events per append_many
NEEDLE_AT = 5000  # the first tool call from this event on gives the needle: its commit hash
LIMIT = 20  # hits per search (log.search's default)
TARGET_MS = 10.0  # p50 at 10^6 (the issue's)
SOCKET_SIZE = 100_000  # the size at which a daemon answers over its socket
NAIVE_MAX_S = 10.0  # a naive scan expected to take longer is extrapolated, not run
CLIENTS = 8  # append workload: clients with one log.append in flight each
THRESHOLD = 5.0  # % (the issue's)
ON, OFF = "[search] enabled = true", "[search] enabled = false (baseline)"
ERRORS = [
    "connection refused",
    "timed out after 30 s",
    "permission denied",
    "no such file or directory",
    "disk quota exceeded",
]


def sizes(cfg: Config) -> tuple[int, ...]:
    return (10_000, 100_000) if cfg.quick else (10_000, 100_000, 1_000_000)


def rounds(cfg: Config) -> int:
    return 4 if cfg.quick else 10


def per_round(cfg: Config) -> int:
    """Appends per round and daemon, split between the clients."""
    return 1000 if cfg.quick else 4000


# --- the traffic ---------------------------------------------------------------------------------


def conversation(n: int) -> str:
    return f"conv-{(n // RUN) % CONVERSATIONS:02d}"


class Traffic:
    """Agent traffic over ``CONVERSATIONS`` conversations, ``RUN`` events at a time in each:
    progress (40%), tool calls (20%, each with a 40-digit commit hash), tool output (18%: code
    or prose, median about 250 characters), chat messages (21%) and errors (1%, one of
    ``ERRORS``). Deterministic for a seed."""

    def __init__(self, seed: int) -> None:
        self.text = Text(seed)
        self.n = 0
        self.needle: tuple[str, str] | None = None  # (commit hash, its conversation)

    def next(self) -> dict[str, Any]:
        t, r = self.text, self.text.rng
        self.n += 1
        n = self.n
        base: dict[str, Any] = {"conversation_id": conversation(n), "agent_id": AGENTS[(n // 7) % len(AGENTS)]}
        kind = r.random()
        if kind < 0.4:
            return {
                **base,
                "type": "agent.progress",
                "task_id": f"task-{r.randint(1, 60)}",
                "data": {"msg": f"step {n}: {t.sentence()}", "pct": r.randint(0, 100)},
            }
        if kind < 0.6:
            rev = f"{r.getrandbits(160):040x}"
            if n >= NEEDLE_AT and self.needle is None:
                self.needle = (rev, base["conversation_id"])
            return {
                **base,
                "type": "tool.call",
                "data": {
                    "tool": r.choice(TOOLS),
                    "args": {"path": t.path(), "pattern": " ".join(t.some(2)), "rev": rev},
                },
            }
        if kind < 0.78:
            out = t.code(t.size(250, 1.0, 3000)) if r.random() < 0.6 else t.prose(t.size(200, 0.8, 3000))
            return {
                **base,
                "type": "tool.output",
                "level": "detail",
                "data": {"exit_code": r.choice([0, 0, 0, 1]), "output": out},
            }
        if kind < 0.99:
            return {
                **base,
                "type": "chat.message",
                "data": {"role": r.choice(["user", "assistant"]), "text": t.prose(t.size(200, 0.9, 3000))},
            }
        return {
            **base,
            "type": "agent.error",
            "data": {"error": f"{r.choice(t.idents)}: {r.choice(ERRORS)} ({t.path()})"},
        }


def grow(data_dir: Path, traffic: Traffic, have: int, want: int) -> tuple[float, float]:
    """Append events ``have`` .. ``want`` in batches; (seconds generating, seconds appending)."""
    gen = put = 0.0
    with EventStore(data_dir) as store:
        for start in range(have, want, FILL_BATCH):
            t0 = time.perf_counter()
            batch = [traffic.next() for _ in range(min(FILL_BATCH, want - start))]
            t1 = time.perf_counter()
            store.append_many(batch)
            gen, put = gen + t1 - t0, put + time.perf_counter() - t1
    return gen, put


# --- the queries and the naive scan ---------------------------------------------------------------

Matcher = Callable[[list[str]], int]  # the words of an event -> how often the query's words occur (0: no match)


def word(w: str) -> Matcher:
    return lambda words: words.count(w)


def prefix(p: str) -> Matcher:
    return lambda words: sum(1 for x in words if x.startswith(p))


def phrase(first: str, *rest: str) -> Matcher:
    k = len(rest)
    tail = list(rest)
    return lambda words: sum(1 for i, x in enumerate(words) if x == first and words[i + 1 : i + 1 + k] == tail)


def every(*ms_: Matcher) -> Matcher:
    def match(words: list[str]) -> int:
        got = [m(words) for m in ms_]
        return sum(got) if all(got) else 0

    return match


def either(*ms_: Matcher) -> Matcher:
    return lambda words: sum(m(words) for m in ms_)


@dataclass(frozen=True)
class Query:
    label: str
    q: str  # as a user types it
    match: Matcher  # the same meaning, for the naive scan
    conversation_id: str | None = None

    @property
    def name(self) -> str:
        return f"{self.label}, one conversation" if self.conversation_id else self.label


def queries(traffic: Traffic) -> list[Query]:
    """The fixed set: each query without a filter, then with ``conversation_id`` (the needle's)."""
    if traffic.needle is None:
        raise RuntimeError(f"no tool call from event {NEEDLE_AT} on: the log is too small for the needle")
    rev, cid = traffic.needle
    w = traffic.text.words  # by rank: w[0] is the most frequent
    base = [
        Query(f"a common word (`{w[0]}`)", w[0], word(w[0])),
        Query(f"a rare word (`{w[-1]}`)", w[-1], word(w[-1])),
        Query("one event's commit hash (a needle)", rev, word(rev)),
        Query(f"two words (`{w[1]} {w[20]}`)", f"{w[1]} {w[20]}", every(word(w[1]), word(w[20]))),
        Query('a phrase (`"connection refused"`)', '"connection refused"', phrase("connection", "refused")),
        Query("OR (`timeout OR refused`)", "timeout OR refused", either(word("timeout"), word("refused"))),
        Query("a prefix (`comp*`)", "comp*", prefix("comp")),
    ]
    return base + [Query(q.label, q.q, q.match, cid) for q in base]


def text_of(event: Any) -> list[str]:
    """The words the index sees of an event: its type and the strings in its data, folded."""
    return words_of(event.type + "\n" + body_of(event.data))


def naive(store: EventStore, q: Query) -> tuple[int, list[tuple[int, str, int]]]:
    """Scan the log (one conversation's file, or all of them) for ``q``: how many events match,
    and the best ``LIMIT`` (score, conversation, seq) by how often the words occur."""
    cids = [q.conversation_id] if q.conversation_id else [c.conversation_id for c in store.conversations()]
    matched = 0
    best: list[tuple[int, str, int]] = []
    for cid in cids:
        for e in store.query(conversation_id=cid, limit=None).events:
            score = q.match(text_of(e))
            if score:
                matched += 1
                item = (score, cid, e.seq)
                if len(best) < LIMIT:
                    heapq.heappush(best, item)
                else:
                    heapq.heappushpop(best, item)
    return matched, sorted(best, reverse=True)


def matches(db: sqlite3.Connection, q: Query) -> int:
    """How many events the index matches for ``q`` (every one, not the best 20). CROSS JOIN
    keeps the FTS5 table first: left to itself, SQLite walks the conversation's rows of
    ``docs`` and evaluates the MATCH for each (16 s for ``comp*`` at 3 x 10^5 events)."""
    if q.conversation_id is None:
        row = db.execute("SELECT count(*) FROM fts WHERE fts MATCH ?", (to_fts(q.q),)).fetchone()
    else:
        row = db.execute(
            "SELECT count(*) FROM fts CROSS JOIN docs d ON d.rowid = fts.rowid "
            "WHERE fts MATCH ? AND d.conversation_id = ?",
            (to_fts(q.q), q.conversation_id),
        ).fetchone()
    return int(row[0])


def timed(fn: Callable[[], object], budget: float, most: int, least: int = 5) -> list[float]:
    """Latencies of ``fn`` (after one untimed call): at least ``least`` runs, then more while
    under ``budget`` seconds, at most ``most``."""
    fn()
    out: list[float] = []
    stop = time.perf_counter() + budget
    while len(out) < most and (len(out) < least or time.perf_counter() < stop):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


# --- sizes on disk --------------------------------------------------------------------------------


def tree_bytes(path: Path, skip: str = "") -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not (skip and skip in p.name))


def log_bytes(data_dir: Path) -> int:
    """logs/ and archive/ (not an index put aside there)."""
    return sum(tree_bytes(data_dir / d, skip=INDEX_FILE) for d in ("logs", "archive") if (data_dir / d).exists())


def index_parts(db: sqlite3.Connection) -> dict[str, int]:
    """Bytes of the index's tables: the text and where each event is (``docs``), its indexes,
    and FTS5's own (the inverted index); empty where SQLite has no ``dbstat``."""
    try:
        rows = db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
    except sqlite3.OperationalError:
        return {}
    parts = {"docs": 0, "docs' indexes": 0, "FTS5 index": 0, "other": 0}
    for name, size in rows:
        key = (
            "docs"
            if name == "docs"
            else "docs' indexes"
            if name.startswith("docs_")
            else "FTS5 index"
            if name.startswith("fts")
            else "other"
        )
        parts[key] += int(size)
    return parts


# --- one size -------------------------------------------------------------------------------------


@dataclass
class Step:
    """The figures at one size of the log."""

    size: int
    log_bytes: int = 0
    gen_s: float = 0.0
    append_s: float = 0.0
    indexed: int = 0
    index_s: float = 0.0
    added_bytes: int = 0  # log bytes this step's indexing covered
    read_s: float = 0.0  # reading the whole log back, decoded, no matching
    index_bytes: int = 0  # index file + WAL, as left
    wal_bytes: int = 0
    index_bytes_after: int = 0  # after a checkpoint (TRUNCATE)
    parts: dict[str, int] = field(default_factory=dict)
    checkpoint: str = ""
    latencies: dict[str, list[float]] = field(default_factory=dict)
    matches: dict[str, int] = field(default_factory=dict)
    naive: dict[str, float] = field(default_factory=dict)
    extrapolated: set[str] = field(default_factory=set)
    anatomy: dict[str, dict[str, float]] = field(default_factory=dict)
    rtt: dict[str, float] = field(default_factory=dict)
    daemon_start: float = 0.0


def read_all(store: EventStore) -> int:
    n = 0
    for c in store.conversations():
        n += len(store.query(conversation_id=c.conversation_id, limit=None).events)
    return n


def check_hits(store: EventStore, q: Query, hits: list[Any], want: int) -> None:
    """The service's answer: as many hits as there are matches (up to the limit), each one an
    event of the right conversation that the naive matcher also matches."""
    if len(hits) != want:
        raise RuntimeError(f"{q.name}: {len(hits)} hits, expected {want}")
    for h in hits:
        e = h.event
        if (q.conversation_id and e.conversation_id != q.conversation_id) or not q.match(text_of(e)):
            raise RuntimeError(f"{q.name}: hit {e.id} ({e.conversation_id}) does not match {q.q!r}")


def measure(cfg: Config, data: Path, step: Step, qs: list[Query], prev: Step | None, largest: bool) -> None:
    with EventStore(data) as store:
        store.load()
        index = SearchIndex(str(data))
        indexer = Indexer(store, index)
        t0 = time.perf_counter()
        indexer.start()  # opens the index and catches up with the logs, in its thread
        indexer.caught_up.wait()
        step.index_s = time.perf_counter() - t0
        step.indexed = indexer.stats.indexed
        try:
            in_log = sum(c.event_count for c in store.conversations())
            have, _ = index.stats()
            if have != in_log or in_log != step.size:
                raise RuntimeError(f"the index holds {have:,} events, the log {in_log:,}; expected {step.size:,}")
            service = SearchService(store, index, indexer)
            path = Path(index.path)
            step.index_bytes = sum(os.stat(p).st_size for p in (path, Path(f"{path}-wal")) if p.exists())
            step.wal_bytes = Path(f"{path}-wal").stat().st_size if Path(f"{path}-wal").exists() else 0
            with contextlib.closing(sqlite3.connect(path)) as db:
                busy, frames, done = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                step.checkpoint = f"busy={busy}, {done}/{frames} frames"
                step.index_bytes_after = tree_bytes(data / INDEX_DIR)
                step.parts = index_parts(db)
                for q in qs:
                    step.matches[q.name] = matches(db, q)
            t0 = time.perf_counter()
            if read_all(store) != step.size:
                raise RuntimeError("reading the log back gave another count")
            step.read_s = time.perf_counter() - t0
            print(
                f"{count(step.size)}: indexed {step.indexed:,} in {step.index_s:.1f} s; "
                f"index {step.index_bytes_after / 1e6:.1f} MB, log {step.log_bytes / 1e6:.1f} MB",
                flush=True,
            )

            budget, most = (0.3, 50) if cfg.quick else (1.0, 200)
            for q in qs:
                result = service.search(q.q, limit=LIMIT, conversation_id=q.conversation_id)
                check_hits(store, q, result.hits, min(LIMIT, step.matches[q.name]))
                step.latencies[q.name] = timed(
                    lambda q=q: service.search(q.q, limit=LIMIT, conversation_id=q.conversation_id), budget, most
                )
            t1 = time.perf_counter()
            naive_runs(cfg, store, step, qs, prev)
            t2 = time.perf_counter()
            if largest:
                step.anatomy = anatomy(index, path, qs)
            print(
                f"{count(step.size)}: queries {t1 - t0 - step.read_s:.0f} s, naive scans {t2 - t1:.0f} s, "
                f"anatomy {time.perf_counter() - t2:.0f} s",
                flush=True,
            )
        finally:
            indexer.stop()


def naive_runs(cfg: Config, store: EventStore, step: Step, qs: list[Query], prev: Step | None) -> None:
    """The naive scan for each query, once (it takes seconds), where it fits: its time
    expected from the last size under ``NAIVE_MAX_S``, and all of them at one size under 3x
    that (in ``--quick``, at 10^5 only the first query's two forms); the others extrapolated
    from the last size, by the log's size."""
    spent = 0.0
    for q in qs:
        last = prev.naive.get(q.name) if prev else None
        expected = last * step.size / prev.size if prev and last is not None else 0.0
        wanted = not cfg.quick or step.size <= 10_000 or q.label == qs[0].label
        if wanted and expected < NAIVE_MAX_S and spent + expected < 3 * NAIVE_MAX_S:
            t0 = time.perf_counter()
            found, best = naive(store, q)
            took = time.perf_counter() - t0
            spent += took
            step.naive[q.name] = took
            if found != step.matches[q.name]:
                raise RuntimeError(
                    f"{q.name}: the naive scan matched {found:,} events, the index {step.matches[q.name]:,}"
                )
            if len(best) != min(LIMIT, found):
                raise RuntimeError(f"{q.name}: the naive scan kept {len(best)} of {found}")
        elif prev is not None and last is not None:
            step.naive[q.name] = expected
            step.extrapolated.add(q.name)


def anatomy(index: SearchIndex, path: Path, qs: list[Query]) -> dict[str, dict[str, float]]:
    """Where a query's time goes (median of 3, ms): enumerating the matches (``count(*)``),
    the newest 30 of them (no ranking), ranking them in FTS5 alone (bm25, the best 30), and
    the index's own query (bm25 and the join to ``docs`` for every match, then snippets for
    the best)."""
    out: dict[str, dict[str, float]] = {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:

        def med(sql: str, args: tuple[Any, ...]) -> float:
            return statistics.median(timed(lambda: db.execute(sql, args).fetchall(), 0.0, 3, 3)) * 1e3

        for q in qs:
            if q.conversation_id:
                continue
            expr = to_fts(q.q)
            out[q.name] = {
                "count": med("SELECT count(*) FROM fts WHERE fts MATCH ?", (expr,)),
                "newest": med("SELECT rowid FROM fts WHERE fts MATCH ? ORDER BY rowid DESC LIMIT 30", (expr,)),
                "rank alone": med(
                    "SELECT rowid, bm25(fts, 2.0, 1.0) AS r FROM fts WHERE fts MATCH ? ORDER BY r LIMIT 30", (expr,)
                ),
                "index.search": statistics.median(timed(lambda e=expr: index.search(e, limit=LIMIT + 10), 0.0, 3, 3))
                * 1e3,
            }
    return out


def through_socket(cfg: Config, data: Path, run_dir: Path, step: Step, qs: list[Query]) -> None:
    """A daemon on the log (its index already caught up): median round trips of ``log.search``
    for the unfiltered queries (``calls`` each, fewer for a slow one: about a second's worth),
    beside ``sys.health``; the client on another core."""
    calls = 20 if cfg.quick else 50
    client, server = regimes().get("another core", (0, 0))
    with Daemon(data, run_dir) as d:
        step.daemon_start = d.startup_s
        deadline = time.monotonic() + 60
        while True:  # its indexer checks the index against the logs at start: wait for that
            got = call(d.socket, "log.search", {"q": qs[0].q, "limit": LIMIT})
            assert isinstance(got, dict)
            if not got.get("indexing"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the daemon's index was still catching up after 60 s")
            time.sleep(0.05)
        with placed(client, server, d.proc.pid):
            step.rtt["sys.health"] = round_trips(d.socket, lambda i: request(i, "sys.health", {}), 200)
            for q in qs:
                if q.conversation_id:
                    continue
                params = {"q": q.q, "limit": LIMIT}
                got = call(d.socket, "log.search", params)
                assert isinstance(got, dict)
                if len(got["hits"]) != min(LIMIT, step.matches[q.name]):
                    raise RuntimeError(f"log.search {q.q!r}: {len(got['hits'])} hits")
                n = max(5, min(calls, int(1.0 / pct(step.latencies[q.name], 0.5))))
                step.rtt[q.name] = round_trips(d.socket, lambda i, p=params: request(i, "log.search", p), n)


# --- the append cost ------------------------------------------------------------------------------

TXN_SIZES = (1, 8, 64, 512)  # events per SearchIndex.add
TXN_EVENTS = 4096


def transaction_cost(data: Path, scratch: Path) -> dict[int, tuple[float, float]]:
    """The indexer's work alone, in-process: ``SearchIndex.add`` of the same ``TXN_EVENTS``
    events (the log's first ones) into a fresh index, ``k`` per transaction, as the indexer
    does with each batch it takes; k -> (wall, CPU) seconds per event."""
    with EventStore(data) as store:
        events = [
            e for c in store.conversations() for e in store.query(conversation_id=c.conversation_id, limit=None).events
        ]
    docs = [doc_of(e) for e in sorted(events, key=lambda e: e.timestamp)[:TXN_EVENTS]]
    out = {}
    for k in TXN_SIZES:
        index = SearchIndex(str(scratch / f"k{k}"))
        index.open()
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(0, len(docs), k):
                batch = docs[i : i + k]
                index.add(batch, {d.conversation_id: d.seq for d in batch})
            out[k] = ((time.perf_counter() - t0) / len(docs), (time.process_time() - c0) / len(docs))
        finally:
            index.close()
    return out


class ConfiguredDaemon(Daemon):
    """``sidecar serve`` with a config file."""

    def __init__(self, data_dir: Path, run_dir: Path, config: Path) -> None:
        self.socket = str(run_dir / "s.sock")
        argv = [sys.executable, "-m", "sidecar", "serve", "--data-dir", str(data_dir), "--socket", self.socket]
        argv += ["--config", str(config)]
        Spawned.__init__(self, argv, run_dir, clean_env())


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (ended ones too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Runs:
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # daemon CPU seconds per event, per round
    lags: list[float] = field(default_factory=list)  # last ack to the indexer drained, per round
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def stat(d: Daemon, key: str) -> Any:
    stats = call(d.socket, "sys.stats", {})
    assert isinstance(stats, dict)
    return stats[key]


def drain(d: Daemon, want: int, on: bool) -> float:
    """Seconds until the daemon's indexer has taken in ``want`` events and its queue is empty
    (with search off: that it took in none)."""
    t0 = time.perf_counter()
    while True:
        stats = call(d.socket, "sys.stats", {})
        assert isinstance(stats, dict)
        if not on:
            if stats["search_indexed"]:
                raise RuntimeError(f"search is off, yet the daemon indexed {stats['search_indexed']} events")
            return 0.0
        if stats["search_queue"] == 0 and stats["search_indexed"] >= want:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > 120:
            raise TimeoutError(f"the indexer took in {stats['search_indexed']:,} of {want:,} events in 120 s")
        time.sleep(0.002)


def append_cost(cfg: Config, tmp: Path, sec: Section, txn: dict[int, tuple[float, float]]) -> None:
    n_rounds, events = rounds(cfg), per_round(cfg)
    per_client = events // CLIENTS
    events = per_client * CLIENTS
    traffic = Traffic(SEED + 1)
    pool = [json.dumps(traffic.next(), separators=(",", ":")).encode() for _ in range(2000)]
    line_bytes = statistics.mean(map(len, pool))

    def make(_: int, i: int) -> bytes:
        return b'{"jsonrpc":"2.0","id":%d,"method":"log.append","params":%s}\n' % (i, pool[i % len(pool)])

    sec.intro = (
        f"Two daemons, one with `{OFF.split(' (')[0]}` (the baseline), take the same workload over their sockets "
        f"in {n_rounds} interleaved rounds (on, off, then off, on, ...) of {events:,} events each: {CLIENTS} "
        f"clients, one `log.append` in flight each (durable before it is acknowledged), events of the same "
        f"traffic as above ({line_bytes:.0f} bytes of JSON on average). After each round the indexing daemon's "
        "wait for its indexer to drain (`sys.stats`: `search_queue` 0) is not timed, but its CPU is counted: "
        "CPU per event is the daemon's (all threads, from /proc) over the round and the drain. The overhead is, "
        "per round, the baseline's rate over the indexing daemon's, minus 1; then the median of the rounds. The "
        f"peer: the plain loop (open + flock + write + fsync + close per event) on {CLIENTS} threads at the start "
        "of every round."
    )
    confs = {ON: tmp / "on.toml", OFF: tmp / "off.toml"}
    confs[ON].write_text("[search]\nenabled = true\n")
    confs[OFF].write_text("[search]\nenabled = false\n")
    plain = tmp / "plain.jsonl"
    with (
        ConfiguredDaemon(tmp / "d-on", tmp / "run-on", confs[ON]) as d_on,
        ConfiguredDaemon(tmp / "d-off", tmp / "run-off", confs[OFF]) as d_off,
    ):
        daemons = {ON: d_on, OFF: d_off}
        try:
            call(d_off.socket, "log.search", {"q": "step"})
        except RuntimeError as e:
            if "-32003" not in str(e):
                raise
        else:
            raise RuntimeError("search is off, yet log.search answered")
        sent = {ON: 0, OFF: 0}
        for name, d in daemons.items():  # warm up: files created, code paths hot
            load(d.socket, CLIENTS, 1, 20, make)
            sent[name] += CLIENTS * 20
            drain(d, sent[name], name == ON)
        plain_loop(plain, CLIENTS, 20)

        peer = Runs()
        runs = {ON: Runs(), OFF: Runs()}
        for r in range(n_rounds):
            s = plain_loop(plain, CLIENTS, per_client)
            peer.rates.append(events / s.seconds)
            peer.latencies += s.latencies
            for name in (ON, OFF) if r % 2 == 0 else (OFF, ON):
                d, g = daemons[name], runs[name]
                cpu0 = cpu_seconds(d.proc.pid)
                took, lat = load(d.socket, CLIENTS, 1, per_client, make)
                sent[name] += events
                g.lags.append(drain(d, sent[name], name == ON))
                g.cpu.append((cpu_seconds(d.proc.pid) - cpu0) / events)
                g.rates.append(events / took)
                g.latencies += lat
            print(
                f"round {r + 1}: plain {peer.rates[-1]:,.0f}/s, on {runs[ON].rates[-1]:,.0f}/s, "
                f"off {runs[OFF].rates[-1]:,.0f}/s",
                flush=True,
            )
        rss = {name: d.rss_mb() for name, d in daemons.items()}
        batch = {name: stat(d, "mean_batch") for name, d in daemons.items()}
        index_file = tmp / "d-on" / INDEX_DIR / INDEX_FILE
        index_mb = index_file.stat().st_size / 1e6
        wal = Path(f"{index_file}-wal")
        wal_mb = wal.stat().st_size / 1e6 if wal.exists() else 0.0
        on_log_mb = log_bytes(tmp / "d-on") / 1e6

    t = sec.table(
        f"{CLIENTS} clients, one durable `log.append` in flight each ({n_rounds} rounds of {events:,} events; "
        "appends/s the median of the rounds)",
        ["what", "appends/s", "vs plain loop", "p50 / p99 ms", "daemon CPU per event", "index drained after"],
    )
    base = peer.rate

    def lat(v: list[float]) -> str:
        return f"{pct(v, 0.5) * 1e3:.2f} / {pct(v, 0.99) * 1e3:.2f}"

    t.row(f"plain loop, {CLIENTS} threads (peer)", f"{base:,.0f}", "1.00x", lat(peer.latencies), "-", "-")
    for name in (OFF, ON):
        g = runs[name]
        t.row(
            f"sidecar, `{name.split(' (')[0]}`" + (" (baseline)" if name == OFF else ""),
            f"{g.rate:,.0f}",
            f"{g.rate / base:.2f}x",
            lat(g.latencies),
            f"{statistics.median(g.cpu) * 1e6:.0f} us",
            f"{ms(statistics.median(g.lags))} (max {ms(max(g.lags))})" if name == ON else "-",
        )
    over = [(off / on - 1) * 100 for on, off in zip(runs[ON].rates, runs[OFF].rates)]
    cpu_over = (statistics.median(runs[ON].cpu) / statistics.median(runs[OFF].cpu) - 1) * 100
    p50 = (pct(runs[ON].latencies, 0.5) / pct(runs[OFF].latencies, 0.5) - 1) * 100
    t2 = sec.table(
        "Indexing's overhead: how much longer an append takes with it",
        ["median of the rounds", "rounds (min .. max)", "daemon CPU per event", "p50 latency", "target"],
    )
    t2.row(
        f"{statistics.median(over):+.1f}%",
        f"{min(over):+.1f}% .. {max(over):+.1f}%",
        f"{cpu_over:+.1f}% ({(statistics.median(runs[ON].cpu) - statistics.median(runs[OFF].cpu)) * 1e6:+.0f} us)",
        f"{p50:+.1f}%",
        f"< {THRESHOLD:.0f}%",
    )
    sec.target(
        f"appends with indexing on take < {THRESHOLD:.0f}% longer than with it off (median of {n_rounds} paired "
        f"rounds: {statistics.median(over):+.1f}%)",
        statistics.median(over) < THRESHOLD,
    )
    t3 = sec.table(
        f"The indexer's work alone, in-process: `SearchIndex.add` of the same {TXN_EVENTS:,} events into a fresh "
        "index, k per transaction (the indexer takes what was committed in 50 ms as one)",
        ["events per transaction", "wall per event", "CPU per event", "x at 512"],
    )
    for k, (wall, cpu) in txn.items():
        t3.row(k, f"{wall * 1e6:.1f} us", f"{cpu * 1e6:.1f} us", f"{cpu / txn[TXN_SIZES[-1]][1]:.1f}x")
    sec.note(
        f"the daemons' commit batches held {batch[ON]:.1f} (search on) and {batch[OFF]:.1f} (off) events on "
        "average; the indexer's process is told of them every 20 ms and indexes what was committed meanwhile "
        "in one transaction"
    )
    sec.note(
        f"after the rounds: the indexing daemon's index file {index_mb:.1f} MB and its WAL {wal_mb:.1f} MB, for "
        f"{on_log_mb:.1f} MB of log; RSS {rss[ON]:.0f} MB with search on, {rss[OFF]:.0f} MB off."
    )
    sec.data = {
        "rounds": n_rounds,
        "events_per_round": events,
        "plain_loop_rate": peer.rates,
        **{name: {"rates": g.rates, "cpu_per_event": g.cpu, "drain_s": g.lags} for name, g in runs.items()},
        "mean_commit_batch": batch,
        "add_per_event_s": {k: {"wall": w, "cpu": c} for k, (w, c) in txn.items()},
        "overhead_pct": statistics.median(over),
        "cpu_overhead_pct": cpu_over,
    }


# --- the run ----------------------------------------------------------------------------------------


def run(cfg: Config) -> list[Section]:
    flag = " --quick" if cfg.quick else ""
    all_sizes = sizes(cfg)
    s = Section(
        "Search against log size",
        "./dev bench --only search" + flag,
        f"One log of agent traffic over {CONVERSATIONS} conversations ({RUN} events of one, then the next), grown "
        f"with `append_many` ({FILL_BATCH:,} a batch, journal on) to each size in turn; at each size the in-process "
        "`Indexer` catches the index up with the log (as a daemon does at start), then every query runs through "
        f"`SearchService.search` (limit {LIMIT}: the index's best matches, each read back from the log) without "
        "and with a `conversation_id`, repeatedly (p50 and p99 of the runs; with under 100 runs p99 is the "
        "slowest). The peer: a naive scan of the same log for the same query, once (every event read, folded "
        f"with `words_of` and matched, the best {LIMIT} kept by how often the words occur); its match count is "
        "checked against the index's, and every hit of the service against the naive matcher. A scan expected "
        f"to take over {NAIVE_MAX_S:.0f} s is extrapolated from the last size, not run.",
    )
    a = Section("The cost of search indexing on appends", "./dev bench --only search" + flag)
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(dir=cfg.tmp, prefix="sidecar-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        traffic = Traffic(SEED)
        qs: list[Query] = []
        txn: dict[int, tuple[float, float]] = {}
        have = 0
        for size in all_sizes:
            step = Step(size)
            before = log_bytes(data) if data.exists() else 0
            step.gen_s, step.append_s = grow(data, traffic, have, size)
            step.log_bytes = log_bytes(data)
            step.added_bytes = step.log_bytes - before
            print(
                f"log grown to {size:,} events ({step.log_bytes / 1e6:.1f} MB): generated in {step.gen_s:.0f} s, "
                f"appended in {step.append_s:.0f} s",
                flush=True,
            )
            qs = qs or queries(traffic)
            measure(cfg, data, step, qs, steps[-1] if steps else None, size == all_sizes[-1])
            if size == SOCKET_SIZE:
                through_socket(cfg, data, tmp / "run", step, qs)
            if not steps:
                txn = transaction_cost(data, tmp / "scratch")
            steps.append(step)
            have = size
        append_cost(cfg, tmp, a, txn)

    report(s, steps, qs, cfg.out)
    return [s, a]


def naive_ms(st: Step, name: str) -> float:
    """The naive scan's time in ms, where it was run (not extrapolated)."""
    return float("nan") if name not in st.naive or name in st.extrapolated else st.naive[name] * 1e3


def report(s: Section, steps: list[Step], qs: list[Query], out: Path) -> None:
    heads = [count(st.size) for st in steps]
    last = steps[-1]
    t = s.table(
        "The log and the index at each size (the index after a checkpoint; before it, with its WAL, in brackets)",
        ["events", "log (logs/ + archive/)", "bytes per event", "index", "index / log", "of which: text copy "
         "(`docs`) / its indexes / FTS5 index"],
    )  # fmt: skip
    for st in steps:
        parts = " / ".join(f"{v / 1e6:.1f} MB" for k, v in st.parts.items() if k != "other") if st.parts else "-"
        t.row(
            count(st.size),
            f"{st.log_bytes / 1e6:.1f} MB",
            f"{st.log_bytes / st.size:.0f}",
            f"{st.index_bytes_after / 1e6:.1f} MB ({st.index_bytes / 1e6:.1f} MB, WAL {st.wal_bytes / 1e6:.1f} MB)",
            f"{st.index_bytes_after / st.log_bytes:.2f}x",
            parts,
        )
    t = s.table(
        "Building the log and the index (each step adds the events since the last size)",
        ["step", "events added", "appended (`append_many`)", "indexed (catch-up from the log)", "MB/s of log indexed",
         "baseline: reading the whole log back, decoded"],
    )  # fmt: skip
    prev = 0
    for st in steps:
        added = st.size - prev
        t.row(
            f"{count(prev) if prev else 0} -> {count(st.size)}",
            f"{added:,}",
            f"{added / st.append_s:,.0f} events/s",
            f"{st.indexed / st.index_s:,.0f} events/s ({st.index_s:.1f} s)",
            f"{st.added_bytes / 1e6 / st.index_s:.1f}",
            f"{st.size / st.read_s:,.0f} events/s ({st.read_s:.1f} s for {count(st.size)})",
        )
        prev = st.size

    def cell(st: Step, name: str) -> str:
        v = st.latencies[name]
        return f"{ms(pct(v, 0.5))} / {ms(pct(v, 0.99))}"

    t = s.table(
        f"`SearchService.search`, limit {LIMIT}: p50 / p99 (matching events in the whole log at the largest size)",
        ["query", *heads, f"matches at {heads[-1]}", f"{heads[-1]} / {heads[0]} (p50)",
         f"target (p50 < {TARGET_MS:.0f} ms at 10^6)"],
    )  # fmt: skip
    big = last.size >= 1_000_000
    missed: list[str] = []
    for q in qs:
        p50 = pct(last.latencies[q.name], 0.5)
        ok = p50 * 1e3 < TARGET_MS
        if big and not ok:
            missed.append(f"{q.name} ({ms(p50)}, {last.matches[q.name]:,} matches)")
        t.row(
            q.name,
            *(cell(st, q.name) for st in steps),
            f"{last.matches[q.name]:,}",
            f"{p50 / pct(steps[0].latencies[q.name], 0.5):.1f}x",
            ("met" if ok else "NOT met") if big else "",
        )
    pooled = [x for st in [last] for v in st.latencies.values() for x in v]
    t = s.table(
        "The naive scan of the same log for the same query, one run (x the service's p50)",
        ["query", *heads],
    )
    for q in qs:
        cells = []
        for st in steps:
            if q.name not in st.naive:
                cells.append("-")
                continue
            v = st.naive[q.name]
            mark = "~" if q.name in st.extrapolated else ""
            cells.append(f"{mark}{ms(v)} ({v / pct(st.latencies[q.name], 0.5):,.0f}x)")
        t.row(q.name, *cells)
    if any(st.extrapolated for st in steps):
        s.note(
            "~: extrapolated from the last size by the log's size (the scan's cost is reading and folding every "
            "event), not run: " + "; ".join(f"{count(st.size)}: {len(st.extrapolated)} of {len(qs)}" for st in steps
                                            if st.extrapolated)
        )  # fmt: skip
    sock = next((st for st in steps if st.rtt), None)
    if sock is not None:
        t = s.table(
            f"Through a daemon's socket at {count(sock.size)}: `log.search` median round trip (the client on "
            "another core), beside the same query in-process and `sys.health`",
            ["query", "`log.search`", "in-process p50", "round trip - in-process", "x `sys.health`"],
        )
        h = sock.rtt["sys.health"]
        t.row("baseline: `sys.health`", ms(h), "-", "-", "1.0x")
        for q in qs:
            if q.name in sock.rtt:
                v, inp = sock.rtt[q.name], pct(sock.latencies[q.name], 0.5)
                t.row(q.name, ms(v), ms(inp), ms(v - inp), f"{v / h:.0f}x")
        s.note(f"the daemon on the {count(sock.size)} log (its index caught up) started in {ms(sock.daemon_start)}")
    if last.anatomy:
        t = s.table(
            f"Where the time goes at {count(last.size)}: SQL on the index file, median of 3",
            ["query", "matches", "`SearchService.search` p50", "`SearchIndex.search` (rank + join + snippet)",
             "FTS5 rank alone (bm25, the best 30)", "enumerate the matches (`count(*)`)",
             "the newest 30 matches (no ranking)"],
        )  # fmt: skip
        for name, a in last.anatomy.items():
            t.row(
                name,
                f"{last.matches[name]:,}",
                ms(pct(last.latencies[name], 0.5)),
                f"{a['index.search']:.2f} ms",
                f"{a['rank alone']:.2f} ms",
                f"{a['count']:.2f} ms",
                f"{a['newest']:.2f} ms",
            )
        per_match = [
            (pct(last.latencies[n], 0.5) * 1e6 / last.matches[n]) for n in last.anatomy if last.matches[n] >= 10_000
        ]
        if per_match:
            s.note(
                f"for the queries with 10,000 matches or more, the service spends {min(per_match):.1f} to "
                f"{max(per_match):.1f} us per matching event: at most the newest 1,000 matches are scored, but "
                "FTS5's bm25 walks each term's whole doclist once for its document frequency"
            )
    if big:
        under = sum(pct(v, 0.5) * 1e3 < TARGET_MS for v in last.latencies.values())
        s.target(
            f"search p50 under {TARGET_MS:.0f} ms at {count(last.size)}, every query ({under} of {len(qs)} under; "
            f"over all the runs pooled, p50 {ms(pct(pooled, 0.5))})",
            not missed,
        )
        if missed:
            s.note("missed by: " + "; ".join(missed))
    else:
        s.note(f"no 10^6 log in this run (`--quick`): the target (p50 < {TARGET_MS:.0f} ms at 10^6) is not judged")
    s.note(
        f"the traffic: {last.log_bytes / last.size:.0f} bytes of log per event; the needle's conversation is the "
        "filtered one; the index holds each event's type and the strings in its data (`body_of`)"
    )
    s.data = {
        "sizes": [st.size for st in steps],
        "log_bytes": [st.log_bytes for st in steps],
        "index_bytes": [st.index_bytes_after for st in steps],
        "index_bytes_before_checkpoint": [st.index_bytes for st in steps],
        "index_parts": [st.parts for st in steps],
        "checkpoint": [st.checkpoint for st in steps],
        "indexed_per_s": [st.indexed / st.index_s for st in steps],
        "appended_per_s": [(st.size - (steps[i - 1].size if i else 0)) / st.append_s for i, st in enumerate(steps)],
        "p50": {q.name: [pct(st.latencies[q.name], 0.5) for st in steps] for q in qs},
        "p99": {q.name: [pct(st.latencies[q.name], 0.99) for st in steps] for q in qs},
        "matches": {q.name: [st.matches[q.name] for st in steps] for q in qs},
        "naive_s": {q.name: [st.naive.get(q.name) for st in steps] for q in qs},
        "naive_extrapolated": {count(st.size): sorted(st.extrapolated) for st in steps},
        "socket": {count(st.size): st.rtt for st in steps if st.rtt},
        "anatomy_ms": last.anatomy,
    }
    x = [st.size for st in steps]
    s.plots.append(
        figure(
            out / "search.png",
            [
                Panel(
                    f"SearchService.search p50{', one conversation' if filtered else ''}",
                    "events in the log",
                    "ms",
                    [
                        *(
                            Series(q.label.split(" (")[0], x, [pct(st.latencies[q.name], 0.5) * 1e3 for st in steps])
                            for q in qs
                            if bool(q.conversation_id) == filtered
                        ),
                        Series(
                            "naive scan, a common word (measured only)",
                            x,
                            [naive_ms(st, qs[len(qs) // 2 if filtered else 0].name) for st in steps],
                            "kx--",
                        ),
                        Series("target at 10^6", x, [TARGET_MS] * len(x), "r:"),
                    ],
                    logx=True,
                    logy=True,
                )
                for filtered in (False, True)
            ],
        )
    )


if __name__ == "__main__":
    import run_all

    run_all.main(["--only", "search", *sys.argv[1:]])
