"""Appending: seqs, timestamps, idempotent ids, preconditions, group commit, size caps."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest

from sidecar.clock import ManualClock
from sidecar.errors import ConflictError, InvalidParams
from sidecar.log import EventStore
from sidecar.log import files as log_files


def ev(cid: str = "c1", type_: str = "agent.progress", **kw: object) -> dict:
    return {"conversation_id": cid, "type": type_, **kw}


def lines_of(data_dir: Path, cid: str) -> list[dict]:
    return [json.loads(line) for line in (data_dir / "logs" / f"{cid}.jsonl").read_text().splitlines()]


def test_seqs_start_at_one_per_conversation(store: EventStore, data_dir: Path) -> None:
    assert [store.append(ev("a")).seq for _ in range(3)] == [1, 2, 3]
    assert store.append(ev("b")).seq == 1
    assert [line["seq"] for line in lines_of(data_dir, "a")] == [1, 2, 3]


def test_answer_matches_the_line_on_disk(store: EventStore, data_dir: Path) -> None:
    ack = store.append(ev(agent_id="coder", task_id="t1", turn=2, data={"pct": 50}))
    (line,) = lines_of(data_dir, "c1")
    assert (line["id"], line["seq"], line["timestamp"]) == (ack.id, ack.seq, ack.timestamp)
    assert line["agent_id"] == "coder" and line["turn"] == 2 and line["data"] == {"pct": 50}


def test_timestamps_never_go_backwards_when_the_clock_does(store: EventStore, clock: ManualClock) -> None:
    first = store.append(ev())
    clock.set_wall(clock.now_ns() - 3_600 * 10**9)  # an NTP step back of an hour
    second = store.append(ev())
    assert second.timestamp == first.timestamp
    clock.advance(7_200)
    assert store.append(ev()).timestamp > first.timestamp


def test_repeated_id_returns_the_first_answer(store: EventStore, data_dir: Path) -> None:
    eid = str(uuid.uuid4())
    first = store.append(ev(id=eid, data={"n": 1}))
    again = store.append(ev(id=eid, data={"n": 2}))
    assert (again.id, again.seq, again.timestamp) == (first.id, first.seq, first.timestamp)
    assert again.duplicate and not first.duplicate
    assert [line["data"]["n"] for line in lines_of(data_dir, "c1")] == [1]


def test_repeated_id_within_one_batch(store: EventStore) -> None:
    eid = str(uuid.uuid4())
    a, b = store.append_many([ev(id=eid), ev(id=eid.upper())])
    assert (a.seq, b.seq, b.duplicate) == (1, 1, True)
    assert len(store.tail("c1", 10)) == 1


def test_repeated_id_is_found_after_reopening(data_dir: Path, clock: ManualClock) -> None:
    eid = str(uuid.uuid4())
    with EventStore(data_dir, clock=clock) as s:
        s.append(ev())
        first = s.append(ev(id=eid))
        s.append(ev())
    with EventStore(data_dir, clock=clock) as s:
        again = s.append(ev(id=eid))
        assert (again.seq, again.duplicate) == (first.seq, True)
        assert s.append(ev()).seq == 4


def test_same_id_in_another_conversation_is_a_new_event(store: EventStore) -> None:
    eid = str(uuid.uuid4())
    store.append(ev("a", id=eid))
    other = store.append(ev("b", id=eid))
    assert not other.duplicate and other.seq == 1


def test_expected_seq(store: EventStore) -> None:
    store.append(ev(), expected_seq=0)
    store.append(ev(), expected_seq=1)
    with pytest.raises(ConflictError) as info:
        store.append(ev(), expected_seq=1)
    assert info.value.data["last_seq"] == 2 and info.value.code == -32001
    assert len(store.tail("c1", 10)) == 2


def test_duplicate_wins_over_stale_expected_seq(store: EventStore) -> None:
    eid = str(uuid.uuid4())
    first = store.append(ev(id=eid), expected_seq=0)
    retry = store.append(ev(id=eid), expected_seq=0)  # a retry after a lost answer
    assert retry.duplicate and retry.seq == first.seq


def test_append_many_is_all_or_nothing(store: EventStore) -> None:
    store.append(ev("a"))
    with pytest.raises(ConflictError):
        store.append_many([ev("a"), ev("b"), ev("a", expected_seq=99)])
    assert store.tail("b") == [] and len(store.tail("a")) == 1
    with pytest.raises(InvalidParams):
        store.append_many([ev("a"), ev("a", type_="Bad Type")])
    assert len(store.tail("a")) == 1
    acks = store.append_many([ev("a"), ev("b"), ev("a")])
    assert [(a.seq) for a in acks] == [2, 1, 3]


def test_event_size_cap(data_dir: Path) -> None:
    with EventStore(data_dir, max_event_bytes=1024) as s:
        s.append(ev(data={"x": "y" * 500}))
        with pytest.raises(InvalidParams, match="over the limit of 1024"):
            s.append(ev(data={"x": "y" * 2000}))
        assert s.append(ev()).seq == 2


def test_default_cap_is_one_mebibyte(store: EventStore) -> None:
    store.append(ev(data={"x": "y" * (1024 * 1024 - 400)}))
    with pytest.raises(InvalidParams, match="1048576"):
        store.append(ev(data={"x": "y" * (1024 * 1024)}))


def test_concurrent_appends_share_fsyncs(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: 16 threads x 50 appends need far fewer fdatasyncs than 800."""
    calls = []
    real = log_files.fdatasync
    gate = threading.Event()

    def counting(fd: int) -> None:
        calls.append(fd)
        gate.wait()  # hold the first flush until every thread has queued behind it
        real(fd)

    monkeypatch.setattr(log_files, "fdatasync", counting)
    barrier = threading.Barrier(17)
    results: list[list[int]] = [[] for _ in range(16)]

    def worker(i: int) -> None:
        barrier.wait()
        for _ in range(50):
            results[i].append(store.append(ev()).seq)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    barrier.wait()
    while not calls:  # the first leader is inside its fdatasync
        threading.Event().wait(0.001)
    gate.set()
    for t in threads:
        t.join()
    seqs = sorted(s for r in results for s in r)
    assert seqs == list(range(1, 801))
    assert len(calls) < 400, f"{len(calls)} fsyncs for 800 appends"
    for r in results:
        assert r == sorted(r)  # each caller sees its own appends in order


def test_closed_store_refuses(data_dir: Path) -> None:
    s = EventStore(data_dir)
    s.close()
    with pytest.raises(RuntimeError, match="^the event store is closed$"):
        s.append(ev())
