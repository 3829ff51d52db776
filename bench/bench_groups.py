"""Consumer groups: one consumer drains a pre-filled conversation with a group and acks as it
goes, beside Redis Streams with a consumer group, in the same run.

    python bench/bench_groups.py [--quick]     # this section alone (run_all.py --only groups)

Issue 19 ("the ack throughput"): a conversation pre-filled with N events (`log.append_many`,
in batches); one consumer subscribes with a group and, for each event received, sends
`log.ack`: one at a time waiting for each answer, pipelined (64 acks in flight), and only
every 10th / 100th event. Beside it, on the same daemon, the replay alone (no group, no acks:
the consumer's ceiling), `log.append` (a durable write, for scale), `sys.health` and `log.ack`
on an idle connection; and the peer, Redis Streams (XADD the same N entries, then XREADGROUP +
XACK) with `appendfsync always`, `everysec` and no AOF. Last, the durability of the positions
is checked, not assumed: `log.groups` must show every group at the last seq, `groups.json`
must hold it within a second while the daemon runs, and after a SIGTERM.
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from bench_claims import sidecar_calls
from bench_daemon import REDIS, Daemon, RedisServer, call, redis_version, request, resp_command
from plots import Panel, Series, figure
from report import Config, Section, ms, pct

from sidecar.log.groups import GROUPS_FILE

CONVERSATION = "bench-groups"
STREAM = b"bench-groups"
FILL_BATCH = 500  # events per log.append_many (and XADDs per pipelined round to Redis)
WINDOW = 64  # acks in flight when pipelined
EVERY = (1, 10, 100)  # events per ack, one ack in flight
READ = 100  # XREADGROUP COUNT: entries per read from Redis
DATA = {"tool": "grep", "path": "src/sidecar/log/groups.py", "hits": 3}  # each event's payload


def size(cfg: Config) -> int:
    return 2_000 if cfg.quick else 20_000


@dataclass
class Consumed:
    """One consumer's run: how long it took from subscribe (or first read) to the last ack's
    answer, each ack's latency from send to answer, and what it saw."""

    seconds: float
    events: int
    acks: list[float] = field(default_factory=list)
    last_acked: int = 0

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def check(got: Consumed, n: int, acking: bool) -> None:
    if got.events != n or (acking and got.last_acked != n):
        raise RuntimeError(f"consumed {got.events} events, last ack {got.last_acked}; expected {n} and {n}")


# --- the sidecar: log.subscribe {group} pushes, log.ack on the same connection -----------------


def fill_daemon(path: str, n: int) -> float:
    """``n`` events into the conversation, ``FILL_BATCH`` per ``log.append_many``; events/s."""
    event = {"conversation_id": CONVERSATION, "type": "tool.finished", "data": DATA}
    t0 = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        f = s.makefile("rb")
        for i in range(0, n, FILL_BATCH):
            s.sendall(request(i, "log.append_many", {"events": [event] * min(FILL_BATCH, n - i)}))
            reply = json.loads(f.readline())
            if "error" in reply:
                raise RuntimeError(f"error from the daemon: {reply['error']}")
    return n / (time.perf_counter() - t0)


