"""Compressed sealed segments: the ratio, the cost of compressing, and reads beside the same data plain.

    python bench/bench_compression.py [--quick]     # this section alone (run_all.py --only compression)

Issue: "the compression ratio and read speed on compressed segments". One conversation of
agent traffic (progress lines, tool calls, tool output, chat messages; JSON with text of
varied sizes, pseudo-random but the same every run) is appended with ``rotate_bytes`` small,
so that it is sealed into many segments, and stopped right after a rotation (the active
segment is then empty: every read below reads sealed segments). The data directory is
copied, and the copy's segments compressed by the archive keeper (``ArchiveKeeper`` with
``RetentionPolicy(compress=True)``: zstd level 3, seekable, 256 KiB frames), timed; a third
copy the same way with ``SMALL_FRAMES`` frames (``compress_segment(frame_bytes=...)``), to
show what the frame size trades. Then the same reads on every copy, each through a fresh
``EventStore``, interleaved copy by copy: open + index, a whole scan, a scan in pages,
random ``get``s, ``tail`` and a query by time range in the middle; every answer from a
compressed copy is checked against the plain one.

The peers, in the same run, on the same bytes: stdlib ``gzip`` at its default level (9)
and at 6, and zstd level 3 with one frame per segment (what the seek table costs), each
segment compressed on its own; and SQLite (stdlib ``sqlite3``) holding the same event lines,
read by rowid (= seq) and by id (indexed) for the random lookups.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import os
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import zstandard
from report import Config, Section, ms, pct

from sidecar.log import Event, EventStore
from sidecar.log.compressed import COMPRESSED_SUFFIX, FRAME_BYTES, CompressedSegment, compress_segment
from sidecar.log.keeper import ArchiveKeeper, RetentionPolicy
from sidecar.log.segments import SUFFIX

CID = "conversation-1"
SEED = 20261129
FILL_BATCH = 200  # events per append_many
LOOKUPS = 2000  # random get()s per copy (and per SQLite way)
TAILS = 500
RANGE_EVENTS = 1000  # the query by time range covers about this many events
PAGE = 1000  # events per page of the paged scan
SMALL_FRAMES = 64 * 1024  # the other frame size measured, beside the keeper's
PLAIN, KEEPER, SMALL = "plain", "compressed", "compressed, small frames"
MIN_RATIO = 3.0
MAX_GET_SLOWDOWN = 10.0
MiB = 1 << 20
T = TypeVar("T")


def sizes(cfg: Config) -> tuple[int, int]:
    """(rotate_bytes, segments to seal)."""
    return (2 * MiB, 6) if cfg.quick else (4 * MiB, 16)


# --- the traffic: deterministic pseudo-random text ------------------------------------------------

_PROSE = """the of and to a in is it you that was for on are with as his they be at one have this from or
had by word but what some we can out other were all there when up use your how said an each she which do
their time if will way about many then them write would like so these her long make thing see him two has
look more day could go come did number sound no most people my over know water than call first who may down
side been now find any new work part take get place made live where after back little only round man year
came show every good me give our under name very through just form sentence great think say help low line
differ turn cause much mean before move right boy old too same tell does set three want air well also play
small end put home read hand port large spell add even land here must big high such follow act why ask men
change went light kind off need house picture try us again animal point mother world near build self earth
father head stand own page should country found answer school grow study still learn plant cover food sun
four between state keep eye never last let thought city tree cross farm hard start might story saw far sea
draw left late run while press close night real life few north open seem together next white children begin
got walk example ease paper group always music those both mark often letter until mile river car feet care
second book carry took science eat room friend began idea fish mountain stop once base hear horse cut sure
watch color face wood main enough plain girl usual young ready above ever red list though feel talk bird
soon body dog family direct pose leave song measure door product black short numeral class wind question
happen complete ship area half rock order fire south problem piece told knew pass since top whole king space
heard best hour better true during hundred five remember step early hold west ground interest reach fast verb
sing listen six table travel less morning ten simple several vowel toward war lay against pattern slow center
love person money serve appear road map rain rule govern pull cold notice voice unit power town fine certain
fly fall lead cry dark machine note wait plan figure star box noun field rest correct able pound done beauty
drive stood contain front teach week final gave green oh quick develop ocean warm free minute strong special
mind behind clear tail produce fact street inch multiply nothing course stay wheel full force blue object
decide surface deep moon island foot system busy test record boat common gold possible plane stead dry wonder
laugh thousand ago ran check game shape equate miss brought heat snow tire bring yes distant fill east paint
language among"""
PROSE = _PROSE.split()
_TECH = """file test error build module function class import return value config request response server
client parse token cache index query commit branch merge deploy schema field type string integer list dict
async await lock thread process socket buffer stream event handler callback timeout retry queue worker task
graph node edge path segment offset frame header payload encode decode serialize validate assert raise catch
exception traceback warning debug info log metric latency throughput batch flush sync journal snapshot
replay checkpoint rotate compress archive retention cursor page limit filter sort order group consumer
producer subscribe publish notify agent tool prompt context summary model completion embedding vector clock
version migration database table column row transaction rollback connection pool session user account
permission token secret certificate proxy route endpoint status health ready alive refactor rename extract
inline helper utility wrapper adapter factory builder parser lexer compiler runtime interpreter"""
TECH = _TECH.split()
DIRS = ["src", "tests", "lib", "docs", "scripts", "sidecar/log", "sidecar/daemon", "sidecar/tasks", "clients/ts"]
TOOLS = ["read_file", "grep", "run_tests", "edit_file", "list_dir", "shell", "git_diff", "search"]
AGENTS = ["planner", "coder", "reviewer", "tester"]


class Text:
    """Words drawn with Zipf's law from a vocabulary of English and programming words, and
    lines of code, paths and numbers; deterministic for a seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        words = PROSE + TECH
        self.rng.shuffle(words)
        self.words = words
        self.cum = list(_cumulative([1 / (rank + 1) ** 1.1 for rank in range(len(words))]))
        self.idents = [f"{a}_{b}" for a in TECH[:60] for b in TECH[60:120]]

    def some(self, n: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cum, k=n)

    def sentence(self) -> str:
        words = self.some(self.rng.randint(4, 18))
        return " ".join(words).capitalize() + self.rng.choice(".....?!:")

    def prose(self, chars: int) -> str:
        out: list[str] = []
        n = 0
        while n < chars:
            s = self.sentence()
            out.append(s)
            n += len(s) + 1
            if self.rng.random() < 0.15:
                out.append("\n\n")
        return " ".join(out)

    def path(self) -> str:
        r = self.rng
        return f"{r.choice(DIRS)}/{r.choice(self.idents)}.{r.choice(['py', 'py', 'ts', 'md', 'json'])}"

    def code(self, chars: int) -> str:
        r = self.rng
        lines: list[str] = []
        n = 0
        while n < chars:
            ident = r.choice(self.idents)
            kind = r.random()
            indent = " " * (4 * r.randint(0, 3))
            if kind < 0.2:
                line = f"{indent}def {ident}(self, {r.choice(self.idents)}: int = {r.randint(0, 999)}) -> None:"
            elif kind < 0.4:
                line = f"{indent}{ident} = {r.choice(self.idents)}({r.choice(self.idents)}, {r.randint(0, 99)})"
            elif kind < 0.55:
                line = f"{indent}# {' '.join(self.some(r.randint(3, 10)))}"
            elif kind < 0.7:
                line = f"{self.path()}:{r.randint(1, 2000)}: {ident}"
            elif kind < 0.85:
                line = f"{indent}if {ident} is None:\n{indent}    raise ValueError({' '.join(self.some(5))!r})"
            else:
                line = f"{r.randint(0, 9999):>6} {r.random():.4f}s {ident} {r.getrandbits(64):016x}"
            lines.append(line)
            n += len(line) + 1
        return "\n".join(lines)

    def size(self, median: float, sigma: float, top: int) -> int:
        return min(top, int(self.rng.lognormvariate(0, sigma) * median))


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out


