"""Work and descriptors that must not grow with the number of conversations (contract §9).

Cross-conversation reads hold at most their budget of snapshots open and answer exactly as
if every conversation were open at once; a commit holds at most the writer's share of files;
a miss of the id index stats each conversation once and reads none that did not change.
Work is measured by counting (snapshots open, log files open, files checked), never by time.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sidecar.clock import ManualClock
from sidecar.errors import InvalidParams, SidecarError
from sidecar.log import EventStore, files
from sidecar.log.events import Event, as_new_event
from sidecar.log.filter import as_filter
from sidecar.log.reader import Snapshot
from sidecar.log.request import AppendRequest
from sidecar.log.scan import QueryStats, ReadBudget, run_query

BUDGET = 4  # the writer's share of files in these tests; reads get half


@pytest.fixture
def small_budget(monkeypatch: pytest.MonkeyPatch) -> int:
    """A descriptor budget far below the number of conversations the tests use."""
    monkeypatch.setattr(files, "open_files_budget", lambda: BUDGET)
    return BUDGET


def ev(cid: str, type_: str = "agent.progress", **kw: Any) -> dict[str, Any]:
    return {"conversation_id": cid, "type": type_, **kw}


def open_logs(data_dir: Path) -> int:
    """Log files (active or archived) this process has open right now."""
    logs = (str(data_dir / "logs") + "/", str(data_dir / "archive") + "/")
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own descriptor, already closed
        count += target.startswith(logs)
    return count


class CountingSnapshots:
    """A snapshot factory that counts the snapshots open at once (the peak) and in all."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.open = self.peak = self.total = 0

    def __call__(self, cid: str, **kw: Any) -> Snapshot:
        snap = EventStore.snapshot(self.store, cid, **kw)
        self.open += 1
        self.total += 1
        self.peak = max(self.peak, self.open)
        close = snap.close

        def counted_close() -> None:
            if snap.segments is not None:
                self.open -= 1
                close()
                snap.segments = None  # type: ignore[assignment]  # closed once

        snap.close = counted_close  # type: ignore[method-assign]
        return snap


def requests(events: list[list[dict[str, Any]]]) -> list[AppendRequest]:
    return [AppendRequest([as_new_event(e) for e in group]) for group in events]


def commit(store: EventStore, events: list[list[dict[str, Any]]]) -> None:
    """Commit these requests as one group commit (cheaper than an fsync each), or fail."""
    batch = requests(events)
    store.append_requests(batch)
    for req in batch:
        req.wait()


@pytest.fixture
def many(data_dir: Path, clock: ManualClock, small_budget: int) -> Iterator[EventStore]:
    """40 conversations interleaved in time, with runs at one timestamp (a batch), several
    segments each (small rotation), mixed types, visibilities and agents."""
    rng = random.Random(12)
    with EventStore(data_dir, clock=clock, rotate_bytes=1500) as store:
        pending: list[list[dict[str, Any]]] = []  # one group commit per simulated second
        for step in range(400):
            cid = f"c{rng.randrange(40):02d}"
            kind = rng.choice(["agent.progress", "agent.error", "task.updated"])
            vis = rng.choice(["internal", "status"])
            if step % 50 == 7:  # one request: many events of one conversation at one timestamp
                pending.append([ev(cid, kind, visibility=vis, agent_id="batch") for _ in range(12)])
            else:
                pending.append([ev(cid, kind, visibility=vis, agent_id=rng.choice(["a", "b"]))])
            if rng.random() < 0.6:
                commit(store, pending)
                pending = []
                clock.advance(1)
        commit(store, pending)
        yield store


def everything(store: EventStore) -> list[Event]:
    events = [e for cid in store.conversation_ids() for e in store.tail(cid, 10**6)]
    return sorted(events, key=lambda e: (e.timestamp, e.conversation_id, e.seq))


def page_through(query: Callable[[str | None], Any]) -> tuple[list[Event], int]:
    """Every event a query returns, following next_cursor; and how many pages it took."""
    out: list[Event] = []
    cursor = None
    pages = 0
    while True:
        page = query(cursor)
        pages += 1
        out.extend(page.events)
        if page.next_cursor is None:
            return out, pages
        cursor = page.next_cursor
        assert pages < 10_000, "the cursor never ends"