def sidecar_consume(path: str, n: int, group: str | None, window: int = 1, every: int = 1) -> Consumed:
    """Subscribe (with ``group``, else a plain replay from seq 1) and take the ``n`` events in
    seq order; ack every ``every``-th one (and the last), ``window`` acks in flight at most.
    Every event is checked (no gap, no repeat) and every ack's answer too."""
    decode = msgspec.json.Decoder().decode
    params: dict[str, Any] = {"conversation_id": CONVERSATION}
    params.update({"group": group} if group else {"from_seq": 1})
    queued: deque[int] = deque()  # seqs received, not yet handled
    pending: dict[int, tuple[float, int]] = {}  # ack id -> (sent at, seq)
    out = Consumed(0.0, 0)
    rid, seen, buf = 0, 0, b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        t0 = time.perf_counter()
        s.sendall(request(0, "log.subscribe", params))
        while not (seen == n and not queued and not pending and (group is None or out.last_acked == n)):
            sends = []
            while queued and len(pending) < window:
                seq = queued.popleft()
                if group is None or (seq % every and seq != n):
                    continue
                rid += 1
                pending[rid] = (time.perf_counter(), seq)
                sends.append(request(rid, "log.ack", {"group": group, "conversation_id": CONVERSATION, "seq": seq}))
            if sends:
                s.sendall(b"".join(sends))
            if seen == n and not queued and not pending:
                continue
            chunk = s.recv(1 << 20)
            if not chunk:
                raise RuntimeError("the daemon closed the connection")
            *lines, buf = (buf + chunk).split(b"\n")
            now = time.perf_counter()
            for line in lines:
                msg = decode(line)
                if "method" in msg:
                    if msg["method"] != "log.event":
                        raise RuntimeError(f"unexpected notification: {msg}")
                    seq = msg["params"]["event"]["seq"]
                    if seq != seen + 1:
                        raise RuntimeError(f"event seq {seq} after {seen}: a gap or a repeat")
                    seen = seq
                    queued.append(seq)
                elif "error" in msg:
                    raise RuntimeError(f"error from the daemon: {msg['error']}")
                elif msg["id"]:
                    sent, seq = pending.pop(msg["id"])
                    if msg["result"]["acked_seq"] < seq:
                        raise RuntimeError(f"ack of {seq} answered {msg['result']}")
                    out.acks.append(now - sent)
                    out.last_acked = max(out.last_acked, seq)
        out.seconds = time.perf_counter() - t0
    out.events = seen
    return out


# --- Redis Streams: XREADGROUP pulls, XACK per entry (or per batch of ids) ----------------------


def stream_redis(run_dir: Path, fsync: str | None) -> RedisServer:
    """A private redis-server with ``appendfsync`` as given (None: no AOF), no snapshots."""
    return RedisServer(run_dir, fsync=fsync is not None, appendfsync=fsync or "always")


def resp_parse(buf: bytes, pos: int) -> tuple[Any, int] | None:
    """One RESP reply at ``pos`` (arrays nested): (value, position after), or None if not all in."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, head = buf[pos : pos + 1], buf[pos + 1 : end]
    if kind == b"-":
        raise RuntimeError(f"error from redis: {head.decode()}")
    if kind == b"$":
        size = int(head)
        if size < 0:
            return None, end + 2
        if len(buf) < end + 2 + size + 2:
            return None
        return buf[end + 2 : end + 2 + size], end + 2 + size + 2
    if kind == b"*":
        count = int(head)
        if count < 0:
            return None, end + 2
        items, at = [], end + 2
        for _ in range(count):
            got = resp_parse(buf, at)
            if got is None:
                return None
            items.append(got[0])
            at = got[1]
        return items, at
    return (int(head) if kind == b":" else head), end + 2


class RespConn:
    """A blocking connection to Redis that reads replies in order."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""

    def replies(self) -> list[Any]:
        """The replies that are in after one recv (at least one)."""
        while True:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("redis closed the connection")
            self.buf += chunk
            out, pos = [], 0
            while (got := resp_parse(self.buf, pos)) is not None:
                out.append(got[0])
                pos = got[1]
            self.buf = self.buf[pos:]
            if out:
                return out

    def command(self, *args: bytes) -> Any:
        self.sock.sendall(resp_command(*args))
        (reply,) = self.replies()
        return reply

    def close(self) -> None:
        self.sock.close()


def fill_redis(path: str, n: int) -> float:
    """The same ``n`` entries by XADD, ``FILL_BATCH`` pipelined per round; entries/s."""
    conn = RespConn(path)
    fields = (b"type", b"tool.finished", b"data", json.dumps(DATA).encode())
    try:
        conn.command(b"FLUSHALL")
        t0 = time.perf_counter()
        for i in range(0, n, FILL_BATCH):
            k = min(FILL_BATCH, n - i)
            conn.sock.sendall(resp_command(b"XADD", STREAM, b"*", *fields) * k)
            got = 0
            while got < k:
                got += len(conn.replies())
        return n / (time.perf_counter() - t0)
    finally:
        conn.close()