class Traffic:
    """Events of one conversation: agents take turns; progress, tool calls and their output,
    chat messages; a tool's output is caused by its call."""

    def __init__(self, seed: int) -> None:
        self.text = Text(seed)
        self.n = 0
        self.last_call: str | None = None  # the id of the tool call waiting for its output

    def next(self) -> dict[str, Any]:
        t, r = self.text, self.text.rng
        self.n += 1
        agent = AGENTS[(self.n // 7) % len(AGENTS)]
        base: dict[str, Any] = {"conversation_id": CID, "agent_id": agent, "turn": self.n // 20}
        kind = r.random()
        if self.last_call is not None:
            out = t.code(t.size(900, 1.0, 12000)) if r.random() < 0.7 else t.prose(t.size(600, 0.8, 8000))
            ev = {
                **base,
                "type": "tool.output",
                "level": "detail",
                "caused_by": [self.last_call],
                "data": {"exit_code": r.choice([0, 0, 0, 0, 1]), "ms": r.randint(2, 9000), "output": out},
            }
            self.last_call = None
            return ev
        if kind < 0.4:
            return {
                **base,
                "type": "agent.progress",
                "visibility": "status",
                "task_id": f"task-{r.randint(1, 60)}",
                "data": {"msg": f"step {self.n}: {t.sentence()}", "pct": r.randint(0, 100)},
            }
        if kind < 0.65:
            return {
                **base,
                "type": "tool.call",
                "data": {
                    "tool": r.choice(TOOLS),
                    "args": {"path": t.path(), "pattern": " ".join(t.some(2)), "rev": f"{r.getrandbits(160):040x}"},
                },
            }
        return {
            **base,
            "type": "chat.message",
            "visibility": "user",
            "level": "state",
            "data": {"role": r.choice(["user", "assistant", "assistant"]), "text": t.prose(t.size(500, 0.9, 10000))},
        }


def fill(data_dir: Path, rotate_bytes: int, segments: int) -> tuple[list[str], float, int]:
    """Append traffic until ``segments`` segments are sealed, stopping right after the last
    rotation; returns the ids, the seconds and the events."""
    traffic = Traffic(SEED)
    ids: list[str] = []
    sealed = [0]
    t0 = time.perf_counter()
    with EventStore(data_dir, rotate_bytes=rotate_bytes) as store:
        store.on_rotate(lambda: sealed.__setitem__(0, sealed[0] + 1))
        while sealed[0] < segments:
            batch: list[dict[str, Any]] = []
            while len(batch) < FILL_BATCH or traffic.last_call is not None:  # a call's output in its batch
                ev = traffic.next()
                batch.append(ev)
                if ev["type"] == "tool.call":
                    ev["id"] = _uuid7(traffic.text.rng)
                    traffic.last_call = ev["id"]
            ids += [a.id for a in store.append_many(batch)]
    return ids, time.perf_counter() - t0, len(ids)


def _uuid7(rng: random.Random) -> str:
    """A UUIDv7 with the current time and pseudo-random bits (a writer-chosen id)."""
    ms_now = time.time_ns() // 1_000_000
    v = (ms_now << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62) | rng.getrandbits(62)
    h = f"{v:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# --- the peers ------------------------------------------------------------------------------------


@dataclass
class Codec:
    """One way of compressing every segment on its own: sizes and seconds, all segments."""

    name: str
    plain: int = 0
    packed: int = 0
    compress_s: float = 0.0
    decompress_s: float = 0.0

    @property
    def ratio(self) -> float:
        return self.plain / self.packed

    def row(self) -> list[str]:
        return [
            self.name,
            f"{self.packed / MiB:.1f} MiB",
            f"{self.ratio:.2f}x",
            f"{self.plain / MiB / self.compress_s:.0f} MB/s" if self.compress_s else "-",
            f"{self.plain / MiB / self.decompress_s:.0f} MB/s",
        ]


def peer_codec(
    name: str, segments: list[bytes], pack: Callable[[bytes], bytes], unpack: Callable[[bytes], bytes]
) -> Codec:
    c = Codec(name)
    for seg in segments:
        t0 = time.perf_counter()
        packed = pack(seg)
        t1 = time.perf_counter()
        back = unpack(packed)
        t2 = time.perf_counter()
        if back != seg:
            raise RuntimeError(f"{name}: a segment did not round-trip")
        c.plain += len(seg)
        c.packed += len(packed)
        c.compress_s += t1 - t0
        c.decompress_s += t2 - t1
    return c


def decompress_all(data_dir: Path, codec: Codec, segments: int) -> int:
    """Read every compressed segment of ``data_dir`` whole (into ``codec.decompress_s``),
    checking the files are the ones counted; returns the frames."""
    paths = sorted((data_dir / "archive").glob("*" + SUFFIX + COMPRESSED_SUFFIX))
    on_disk = sum(p.stat().st_size for p in paths)
    if len(paths) != segments or on_disk != codec.packed:
        raise RuntimeError(f"{len(paths)} compressed segments of {on_disk} bytes in {data_dir}; expected {codec}")
    frames = 0
    t0 = time.perf_counter()
    for p in paths:
        with CompressedSegment(str(p), cache_frames=1) as seg:
            if len(seg.pread(seg.size, 0)) != seg.size:
                raise RuntimeError(f"{p} decompressed short")
            frames += seg.frame_count
    codec.decompress_s = time.perf_counter() - t0
    return frames


def compress_by_hand(data_dir: Path, frame_bytes: int) -> Codec:
    """What the keeper does to each sealed segment, with another frame size: compressed,
    checked and renamed by ``compress_segment``, then the plain segment unlinked."""
    codec = Codec(f"zstd 3, seekable, {frame_bytes // 1024} KiB frames (`compress_segment(frame_bytes=...)`)")
    t0 = time.perf_counter()
    for p in sorted((data_dir / "archive").glob("*" + SUFFIX)):
        plain, packed = compress_segment(str(p), str(p) + COMPRESSED_SUFFIX, frame_bytes=frame_bytes)
        p.unlink()
        codec.plain += plain
        codec.packed += packed
    codec.compress_s = time.perf_counter() - t0
    return codec


def sqlite_build(path: Path, lines: list[bytes]) -> float:
    """The event lines in a table keyed by seq (the rowid), with an index on the id; seconds."""
    decode = msgspec.json.Decoder(Event).decode
    t0 = time.perf_counter()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, body BLOB NOT NULL)")
        db.executemany(
            "INSERT INTO events VALUES (?, ?, ?)", ((e.seq, e.id, line) for line in lines for e in [decode(line)])
        )
        db.execute("CREATE UNIQUE INDEX events_id ON events (id)")
    return time.perf_counter() - t0


def timed_each(fn: Callable[[Any], object], args: list[Any]) -> list[float]:
    out = []
    for a in args:
        t0 = time.perf_counter()
        fn(a)
        out.append(time.perf_counter() - t0)
    return out


# --- the reads ------------------------------------------------------------------------------------


@dataclass
class Reads:
    """One copy's read figures (seconds)."""

    open_index: float
    scan: float = float("inf")
    paged: float = float("inf")
    pages: int = 0
    gets: list[float] = field(default_factory=list)
    tails: list[float] = field(default_factory=list)
    range_query: float = float("inf")
    range_events: int = 0


def read_all(store: EventStore) -> list[Event]:
    return store.query(conversation_id=CID, limit=None).events


def read_paged(store: EventStore) -> int:
    pages, cursor = 0, None
    while True:
        page = store.query(conversation_id=CID, limit=PAGE, cursor=cursor)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            return pages


def digest(value: object) -> str:
    """What a read answered, in 64 characters: the answers are compared, not kept."""
    return hashlib.sha256(msgspec.json.encode(value)).hexdigest()


def timed(fn: Callable[..., T], *args: Any) -> tuple[float, T]:
    t0 = time.perf_counter()
    got = fn(*args)
    return time.perf_counter() - t0, got


def measure_reads(
    dirs: dict[str, Path], sample: list[str], start: str, end: str, rounds: int
) -> tuple[dict[str, Reads], dict[str, dict[str, str]]]:
    """The reads on every copy, each through a fresh store, interleaved copy by copy (round
    by round, call by call) so that a drift of the machine falls on all alike; also digests
    of what they answered, to compare."""
    reads: dict[str, Reads] = {}
    answers: dict[str, dict[str, str]] = {name: {} for name in dirs}
    with ExitStack() as stack:
        stores: dict[str, EventStore] = {}
        for name, d in dirs.items():
            gc.collect()
            t0 = time.perf_counter()
            stores[name] = stack.enter_context(EventStore(d))
            stores[name].load()
            reads[name] = Reads(time.perf_counter() - t0)
        for _ in range(rounds):
            for name, store in stores.items():
                gc.collect()
                took, events = timed(read_all, store)
                reads[name].scan = min(reads[name].scan, took)
                answers[name]["scan"] = digest(events)
                del events
                took, pages = timed(read_paged, store)
                reads[name].paged = min(reads[name].paged, took)
                reads[name].pages = pages
                took, ranged = timed(store.query, {"conversation_id": CID, "start": start, "end": end, "limit": None})
                reads[name].range_query = min(reads[name].range_query, took)
                answers[name]["range"] = digest(ranged)
                reads[name].range_events = len(ranged.events)
        for eid in sample[:50]:  # warm
            for store in stores.values():
                store.get(eid)
        gc.collect()
        for eid in sample:
            for name, store in stores.items():
                took, _ = timed(store.get, eid)
                reads[name].gets.append(took)
        for _ in range(TAILS):
            for name, store in stores.items():
                took, _ = timed(store.tail, CID, 20)
                reads[name].tails.append(took)
        for name, store in stores.items():
            answers[name]["get"] = digest([store.get(eid) for eid in sample[:200]])
            answers[name]["tail"] = digest(store.tail(CID, 20))
    return reads, answers


def run(cfg: Config) -> list[Section]:
    rotate_bytes, n_segments = sizes(cfg)
    rounds = 2 if cfg.quick else 3
    sec = Section(
        "Compressed segments: ratio and read speed",
        "./dev bench --only compression" + (" --quick" if cfg.quick else ""),
        "One conversation of agent traffic (progress lines, tool calls each followed by its output of code or "
        "text, chat messages; pseudo-random text from a Zipf-weighted vocabulary, the same every run) is "
        f"appended in batches of {FILL_BATCH} with `rotate_bytes` = {rotate_bytes // MiB} MiB until {n_segments} "
        "segments are sealed, and stops right after that rotation, so every read below reads sealed segments. "
        "The data directory is copied and the copy's segments compressed by the archive keeper "
        f"(`ArchiveKeeper(..., RetentionPolicy(compress=True)).run_once()`: zstd level 3, {FRAME_BYTES // 1024} KiB "
        "frames, seekable; each segment written, read back and checked before the plain one goes); a third copy "
        f"is compressed the same way with {SMALL_FRAMES // 1024} KiB frames, for comparison. Then the same reads "
        "on every copy, each through a fresh `EventStore` (page cache warm for all), interleaved copy by copy "
        "(round by round, call by call): open + index, the whole conversation in one `query` (`limit=None`), "
        f"the same in pages of {PAGE:,}, {LOOKUPS:,} random `get`s, {TAILS} `tail(20)`s and a query of about "
        f"{RANGE_EVENTS:,} events by time range in the middle; every answer of a compressed copy must equal the "
        f"plain one's. Scans and the range query: the best of {rounds}; `get` and `tail`: each call timed. "
        "The peers, on the same bytes in the same run: stdlib "
        "`gzip` (level 9, `gzip.compress`'s default, and 6) and zstd level 3 as one frame per segment, each "
        "segment compressed on its own; SQLite holding the same event lines, read by rowid (= seq) and by "
        "`id` (a unique index).",
    )
    with tempfile.TemporaryDirectory(dir=cfg.tmp, prefix="sidecar-bench-") as tmp_name:
        tmp = Path(tmp_name)
        plain_dir, comp_dir, small_dir = tmp / "plain", tmp / "compressed", tmp / "small-frames"
        ids, fill_s, n_events = fill(plain_dir, rotate_bytes, n_segments)
        seg_paths = sorted((plain_dir / "archive").glob("*" + SUFFIX))
        active = plain_dir / "logs" / f"{CID}{SUFFIX}"
        if active.exists() and active.stat().st_size:
            raise RuntimeError(f"the active segment holds {active.stat().st_size} bytes; expected none")
        seg_bytes = [p.read_bytes() for p in seg_paths]
        plain_total = sum(len(b) for b in seg_bytes)
        shutil.copytree(plain_dir, comp_dir)
        shutil.copytree(plain_dir, small_dir)

        with EventStore(comp_dir) as store:
            keeper = ArchiveKeeper(store.paths, RetentionPolicy(compress=True))
            t0 = time.perf_counter()
            keeper.run_once()
            compress_s = time.perf_counter() - t0
        st = keeper.stats
        if st.compressed_segments != len(seg_paths) or st.plain_bytes != plain_total or st.failures:
            raise RuntimeError(f"the keeper compressed {st}; expected {len(seg_paths)} segments of {plain_total} bytes")
        keeper_codec = Codec(
            f"sidecar: the keeper (zstd 3, seekable, {FRAME_BYTES // 1024} KiB frames)",
            plain_total,
            st.compressed_bytes,
            compress_s,
        )
        frames = decompress_all(comp_dir, keeper_codec, len(seg_paths))
        small_codec = compress_by_hand(small_dir, SMALL_FRAMES)
        small_frames = decompress_all(small_dir, small_codec, len(seg_paths))

        cctx, dctx = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
        codecs = [
            keeper_codec,
            small_codec,
            peer_codec("zstd 3, one frame per segment (not seekable)", seg_bytes, cctx.compress, dctx.decompress),
            peer_codec("gzip 9 (`gzip.compress`'s default)", seg_bytes, gzip.compress, gzip.decompress),
            peer_codec("gzip 6", seg_bytes, lambda b: gzip.compress(b, 6), gzip.decompress),
        ]

        rng = random.Random(SEED + 1)
        sample = [ids[rng.randrange(len(ids))] for _ in range(LOOKUPS)]
        with EventStore(plain_dir) as store:
            events_plain = read_all(store)
        if len(events_plain) != n_events or [e.id for e in events_plain] != ids:
            raise RuntimeError(f"a scan read {len(events_plain)} events; {n_events} were appended")
        mid = len(events_plain) // 2
        start, end = events_plain[mid].timestamp, events_plain[mid + RANGE_EVENTS - 1].timestamp
        seq_of = {e.id: e.seq for e in events_plain}
        del events_plain
        os.sync()  # the copies' pages written back now, not during the reads
        dirs = {PLAIN: plain_dir, KEEPER: comp_dir, SMALL: small_dir}
        reads, answers = measure_reads(dirs, sample, start, end, rounds)
        for name in dirs:
            if answers[name] != answers[PLAIN]:
                differ = [k for k in answers[PLAIN] if answers[name].get(k) != answers[PLAIN][k]]
                raise RuntimeError(f"the copy {name!r} answered {', '.join(differ)} differently from the plain one")

        lines = [line for b in seg_bytes for line in b.splitlines()]
        db_path = tmp / "events.db"
        sqlite_s = sqlite_build(db_path, lines)
        with sqlite3.connect(db_path) as db:

            def row_get(seq: int) -> Event:
                (body,) = db.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()
                return msgspec.json.decode(body, type=Event)

            def id_get(eid: str) -> Event:
                (body,) = db.execute("SELECT body FROM events WHERE id = ?", (eid,)).fetchone()
                return msgspec.json.decode(body, type=Event)

            for eid in sample[:50]:
                row_get(seq_of[eid])
                id_get(eid)
            sqlite_rowid = timed_each(row_get, [seq_of[eid] for eid in sample])
            sqlite_id = timed_each(id_get, sample)
            if digest([row_get(seq_of[e]) for e in sample[:200]]) != answers[PLAIN]["get"]:
                raise RuntimeError("SQLite answered get()s differently from the log")
        db_bytes = db_path.stat().st_size + sum(p.stat().st_size for p in tmp.glob("events.db-*"))

    # --- the tables -------------------------------------------------------------------------------
    mb = plain_total / MiB
    t = sec.table(
        f"Compressing {len(seg_paths)} sealed segments, {mb:.1f} MiB, {n_events:,} events "
        f"(mean {plain_total / n_events:,.0f} bytes a line), each segment on its own",
        ["how", "size", "ratio", "compress", "decompress (all of it)"],
    )
    for codec in codecs:
        t.row(*codec.row())
    t.row(
        "SQLite, the same lines (rowid = seq, `id` indexed), for scale",
        f"{db_bytes / MiB:.1f} MiB",
        f"{plain_total / db_bytes:.2f}x",
        "-",
        "-",
    )

    p, c, f = reads[PLAIN], reads[KEEPER], reads[SMALL]
    r = sec.table(
        "Reads of the same data, plain and compressed, in-process through `EventStore` (x: over plain)",
        [
            "read",
            "plain",
            f"compressed by the keeper ({FRAME_BYTES // 1024} KiB frames)",
            f"compressed, {SMALL_FRAMES // 1024} KiB frames",
            "SQLite",
        ],
    )

    def row(what: str, value: Callable[[Reads], float], show: Callable[[float], str], peer: str = "-") -> None:
        base = value(p)
        r.row(what, show(base), *(f"{show(value(x))} ({value(x) / base:.2f}x)" for x in (c, f)), peer)

    def p50(xs: list[float]) -> float:
        return pct(xs, 0.5)

    def p50_99(xs: list[float]) -> str:
        return f"{pct(xs, 0.5) * 1e6:,.0f} / {pct(xs, 0.99) * 1e6:,.0f} us"

    def us(x: float) -> str:
        return f"{x * 1e6:,.0f} us"

    row("open + index (`load()`), fresh store", lambda x: x.open_index, ms)
    row(f"the whole conversation, one `query` ({n_events:,} events)", lambda x: x.scan, ms)
    row(f"the same in pages of {PAGE:,} ({p.pages} `query` calls)", lambda x: x.paged, ms)
    row(
        f"`get(id)`, {LOOKUPS:,} random ids, p50",
        lambda x: p50(x.gets),
        us,
        f"by rowid {us(p50(sqlite_rowid))}; by `id` {us(p50(sqlite_id))}",
    )
    row(
        "`get(id)`, p99",
        lambda x: pct(x.gets, 0.99),
        us,
        f"by rowid {us(pct(sqlite_rowid, 0.99))}; by `id` {us(pct(sqlite_id, 0.99))}",
    )
    row("`tail(20)`, p50", lambda x: p50(x.tails), us)
    row(f"`query` by time range in the middle ({p.range_events:,} events)", lambda x: x.range_query, ms)
    r.row(
        "scan speed (plain MB/s)",
        *(f"{mb / x.scan:.0f} MB/s one `query`, {mb / x.paged:.0f} paged" for x in (p, c, f)),
        "-",
    )
    ratio = keeper_codec.ratio
    get_slowdown = p50(c.gets) / p50(p.gets)
    sec.target(f"compression ratio >= {MIN_RATIO:.0f} on this traffic ({ratio:.2f}x)", ratio >= MIN_RATIO)
    sec.target(
        f"random `get` on compressed segments within {MAX_GET_SLOWDOWN:.0f}x of plain (p50 {get_slowdown:.1f}x)",
        get_slowdown <= MAX_GET_SLOWDOWN,
    )
    sec.note(
        f"the traffic was appended at {n_events / fill_s:,.0f} events/s ({mb / fill_s:.0f} MB/s) with clocks; "
        f"SQLite took {ms(sqlite_s)} to load the same lines. The keeper's pass wrote {frames} frames; its time "
        "includes reading each compressed file back and checking it, and an fsync per file; "
        f"with {SMALL_FRAMES // 1024} KiB frames there were {small_frames}."
    )
    sec.data = {
        "segments": len(seg_paths),
        "events": n_events,
        "plain_bytes": plain_total,
        "codecs": {
            k.name: {"bytes": k.packed, "compress_s": k.compress_s, "decompress_s": k.decompress_s} for k in codecs
        },
        "sqlite_bytes": db_bytes,
        "reads": {
            name: {
                "open_index_s": x.open_index,
                "scan_s": x.scan,
                "paged_s": x.paged,
                "get_p50_s": pct(x.gets, 0.5),
                "get_p99_s": pct(x.gets, 0.99),
                "tail_p50_s": pct(x.tails, 0.5),
                "range_s": x.range_query,
            }
            for name, x in reads.items()
        },
        "sqlite_get_p50_s": {"rowid": pct(sqlite_rowid, 0.5), "id": pct(sqlite_id, 0.5)},
        "ratio": ratio,
        "frames": {KEEPER: frames, SMALL: small_frames},
        "get_slowdown": get_slowdown,
        "range_events": p.range_events,
    }
    return [sec]


if __name__ == "__main__":
    import sys

    import run_all

    run_all.main(["--only", "compression", *sys.argv[1:]])
