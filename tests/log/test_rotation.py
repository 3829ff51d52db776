"""Segments: rotation into the archive, and queries that span it without the caller knowing."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from sidecar.clock import ManualClock
from sidecar.log import EventStore


def ev(cid: str = "c1", **kw: object) -> dict:
    return {"conversation_id": cid, "type": "agent.progress", "data": {"pad": "x" * 200}, **kw}


def archived(data_dir: Path, cid: str = "c1") -> list[Path]:
    return sorted((data_dir / "archive").glob(f"{cid}.*.jsonl"))


def all_seqs(data_dir: Path, cid: str = "c1") -> list[int]:
    paths = archived(data_dir, cid) + [data_dir / "logs" / f"{cid}.jsonl"]
    return [json.loads(line)["seq"] for p in paths if p.exists() for line in p.read_text().splitlines()]


def test_segments_rotate_with_plain_names(data_dir: Path, clock: ManualClock) -> None:
    with EventStore(data_dir, rotate_bytes=2000, clock=clock) as s:
        for _ in range(30):
            s.append(ev())
            clock.advance(1)
        segs = archived(data_dir)
        assert len(segs) >= 3
        names = [p.name for p in segs]
        assert names == sorted(names)
        assert names[0].startswith("c1.000000000001-")
        for prev, nxt in zip(segs, segs[1:]):  # contiguous: each starts where the last ended
            assert int(nxt.name.split(".")[1].split("-")[0]) == int(prev.name.split("-")[1].split(".")[0]) + 1
        for p in segs:
            assert p.stat().st_size > 2000
    assert all_seqs(data_dir) == list(range(1, 31))


def test_queries_span_archive_and_active(data_dir: Path, clock: ManualClock) -> None:
    with EventStore(data_dir, rotate_bytes=2000, clock=clock) as s:
        acks = []
        for _ in range(30):
            acks.append(s.append(ev()))
            clock.advance(1)
        assert [e.seq for e in s.tail("c1", 25)] == list(range(6, 31))
        assert s.get(acks[0].id).seq == 1
        assert [e.seq for e in s.since(acks[3].timestamp).events] == list(range(4, 31))
        assert [e.seq for e in s.query(start=acks[2].timestamp, end=acks[5].timestamp).events] == [3, 4, 5, 6]
        page = s.since(acks[0].timestamp, limit=7)
        assert [e.seq for e in page.events] == list(range(1, 8))
        (info,) = s.conversations()
        assert info.event_count == 30
        assert (info.first_timestamp, info.last_timestamp) == (acks[0].timestamp, acks[-1].timestamp)


def test_reopen_after_rotation_continues_the_seqs(data_dir: Path) -> None:
    eid = str(uuid.uuid4())
    with EventStore(data_dir, rotate_bytes=1500) as s:
        s.append(ev(id=eid))
        for _ in range(20):
            s.append(ev())
    (data_dir / "logs" / "c1.jsonl").unlink(missing_ok=True)  # as if the rotation had just happened
    with EventStore(data_dir, rotate_bytes=1500) as s:
        s.load()
        assert not s.damaged()
        last = s.tail("c1", 1)[0].seq
        assert s.append(ev()).seq == last + 1
        assert s.append(ev(id=eid)).duplicate
    assert all_seqs(data_dir) == list(range(1, last + 2))


def test_rotation_by_another_writer_is_followed(data_dir: Path) -> None:
    a = EventStore(data_dir, rotate_bytes=1500)
    b = EventStore(data_dir, rotate_bytes=10**9)
    try:
        eid = str(uuid.uuid4())
        b.append(ev(id=eid))  # b indexes c1 while it is one segment
        for _ in range(12):
            a.append(ev())  # a rotates it away underneath b
        assert archived(data_dir)
        assert b.append(ev(id=eid)).duplicate  # b found its id again in the archive
        for i in range(10):
            (a if i % 2 else b).append(ev())
    finally:
        a.close()
        b.close()
    assert all_seqs(data_dir) == list(range(1, 24))