def redis_consume(path: str, n: int, group: str, window: int = 1, every: int = 1, noack: bool = False) -> Consumed:
    """XREADGROUP ``READ`` entries at a time, XACK of ``every`` ids at once (one per entry when
    1), ``window`` XACKs in flight at most; with one in flight, the next read goes when the
    last entries are acked, else as soon as fewer than ``READ`` are left to ack. ``noack``:
    XREADGROUP ... NOACK and no XACK (the read alone)."""
    conn = RespConn(path)
    g = group.encode()
    try:
        conn.command(b"XGROUP", b"CREATE", STREAM, g, b"0")
        head = [b"XREADGROUP", b"GROUP", g, b"c1", b"COUNT", b"%d" % READ, *([b"NOACK"] if noack else [])]
        read = resp_command(*head, b"STREAMS", STREAM, b">")
        local: deque[bytes] = deque()
        batch: list[bytes] = []
        waiting: deque[tuple[str, float, int]] = deque()  # what each reply will be, in order
        out = Consumed(0.0, 0)
        taken = reading = acks_out = acked = 0
        t0 = time.perf_counter()
        while (out.events < n) if noack else (acked < n):
            sends = []
            if noack:
                local.clear()
            while local and acks_out < window:
                batch.append(local.popleft())
                taken += 1
                if len(batch) == every or taken == n:
                    sends.append(resp_command(b"XACK", STREAM, g, *batch))
                    waiting.append(("ack", time.perf_counter(), len(batch)))
                    acks_out += 1
                    batch = []
            if not reading and out.events < n and (len(local) < READ if window > 1 else not local and not acks_out):
                sends.append(read)
                waiting.append(("read", 0.0, 0))
                reading = 1
            if sends:
                conn.sock.sendall(b"".join(sends))
            replies = conn.replies()
            now = time.perf_counter()
            for reply in replies:
                kind, sent, k = waiting.popleft()
                if kind == "read":
                    entries = reply[0][1]
                    local.extend(e[0] for e in entries)
                    out.events += len(entries)
                    reading = 0
                else:
                    if reply != k:
                        raise RuntimeError(f"XACK of {k} ids answered {reply!r}")
                    out.acks.append(now - sent)
                    acked += k
                    acks_out -= 1
        out.seconds = time.perf_counter() - t0
        pel = conn.command(b"XPENDING", STREAM, g)
        if pel[0] != 0:
            raise RuntimeError(f"redis group {group}: {pel[0]} entries still pending after the run")
        out.last_acked = n
        return out
    finally:
        conn.close()


# --- the durability check -------------------------------------------------------------------------


def groups_file(data_dir: Path) -> dict[str, int]:
    """The positions in ``data_dir/groups.json`` for the benchmark's conversation."""
    try:
        doc = json.loads((data_dir / GROUPS_FILE).read_text())
    except FileNotFoundError:
        return {}
    return {g["group"]: g["acked_seq"] for g in doc["groups"] if g["conversation_id"] == CONVERSATION}


def on_disk_within(data_dir: Path, want: dict[str, int], limit: float = 5.0) -> float:
    """Seconds until ``groups.json`` holds every position in ``want`` (polled every ms)."""
    t0 = time.perf_counter()
    while (took := time.perf_counter() - t0) < limit:
        if all(groups_file(data_dir).get(g) == s for g, s in want.items()):
            return took
        time.sleep(0.001)
    raise RuntimeError(f"groups.json does not hold {want} after {limit:.0f} s: {groups_file(data_dir)}")


# --- the section --------------------------------------------------------------------------------