def test_reads_across_conversations_hold_one_snapshot_and_answer_the_same(many: EventStore) -> None:
    all_events = everything(many)
    assert len(all_events) > 400 and len(many.conversation_ids()) == 40
    t0 = all_events[0].timestamp
    middle = all_events[len(all_events) // 2].timestamp
    late = all_events[3 * len(all_events) // 4].timestamp
    filters: list[tuple[dict[str, Any], Callable[[Event], bool]]] = [
        ({}, lambda e: True),
        ({"start": middle}, lambda e: e.timestamp >= middle),
        ({"start": middle, "end": late}, lambda e: middle <= e.timestamp <= late),
        ({"start": late}, lambda e: e.timestamp >= late),
        ({"types": ["agent.error"]}, lambda e: e.type == "agent.error"),
        (
            {"types": ["task.updated"], "visibility": "status"},
            lambda e: e.type == "task.updated" and e.visibility == "status",
        ),
        ({"agent_ids": ["batch"]}, lambda e: e.agent_id == "batch"),
        ({"from_seq": 5}, lambda e: e.seq >= 5),
        ({"start": t0, "levels": ["action"]}, lambda e: True),
    ]
    cids = many.conversation_ids()
    for fields, keep in filters:
        want = [e for e in all_events if keep(e)]
        assert want, fields
        for limit in (1, 7, 100, None) if fields.get("start") == late else (7, 100, None):
            answers = {}
            for mode, budget in (("open", None), ("refilled", ReadBudget(BUDGET // 2))):
                snaps = CountingSnapshots(many)
                stats = QueryStats()

                def query(
                    cursor: str | None,
                    fields: dict[str, Any] = fields,
                    limit: int | None = limit,
                    snaps: CountingSnapshots = snaps,
                    budget: ReadBudget | None = budget,
                    stats: QueryStats = stats,
                ) -> Any:
                    flt = as_filter({**fields, "limit": limit, "cursor": cursor})
                    return run_query(flt, cids, snaps, budget, stats)

                got, pages = page_through(query)
                answers[mode] = got
                assert snaps.open == 0, "a snapshot left open"
                if mode == "refilled":
                    assert stats.refilled == pages and stats.merged_open == 0
                    assert snaps.peak == 1, f"{snaps.peak} snapshots open at once"
                else:
                    assert snaps.peak == len(cids)  # the measure works: the old way holds all
            assert answers["open"] == want, (fields, limit)
            assert answers["refilled"] == want, (fields, limit)


def test_the_store_serves_wide_queries_within_its_read_budget(many: EventStore) -> None:
    snaps = CountingSnapshots(many)
    many.snapshot = snaps  # type: ignore[method-assign]
    all_events = everything(many)
    got, _ = page_through(lambda c: many.since(all_events[0].timestamp, limit=50, cursor=c))
    assert got == all_events
    got, _ = page_through(lambda c: many.by_type(["agent.error"], limit=9, cursor=c))
    assert got == [e for e in all_events if e.type == "agent.error"]
    got, _ = page_through(lambda c: many.query(visibility="status", limit=33, cursor=c))
    assert got == [e for e in all_events if e.visibility == "status"]
    assert snaps.peak <= BUDGET // 2 and snaps.open == 0
    assert many.query_stats.refilled > 0


def test_a_refilled_page_ends_at_what_it_first_saw(many: EventStore) -> None:
    """Events appended while a page is being read wait for the next page, as when every
    conversation was held open at once."""
    cids = many.conversation_ids()
    snaps = CountingSnapshots(many)
    before = everything(many)
    appended = []

    def append_then_snapshot(cid: str) -> Snapshot:
        if snaps.total == len(cids):  # the first refill: append to the very conversation
            appended.append(many.append(ev(cid)))
        return snaps(cid)

    page = run_query(as_filter({"limit": None}), cids, append_then_snapshot, ReadBudget(1), QueryStats())
    assert appended and page.events == before
    later = run_query(as_filter({"limit": None}), cids, snaps, ReadBudget(1), QueryStats())
    assert len(later.events) == len(before) + 1 and appended[0].id in {e.id for e in later.events}


def test_a_long_segment_chain_is_read_with_two_files_open(data_dir: Path) -> None:
    with EventStore(data_dir, rotate_bytes=600) as store:
        for _ in range(120):
            store.append(ev("long", data={"pad": "x" * 200}))
        with store.snapshot("long") as snap:
            assert len(snap.segments) > 30
            peak = 0
            seqs = []
            for line in snap.lines_from():
                seqs.append(line)
                peak = max(peak, sum(seg.src is not None for seg in snap.segments))
        assert len(seqs) == 120 and peak <= 2


def test_one_commit_holds_at_most_its_share_of_files(
    data_dir: Path, small_budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit of single appends to 20 conversations, with a budget of 4 files: the
    batch is written in parts, every append answered in order, never more than 4 open."""
    peak = [0]
    real = files.fdatasync

    def watching(fd: int) -> None:
        peak[0] = max(peak[0], open_logs(data_dir))
        real(fd)

    monkeypatch.setattr(files, "fdatasync", watching)
    with EventStore(data_dir) as store:
        for round_ in range(2):
            batch = requests([[ev(f"c{i:02d}")] for i in range(20)])
            store.append_requests(batch)
            assert [r.wait()[0].seq for r in batch] == [round_ + 1] * 20
        assert open_logs(data_dir) <= small_budget
        assert store.writer_stats.batches == 10  # 20 conversations, 4 at a time, twice
    assert 0 < peak[0] <= small_budget, peak[0]


def test_append_many_naming_more_conversations_than_fit_is_refused_whole(data_dir: Path, small_budget: int) -> None:
    with EventStore(data_dir) as store:
        with pytest.raises(InvalidParams, match="at most 4") as info:
            store.append_many([ev(f"c{i}") for i in range(5)])
        assert info.value.data == {"conversations": 5, "max_conversations": 4}
        assert store.conversation_ids() == [] or all(store.tail(c) == [] for c in store.conversation_ids())
        assert [a.seq for a in store.append_many([ev(f"c{i}") for i in range(4)] * 2)] == [1] * 4 + [2] * 4
        batch = requests([[ev("c0")], [ev(f"d{i}") for i in range(6)], [ev("c1"), ev("c9")]])
        store.append_requests(batch)
        assert batch[0].wait()[0].seq == 3 and isinstance(batch[1].error, InvalidParams)
        assert [a.seq for a in batch[2].outcome()] == [3, 1]
        assert not any(c.startswith("d") for c in store.conversation_ids())


def test_loading_many_conversations_keeps_few_files_open(data_dir: Path, small_budget: int) -> None:
    with EventStore(data_dir) as store:
        commit(store, [[ev(f"c{i:02d}")] for i in range(30)])
    with EventStore(data_dir) as store:
        store.load()
        assert open_logs(data_dir) <= small_budget
        assert len(store.conversations()) == 30 and open_logs(data_dir) <= small_budget


class CountingChecks:
    """Counts the writer's look at each conversation's file (the stat of a miss)."""

    def __init__(self, store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
        writer = store._writer
        real = writer._changed_on_disk
        self.calls = 0

        def counting(conv: Any) -> bool:
            self.calls += 1
            return real(conv)

        monkeypatch.setattr(writer, "_changed_on_disk", counting)


@pytest.fixture
def indexed(data_dir: Path) -> Iterator[EventStore]:
    with EventStore(data_dir) as store:
        commit(store, [[ev(f"c{i:03d}")] for i in range(200)])
        store.load()
        yield store


def test_a_miss_looks_at_each_file_once_and_reads_only_changed_ones(
    indexed: EventStore, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = CountingChecks(indexed, monkeypatch)
    assert indexed.get(str(uuid.uuid4())) is None
    assert checks.calls == 200 and indexed.lookup_stats.reindexed == 0
    with EventStore(data_dir) as other:  # another process's writes: found, by reading them alone
        ack = other.append(ev("c007"))
    assert indexed.get(ack.id) is not None and indexed.get(ack.id).seq == 2
    assert checks.calls == 200 + 200 + 1  # one more for the changed file, under the writer lock
    assert indexed.lookup_stats.reindexed == 1


def test_what_this_store_writes_is_found_without_looking_at_files(
    indexed: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = CountingChecks(indexed, monkeypatch)
    passes = indexed.lookup_stats.catch_ups
    ack = indexed.append(ev("brand-new"))  # a conversation born after loading
    assert indexed.get(ack.id).conversation_id == "brand-new"
    assert checks.calls == 0 and indexed.lookup_stats.catch_ups == passes


def test_causality_on_thousands_of_unknown_ids_looks_once(indexed: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ghosts = [str(uuid.uuid4()) for _ in range(3000)]
    parent = indexed.append(ev("c001"))
    root = indexed.append(ev("c002", caused_by=[*ghosts[:1500], parent.id, *ghosts[1500:]]))
    child = indexed.append(ev("c003", caused_by=[root.id, *ghosts[:10]]))
    checks = CountingChecks(indexed, monkeypatch)
    found = indexed.causality(root.id)
    assert found is not None
    assert [e.id for e in found.upstream] == [parent.id] and [e.id for e in found.downstream] == [child.id]
    assert found.missing == ghosts[:1000] and found.truncated  # at most max_events reported
    assert checks.calls <= 200 + 3, f"{checks.calls} file checks for one call"
    small = indexed.causality(child.id, max_events=5)
    assert small is not None and small.missing == ghosts[:5] and small.truncated


def test_causality_stops_at_max_events_in_a_wide_fan(indexed: EventStore) -> None:
    root = indexed.append(ev("fan"))
    kids = indexed.append_many([ev("fan", caused_by=[root.id]) for _ in range(30)])
    c = indexed.causality(root.id, max_events=10)
    assert c is not None and len(c.downstream) == 10 and c.truncated
    assert {e.id for e in c.downstream} <= {k.id for k in kids}
    exact = indexed.causality(root.id, max_events=30)
    assert exact is not None and len(exact.downstream) == 30 and not exact.truncated


def test_one_unreadable_conversation_does_not_fail_reads_across_the_others(
    store: EventStore, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = store.append(ev("a"))
    store.append(ev("b"))
    (data_dir / "logs" / "bad.jsonl").mkdir()  # not a log file: refused for itself alone
    monkeypatch.setattr(store, "conversation_ids", lambda: ["a", "b", "bad"])  # as if listed
    assert [e.conversation_id for e in store.since(first.timestamp).events] == ["a", "b"]
    cids = store.conversation_ids()
    refilled = run_query(as_filter({"start": first.timestamp}), cids, store.snapshot, ReadBudget(1), QueryStats())
    assert [e.conversation_id for e in refilled.events] == ["a", "b"]
    assert [c.conversation_id for c in store.conversations()] == ["a", "b"]
    with pytest.raises((OSError, SidecarError)):
        store.query(conversation_id="bad")


@pytest.mark.parametrize("budget", [None, 1])  # every conversation open at once, and one at a time
def test_pages_end_early_at_max_read_bytes_and_cursors_get_everything(tmp_path: Path, budget: int | None) -> None:
    with EventStore(tmp_path / "d", clock=ManualClock()) as store:
        for i in range(60):
            store.append({**ev(f"c{i % 3}"), "data": {"t": "x" * random.choice([100, 900])}})
        everything = store.query(limit=None).events
        store.max_read_bytes = 4000
        if budget is not None:
            store._read_budget = ReadBudget(budget)
        for flt in ({}, {"conversation_id": "c1"}):
            got, cursor, pages = [], None, 0
            while True:
                page = store.query({**flt, "cursor": cursor, "limit": 1000})
                encoded = sum(len(msgspec.json.encode(e)) + 1 for e in page.events)
                assert page.events and (encoded <= 4000 or len(page.events) == 1)
                got += page.events
                pages += 1
                if (cursor := page.next_cursor) is None:
                    break
            expected = [e for e in everything if flt.get("conversation_id") in (None, e.conversation_id)]
            assert got == expected and pages > 1
        newest = store.tail("c1", 20)
        assert 0 < len(newest) < 20 and [e.seq for e in newest] == list(range(21 - len(newest), 21))
        assert sum(len(msgspec.json.encode(e)) + 1 for e in newest) <= 4000
