"""The archive keeper: retention keeps exactly what the policy says, compressed segments read
like plain ones, seqs are never reused, tasks survive, and a kill -9 at any step loses
nothing retained."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from sidecar.clock import ManualClock
from sidecar.log import EventStore
from sidecar.log.keeper import DAY_NS, ArchiveKeeper, RetentionPolicy
from sidecar.log.segments import list_archive
from sidecar.log.timestamps import format_timestamp
from sidecar.tasks.history import rebuild
from sidecar.tasks.model import Task
from sidecar.tasks.retention import carry_forward

ROTATE = 2000
HERE = Path(__file__).parent


def ev(i: int, cid: str = "c1", **kw: Any) -> dict[str, Any]:
    return {
        "conversation_id": cid,
        "type": "agent.progress",
        "agent_id": f"a{i % 3}",
        "data": {"i": i, "pad": "x" * 150},
        **kw,
    }


def task_event(task_id: str, version: int, cid: str = "c1", status: str = "pending") -> dict[str, Any]:
    task = Task(
        id=task_id, type="t", status=status, created_at="t0", updated_at="t1", conversation_id=cid, version=version
    )  # type: ignore[arg-type]
    return {
        "conversation_id": cid,
        "type": "task.updated",
        "task_id": task_id,
        "data": {"task": msgspec.to_builtins(task)},
    }


def fill(store: EventStore, n: int, cid: str = "c1") -> None:
    for i in range(n):
        store.append(ev(i, cid))


def seqs(store: EventStore, cid: str = "c1") -> list[int]:
    return [e.seq for e in store.query(conversation_id=cid, limit=None).events]


def active_size(data_dir: Path, cid: str = "c1") -> int:
    path = data_dir / "logs" / f"{cid}.jsonl"
    return path.stat().st_size if path.exists() else 0


def disk_bytes(data_dir: Path, cid: str = "c1") -> int:
    files = list((data_dir / "archive").glob(f"{cid}.0*.jsonl*")) + [data_dir / "logs" / f"{cid}.jsonl"]
    return sum(p.stat().st_size for p in files if p.exists())


def keeper(store: EventStore, **policy: Any) -> ArchiveKeeper:
    return ArchiveKeeper(store.paths, RetentionPolicy(**policy), before_drop=functools.partial(carry_forward, store))


def test_retain_bytes_keeps_exactly_the_newest_segments_that_fit(data_dir: Path) -> None:
    with EventStore(data_dir, rotate_bytes=ROTATE) as store:
        fill(store, 120)
        before, _ = list_archive(store.paths.archive_dir)
        sizes = [os.path.getsize(s.path) for s in before["c1"]]
        active = active_size(data_dir)
        limit = 10_000
        keeper(store, retain_bytes=limit).run_once()
        after, dropped = list_archive(store.paths.archive_dir)
        kept = len(after["c1"])
        # Exactly: what is kept fits, and keeping one more segment would not have.
        assert active + sum(sizes[-kept:]) <= limit < active + sum(sizes[-kept - 1 :])
        assert disk_bytes(data_dir) <= limit
        first = after["c1"][0].first_seq
        assert dropped["c1"] == first - 1 and seqs(store) == list(range(first, 121))
        info = {c.conversation_id: c for c in store.conversations()}["c1"]
        assert (info.first_seq, info.last_seq, info.event_count) == (first, 120, 121 - first)


def test_retain_days_drops_exactly_the_segments_whose_newest_event_is_older(data_dir: Path) -> None:
    clock = ManualClock()
    with EventStore(data_dir, rotate_bytes=ROTATE, clock=clock) as store:
        for i in range(100):
            store.append(ev(i))
            clock.advance(3600)  # an event an hour: about four days in all
        cutoff = format_timestamp(clock.now_ns() - int(1.5 * DAY_NS))
        segs, _ = list_archive(store.paths.archive_dir)
        newest = {
            s.last_seq: e.timestamp
            for s in segs["c1"]
            for e in store.query(conversation_id="c1", limit=None).events
            if e.seq == s.last_seq
        }
        expected = [s for s in segs["c1"] if newest[s.last_seq] >= cutoff]
        k = ArchiveKeeper(store.paths, RetentionPolicy(retain_days=1.5), clock=clock)
        k.run_once()
        kept, _ = list_archive(store.paths.archive_dir)
        assert kept["c1"] == expected and 0 < k.stats.dropped_segments < len(segs["c1"])
        assert seqs(store)[0] == expected[0].first_seq


def test_seqs_are_never_reused_when_every_sealed_segment_is_dropped(data_dir: Path) -> None:
    with EventStore(data_dir, rotate_bytes=ROTATE) as store:
        fill(store, 60)
        while active_size(data_dir):
            store.append(ev(0))  # until a rotation leaves the active segment empty
        last = store.conversations()[0].last_seq
        keeper(store, retain_bytes=1).run_once()
        assert list_archive(store.paths.archive_dir)[0] == {} and seqs(store) == []
        info = store.conversations()[0]
        assert (info.first_seq, info.last_seq, info.event_count) == (last + 1, last, 0)
        assert store.append(ev(1)).seq == last + 1
    with EventStore(data_dir, rotate_bytes=ROTATE) as store:  # and after a restart
        store.load()
        assert store.damaged() == {} and store.append(ev(2)).seq == last + 2


def test_a_missing_first_segment_is_still_damage_without_a_drop_marker(data_dir: Path) -> None:
    with EventStore(data_dir, rotate_bytes=ROTATE) as store:
        fill(store, 40)
    first = sorted((data_dir / "archive").glob("c1.*.jsonl"))[0]
    first.unlink()
    with EventStore(data_dir, rotate_bytes=ROTATE) as store:
        store.load()
        assert "seq gap" in store.damaged()["c1"]


def test_every_read_works_across_compressed_segments(data_dir: Path) -> None:
    with EventStore(data_dir, rotate_bytes=ROTATE) as store:
        ids = [store.append(ev(i)).id for i in range(80)]
        child = store.append(ev(80, caused_by=[ids[3]]))
        plain = store.query(conversation_id="c1", limit=None).events
        k = keeper(store, compress=True)
        k.run_once()
        assert k.stats.compressed_segments >= 5 and k.stats.compressed_bytes < k.stats.plain_bytes
        assert not list((data_dir / "archive").glob("c1.*.jsonl"))  # only .jsonl.zst left
        assert store.query(conversation_id="c1", limit=None).events == plain
        assert [store.get(i).seq for i in ids[::7]] == list(range(1, 81, 7))
        assert store.tail("c1", 100) == plain[-81:]
        page = store.query(conversation_id="c1", start=plain[10].timestamp, end=plain[20].timestamp, limit=None)
        assert [e.seq for e in page.events] == list(range(11, 22))
        found = store.causality(child.id)
        assert found is not None and [e.id for e in found.upstream] == [ids[3]]
        assert store.append(ev(1, id=ids[5])).duplicate  # idempotence reads compressed lines too
    with EventStore(data_dir, rotate_bytes=ROTATE) as store:  # a restart indexes them
        store.load()
        assert store.damaged() == {} and store.get(ids[0]) is not None and store.append(ev(2)).seq == 82


def test_a_damaged_compressed_segment_is_damage_for_its_conversation_only(data_dir: Path) -> None:
    with EventStore(data_dir, rotate_bytes=ROTATE) as store:
        fill(store, 40)
        fill(store, 3, cid="c2")
        keeper(store, compress=True).run_once()
    seg = sorted((data_dir / "archive").glob("c1.*.jsonl.zst"))[0]
    raw = bytearray(seg.read_bytes())
    raw[-5] ^= 0xFF  # the seek table's footer
    seg.write_bytes(bytes(raw))
    with EventStore(data_dir, rotate_bytes=ROTATE) as store:
        store.load()
        assert set(store.damaged()) == {"c1"}
        assert seqs(store, "c2") == [1, 2, 3]


def test_tasks_whose_newest_version_is_dropped_are_carried_so_a_rebuild_is_the_same(data_dir: Path) -> None:
    with EventStore(data_dir, rotate_bytes=ROTATE) as store:
        store.append(task_event("old", 1))
        store.append(task_event("moved-on", 1))
        store.append(task_event("old", 2, status="done"))
        fill(store, 40)
        kept_seq = store.append(task_event("moved-on", 2)).seq  # its newest version is kept: not carried
        fill(store, 20)
        before = rebuild(store).tasks
        segs, _ = list_archive(store.paths.archive_dir)
        keep = [s for s in segs["c1"] if s.last_seq >= kept_seq]  # the policy keeps moved-on's segment
        k = keeper(store, retain_bytes=active_size(data_dir) + sum(os.path.getsize(s.path) for s in keep))
        k.run_once()
        assert k.stats.dropped_segments > 0
        carried = store.query(conversation_id="c1", types=["task.carried"], limit=None).events
        assert [(e.task_id, e.data["task"]["version"]) for e in carried] == [("old", 2)]
        assert rebuild(store).tasks == before
        k.run_once()  # the carried event grew the log: this pass drops moved-on's segment too
        carried = store.query(conversation_id="c1", types=["task.carried"], limit=None).events
        assert sorted((e.task_id, e.data["task"]["version"]) for e in carried) == [("moved-on", 2), ("old", 2)]
        assert rebuild(store).tasks == before


STEPS_DROP = ["carried", "marked", "dropped"]
STEPS_COMPRESS = ["compressed", "plain_removed"]


@pytest.mark.parametrize(
    ("compress", "stop_at"), [(False, s) for s in STEPS_DROP] + [(True, s) for s in STEPS_COMPRESS]
)
@pytest.mark.parametrize("nth", [1, 2])
def test_a_kill_9_at_any_step_loses_no_retained_event(data_dir: Path, compress: bool, stop_at: str, nth: int) -> None:
    """Killed at the nth time it reaches a step (two conversations, so each step comes twice)."""
    cids = ["c1", "c2"]
    with EventStore(data_dir, rotate_bytes=ROTATE) as store:
        for cid in cids:
            store.append(task_event(f"t-{cid}", 1, cid=cid))
            fill(store, 100, cid)
        expected_all = {cid: store.query(conversation_id=cid, limit=None).events for cid in cids}
        graph = rebuild(store).tasks
    retain = 8000
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "keeper_proc.py"), str(data_dir), str(retain), "1" if compress else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    seen = 0
    try:
        while True:
            step = proc.stdout.readline().strip()
            assert step and step != "done", f"never reached {stop_at} #{nth}"
            seen += step == stop_at
            if seen == nth:
                proc.send_signal(signal.SIGKILL)
                break
            proc.stdin.write("\n")
            proc.stdin.flush()
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with EventStore(data_dir, rotate_bytes=ROTATE) as store:
        store.load()
        assert store.damaged() == {}
        for cid in cids:
            events = store.query(conversation_id=cid, limit=None).events
            got = [e for e in events if e.type != "task.carried"]
            # What is left is a suffix of what was written: nothing kept is lost, nothing repeats.
            assert got == expected_all[cid][len(expected_all[cid]) - len(got) :]
            assert [e.seq for e in events] == list(range(events[0].seq, events[-1].seq + 1))
        assert rebuild(store).tasks == graph
        # The next pass finishes the work: the same state as a pass never interrupted.
        keeper(store, retain_bytes=retain, compress=compress).run_once()
        assert [p.name for p in (data_dir / "archive").iterdir() if p.name.endswith(".tmp")] == []
        for cid in cids:
            assert disk_bytes(data_dir, cid) <= retain
            assert not compress or not list((data_dir / "archive").glob(f"{cid}.*.jsonl"))
            assert store.append(ev(0, cid)).seq == expected_all[cid][-1].seq + 1 + _carried(store, cid)
        assert rebuild(store).tasks == graph


def _carried(store: EventStore, cid: str) -> int:
    return len(store.query(conversation_id=cid, types=["task.carried"], limit=None).events)


def test_a_stale_temporary_file_is_removed_and_compression_goes_on(data_dir: Path) -> None:
    with EventStore(data_dir, rotate_bytes=ROTATE) as store:
        fill(store, 30)
        seg = sorted((data_dir / "archive").glob("c1.*.jsonl"))[0]
        Path(str(seg) + ".zst.tmp").write_bytes(b"half a frame")
        k = keeper(store, compress=True)
        k.run_once()
        assert k.stats.failures == 0 and Path(str(seg) + ".zst").exists() and not seg.exists()
        assert seqs(store) == list(range(1, 31))