REDIS_CONFIGS = (
    ("always", "Redis, `appendfsync always`", "the AOF fsync'd before each reply"),
    ("everysec", "Redis, `appendfsync everysec`", "the AOF fsync'd once a second"),
    (None, "Redis, no AOF", "none: in memory only"),
)
SIDECAR_ACKS = "`groups.json` rewritten and fsync'd every 0.5 s"


def acking_label(window: int, every: int) -> str:
    if window > 1:
        return f"one ack per event, {window} in flight"
    return "one ack per event, waiting for each" if every == 1 else f"one ack per {every} events, waiting for each"


def xack_label(window: int, every: int) -> str:
    if window > 1 or every == 1:
        return acking_label(window, every).replace("ack", "XACK", 1)
    return f"one XACK of {every} ids, waiting for each"


def run(cfg: Config) -> list[Section]:
    n = size(cfg)
    sec = Section(
        "Consumer groups",
        "./dev bench --only groups" + (" --quick" if cfg.quick else ""),
        f"A conversation pre-filled with {n:,} events (`log.append_many`, {FILL_BATCH} a call); one consumer, on "
        "one connection, subscribes with a new group (so it replays from seq 1) and acks as it goes with "
        "`log.ack` requests on the same connection, each answer checked: one per event waiting for each answer, "
        f"one per event with {WINDOW} in flight, and one per 10 and per 100 events (the position is cumulative, so "
        "acking the 100th acks the 99 before it). Each way is a new group on the same conversation. The consumer's "
        "ceiling beside it: the same replay with no group and no acks. Events/s count from the subscribe to the "
        "last ack's answer. The peer: Redis Streams, the same entries by XADD, then one consumer with "
        f"`XREADGROUP ... COUNT {READ}` and `XACK` (one id per XACK, or the 10 or 100 ids at once: Redis acks ids, "
        "not a position), under three durabilities. Then, on the same daemon, `log.append` (a durable write), "
        "`sys.health` and `log.ack` on an idle connection, for scale; and the positions' durability, asserted.",
    )
    rows: dict[str, dict[str, Any]] = {}
    t = sec.table(
        f"Consume and ack {n:,} events, one consumer",
        ["system", "acks durable", "acking", "events/s", "vs replay alone", "acks", "ack p50 / p99 ms"],
    )

    def row(system: str, durability: str, acking: str, got: Consumed, base: float) -> None:
        key = f"{system}: {acking}"
        rows[key] = {
            "rate": got.rate,
            "seconds": got.seconds,
            "acks": len(got.acks),
            "ack_p50": pct(got.acks, 0.5) if got.acks else None,
            "ack_p99": pct(got.acks, 0.99) if got.acks else None,
        }
        t.row(
            system,
            durability,
            acking,
            f"{got.rate:,.0f}",
            f"{got.rate / base:.2f}x",
            f"{len(got.acks):,}",
            f"{pct(got.acks, 0.5) * 1e3:.3f} / {pct(got.acks, 0.99) * 1e3:.3f}" if got.acks else "-",
        )

    scale: dict[str, Any] = {}
    durable: dict[str, Any] = {}
    latencies: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=cfg.tmp, prefix="sidecar-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data_dir = tmp / "sidecar"
        d = Daemon(data_dir, tmp / "run")
        try:
            filled = fill_daemon(d.socket, n)
            sidecar_consume(d.socket, min(n, 500), None)  # warm: code paths hot, the log in the page cache
            alone = sidecar_consume(d.socket, n, None)
            check(alone, n, False)
            base = alone.rate
            row("sidecar", "-", "replay alone: no group, no acks (the ceiling)", alone, base)
            want: dict[str, int] = {}
            for window, every in [(1, 1), (WINDOW, 1), *((1, k) for k in EVERY[1:])]:
                group = f"g-{window}x{every}"
                got = sidecar_consume(d.socket, n, group, window, every)
                check(got, n, True)
                want[group] = n
                row("sidecar", SIDECAR_ACKS, acking_label(window, every), got, base)
                if window == 1:
                    latencies[f"sidecar every {every}"] = got.acks
            # the daemon's own view, then the file within a second of the last ack
            listed = call(d.socket, "log.groups", {})
            assert isinstance(listed, dict)
            mine = {g["group"]: g for g in listed["groups"] if g["conversation_id"] == CONVERSATION}
            for group in want:
                if mine.get(group, {}).get("acked_seq") != n or mine[group]["lag"] != 0:
                    raise RuntimeError(f"log.groups shows {mine.get(group)} for {group}, expected acked_seq {n}, lag 0")
            flushed = on_disk_within(data_dir, want)
            # for scale: the same daemon, idle connections
            health = sidecar_calls(d.socket, lambda i: request(i, "sys.health", {}), 500)
            quiet_seq = iter(range(1, n + 1))
            quiet = sidecar_calls(
                d.socket,
                lambda i: request(
                    i, "log.ack", {"group": "g-quiet", "conversation_id": CONVERSATION, "seq": next(quiet_seq)}
                ),
                500,
            )
            want["g-quiet"] = 500
            event = {"conversation_id": "bench-groups-append", "type": "agent.progress", "data": {"msg": "step"}}
            appends = sidecar_calls(d.socket, lambda i: request(i, "log.append", event), 300)
            # the last ack, then SIGTERM at once: the clean stop must write it
            call(d.socket, "log.ack", {"group": "g-stop", "conversation_id": CONVERSATION, "seq": n})
            want["g-stop"] = n
        finally:
            d.stop()
        if d.proc.returncode != 0:
            raise RuntimeError(f"the daemon exited {d.proc.returncode} on SIGTERM; see {d.stderr_path}")
        after = groups_file(data_dir)
        if any(after.get(g) != s for g, s in want.items()):
            raise RuntimeError(f"groups.json after SIGTERM holds {after}, expected {want}")
        durable = {"log_groups": {g: mine[g]["acked_seq"] for g in mine}, "file_after_sigterm": after}
        durable["flush_s"] = flushed
        scale = {
            "fill_per_s": filled,
            "health_p50": pct(health, 0.5),
            "health_p99": pct(health, 0.99),
            "quiet_ack_p50": pct(quiet, 0.5),
            "quiet_ack_p99": pct(quiet, 0.99),
            "append_p50": pct(appends, 0.5),
            "append_p99": pct(appends, 0.99),
        }

        redis_fill: dict[str, float] = {}
        if REDIS is None:
            sec.note(
                "Redis was skipped: redis-server is not installed here (`./dev bench` installs it as root on Debian)."
            )
        for fsync, name, durability in REDIS_CONFIGS if REDIS else ():
            try:
                server = stream_redis(tmp / f"redis-{fsync or 'none'}", fsync)
            except (OSError, RuntimeError, TimeoutError) as e:
                sec.note(f"{name} was skipped: {e}")
                continue
            try:
                redis_fill[name] = fill_redis(server.socket, n)
                redis_consume(server.socket, min(n, 500), "warm", noack=True)
                if fsync is None:
                    got = redis_consume(server.socket, n, "read-alone", noack=True)
                    check(got, n, False)
                    row(name, "-", "XREADGROUP ... NOACK alone, no XACK", got, base)
                for window, every in [(1, 1), (WINDOW, 1), *((1, k) for k in EVERY[1:])]:
                    got = redis_consume(server.socket, n, f"g-{window}x{every}", window, every)
                    check(got, n, True)
                    acking = xack_label(window, every)
                    row(name, durability, acking, got, base)
                    if window == 1:
                        latencies[f"{name} every {every}"] = got.acks
            finally:
                server.stop()

    t2 = sec.table(
        "For scale: the same daemon, after the consumers, one request at a time on an idle connection, p50 / p99 ms",
        ["`sys.health`", "`log.ack` (a new group, seq 1, 2, 3, ...)", "`log.append` (durable: fdatasync'd)"],
    )
    t2.row(
        *(f"{scale[k + '_p50'] * 1e3:.3f} / {scale[k + '_p99'] * 1e3:.3f}" for k in ("health", "quiet_ack", "append"))
    )
    each = rows["sidecar: one ack per event, waiting for each"]
    piped = rows[f"sidecar: one ack per event, {WINDOW} in flight"]
    sec.note(
        f"the acks go on the connection the events come in on: an ack's answer queues behind the events the daemon "
        f"has already pushed, which the consumer reads (and decodes) first. So the ack p50 while consuming, "
        f"{ms(each['ack_p50'])} waiting for each, is above a `log.ack` on an idle connection, "
        f"{ms(scale['quiet_ack_p50'])}; with {WINDOW} in flight, {ms(piped['ack_p50'])} per ack but "
        f"{piped['rate'] / each['rate']:.1f}x the events/s"
    )
    sec.note(
        "what an answered ack survives: the sidecar holds the position in memory at the answer and rewrites "
        "`groups.json` (temp file, fsync, rename) every 0.5 s when it changed, so a crash loses at most the last "
        "second of acks (those events are delivered again, never lost); Redis with `appendfsync everysec` is the "
        "closest equivalent. `appendfsync always` fsyncs before each reply (one fsync per round of its event loop, "
        "so pipelined XACKs share one); no AOF keeps nothing across a restart"
    )
    sec.note(
        f"durability, checked: `log.groups` showed every group at acked_seq {n:,} with lag 0; `groups.json` held all "
        f"of them {ms(durable['flush_s'])} after the check (the flusher runs every 0.5 s; the contract says within "
        f"1 s); and after an ack sent just before the SIGTERM, the file the clean stop left held it too"
    )
    sec.note(
        f"the pre-fill: {scale['fill_per_s']:,.0f} events/s into the daemon with `log.append_many` ({FILL_BATCH} a "
        "call)"
        + (
            "; into Redis by pipelined XADD: "
            + ", ".join(f"{k.replace('Redis, ', '')} {v:,.0f}/s" for k, v in redis_fill.items())
            if redis_fill
            else ""
        )
    )
    if REDIS is not None:
        sec.note(
            f"Redis is redis-server {redis_version()}. Its consumer pulls: the next `XREADGROUP` goes when the last "
            f"entries are acked (one XACK in flight), or as soon as fewer than {READ} are left to ack ({WINDOW} in "
            "flight). A read moves entries into the group's pending list, so it is written to the AOF too."
        )
    sec.data = {
        "events": n,
        "rows": rows,
        "scale": scale,
        "durability": durable,
        "redis_fill_per_s": redis_fill,
    }

    def curve(system: str) -> list[float]:
        label = xack_label if system.startswith("Redis") else acking_label
        return [rows[f"{system}: {label(1, k)}"]["rate"] for k in EVERY]

    series = [Series("sidecar", list(EVERY), curve("sidecar"))]
    series += [
        Series(name.replace("`", ""), list(EVERY), curve(name))
        for _, name, _ in REDIS_CONFIGS
        if any(k.startswith(name) for k in rows)
    ]
    series.append(Series("sidecar replay alone, no acks", list(EVERY), [base] * len(EVERY), "k--"))
    spread = [i / 100 for i in range(1, 100)]
    sec.plots.append(
        figure(
            cfg.out / "groups.png",
            [
                Panel(
                    "Events consumed + acked per second, one ack in flight",
                    "events per ack",
                    "events/s",
                    series,
                    logx=True,
                    logy=True,
                ),
                Panel(
                    "Ack latency, one ack per event, waiting for each",
                    "percentile",
                    "ms",
                    [
                        Series(
                            label.replace(" every 1", "").replace("`", ""),
                            [q * 100 for q in spread],
                            [pct(v, q) * 1e3 for q in spread],
                            "-",
                        )
                        for label, v in latencies.items()
                        if label.endswith(" every 1")
                    ],
                    logy=True,
                ),
            ],
        )
    )
    return [sec]


if __name__ == "__main__":
    import sys

    import run_all

    run_all.main(["--only", "groups", *sys.argv[1:]])
