"""The write-ahead journal: one fsync per batch, checkpoints, and replay after a power cut.

A power cut is simulated the only way a test can: the writer is killed (its journal is left
behind, unlocked) and the conversation file is cut back to lose lines that were only in the
page cache. Replay must put back every acknowledged line, byte for byte.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sidecar.log import EventStore
from sidecar.log import files as log_files
from sidecar.log.timestamps import format_timestamp

WRITER = str(Path(__file__).with_name("writer_proc.py"))


def ev(cid: str = "c1") -> dict:
    return {"conversation_id": cid, "type": "test.event", "data": {"pad": "x" * 40}}


def placed_line(cid: str, seq: int, timestamp: str) -> dict:
    """A whole event as a writer places it on disk, as another process (or a journal) holds it."""
    return {
        "id": f"0192a3b4-0000-7000-8000-{seq:012d}",
        "seq": seq,
        "timestamp": timestamp,
        "conversation_id": cid,
        "type": "a.b",
        "visibility": "internal",
        "level": "action",
        "caused_by": [],
        "data": {},
    }


def journals(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "journal").glob("*.wal"))


def start_writer(python: str, env: dict, data_dir: Path, cid: str, tag: str) -> subprocess.Popen:
    return subprocess.Popen([python, WRITER, str(data_dir), cid, "0", tag], stdout=subprocess.PIPE, env=env)


def read_acks(proc: subprocess.Popen, count: int) -> dict[str, int]:
    acks = {}
    assert proc.stdout is not None
    for _ in range(count):
        line = proc.stdout.readline().decode()
        assert line.endswith("\n"), "writer died early"
        eid, seq = line.split()
        acks[eid] = int(seq)
    return acks


def kill(proc: subprocess.Popen) -> dict[str, int]:
    proc.send_signal(signal.SIGKILL)
    assert proc.stdout is not None
    rest = proc.stdout.read().decode()
    proc.wait(timeout=30)
    whole = [line.split() for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    return {eid: int(seq) for eid, seq in whole}


def test_one_fsync_per_batch_across_conversations(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = log_files.fdatasync
    monkeypatch.setattr(log_files, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    for cid in "abcdefgh":  # first touch of each file: made durable once
        store.append(ev(cid))
    calls.clear()
    store.append_many([ev(cid) for cid in "abcdefgh"])
    assert len(calls) == 1


def test_close_checkpoints_and_removes_the_journal(data_dir: Path) -> None:
    with EventStore(data_dir) as s:
        s.append(ev())
        assert len(journals(data_dir)) == 1
    assert journals(data_dir) == []


def test_journal_is_emptied_when_full(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = log_files.fdatasync
    monkeypatch.setattr(log_files, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    with EventStore(data_dir, journal_bytes=2000) as s:
        for _ in range(30):
            s.append_many([ev("a"), ev("b")])
        assert s._writer.journal.size < 2000 + 400
        assert len(journals(data_dir)) == 1
        assert s._writer.stats.checkpoints >= 3
        assert s._writer.stats.checkpoints * 2 <= len(synced)  # both files synced at each checkpoint


def test_power_cut_is_repaired_from_the_journal(data_dir: Path, python: str, python_env: dict) -> None:
    EventStore(data_dir).close()
    proc = start_writer(python, python_env, data_dir, "c1", "w")
    acked = read_acks(proc, 150)
    acked.update(kill(proc))
    (orphan,) = journals(data_dir)
    path = data_dir / "logs" / "c1.jsonl"
    before = path.read_bytes()
    lines = before.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:40]))  # the page cache held the rest, and the power went
    with EventStore(data_dir) as s:
        for eid, seq in acked.items():
            found = s.get(eid)
            assert found is not None and found.seq == seq, f"acknowledged event {eid} lost"
    after = path.read_bytes()
    assert before.startswith(after) and len(after.splitlines()) >= len(acked)
    assert not orphan.exists()


def test_two_dead_journals_replay_in_seq_order(data_dir: Path, python: str, python_env: dict) -> None:
    EventStore(data_dir).close()
    procs = [start_writer(python, python_env, data_dir, "shared", f"w{i}") for i in range(2)]
    acked: dict[str, int] = {}
    for p in procs:
        acked.update(read_acks(p, 100))
    for p in procs:
        acked.update(kill(p))
    assert len(journals(data_dir)) == 2
    path = data_dir / "logs" / "shared.jsonl"
    before = path.read_bytes()
    path.write_bytes(b"".join(before.splitlines(keepends=True)[:10]))
    with EventStore(data_dir) as s:
        new = s.append(ev("shared")).seq
    # The journals give back every acknowledged event. A batch that reached the file but not its
    # journal when its writer was killed was never acknowledged: it may be cut off with the rest,
    # unless the other writer built on it (then its journal has a copy).
    assert max(acked.values()) < new <= len(before.splitlines()) + 1
    seqs = [json.loads(line)["seq"] for line in path.read_bytes().splitlines()]
    assert seqs == list(range(1, len(seqs) + 1))
    got = {json.loads(line)["id"]: json.loads(line)["seq"] for line in path.read_bytes().splitlines()}
    assert all(got.get(eid) == seq for eid, seq in acked.items())


def test_lines_another_writer_never_journaled_are_copied_into_ours(data_dir: Path) -> None:
    path = data_dir / "logs" / "shared.jsonl"
    with EventStore(data_dir) as s:
        s.append(ev("shared"))
        cut = path.stat().st_size
        # A writer killed between its file and its journal: its line is in the page cache only.
        stranger = placed_line("shared", 2, format_timestamp(time.time_ns()))
        with path.open("ab") as f:
            f.write(json.dumps(stranger).encode() + b"\n")
        assert s.append(ev("shared")).seq == 3  # acknowledged, and built on seq 2
        s._writer.journal.detach()  # the power goes before a checkpoint: the journal is left
    path.write_bytes(path.read_bytes()[:cut])  # and the page cache with it
    with EventStore(data_dir) as again:
        assert [e.seq for e in again.tail("shared")] == [1, 2, 3]
        assert again.get(stranger["id"]) is not None


def test_a_live_writers_journal_is_left_alone(data_dir: Path) -> None:
    with EventStore(data_dir) as a:
        a.append(ev())
        (wal,) = journals(data_dir)
        with EventStore(data_dir) as b:
            assert b.recover() == 0
            assert wal.exists()
        a.append(ev())
    assert journals(data_dir) == []


def test_torn_journal_tail_is_ignored(data_dir: Path) -> None:
    (data_dir / "journal").mkdir(parents=True)
    good = placed_line("c1", 1, "2026-11-23T10:00:00.000000Z")
    (data_dir / "journal" / "999999-dead.wal").write_bytes(json.dumps(good).encode() + b'\n{"id": "torn')
    with EventStore(data_dir) as s:
        assert [e.id for e in s.tail("c1")] == [good["id"]]
        assert s.append(ev()).seq == 2


def test_a_journal_whose_files_cannot_be_synced_is_kept_for_replay(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EventStore(data_dir)
    store.append(ev("a"))
    (first,) = journals(data_dir)
    calls: list[int] = []

    def failing(fd: int) -> None:
        calls.append(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(log_files, "fdatasync", failing)
    with pytest.raises(Exception, match="EIO"):
        store.append(ev("a"))
    assert len(calls) == len(set(calls))  # the journal and the file each tried once
    monkeypatch.undo()
    assert store.append(ev("a")).seq == 2  # a new journal takes over
    assert first.exists() and len(journals(data_dir)) == 2
    store.close()
    assert journals(data_dir) == [first]  # ours retired; the detached one waits for replay
    with EventStore(data_dir) as again:
        assert [e.seq for e in again.tail("a")] == [1, 2]
    assert journals(data_dir) == []
