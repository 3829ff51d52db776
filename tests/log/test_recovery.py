"""Crashes, torn appends, damage, and several processes sharing one data directory."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from sidecar.errors import CorruptLogError, StorageError
from sidecar.log import EventStore

WRITER = str(Path(__file__).with_name("writer_proc.py"))


def ev(cid: str = "c1", **kw: object) -> dict:
    return {"conversation_id": cid, "type": "test.event", **kw}


def log_file(data_dir: Path, cid: str = "c1") -> Path:
    return data_dir / "logs" / f"{cid}.jsonl"


def torn_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "archive").glob("*.torn"))


def check_log(path: Path) -> list[dict]:
    """Every line parses and seqs run 1..n with no gap."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    events = [json.loads(line) for line in raw.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    return events


@pytest.mark.parametrize(
    "garbage",
    [b'{"id":"abc","seq":4,"times', b'{"broken json\n', b"\x00\x00\x00\x00", b"\n"],
    ids=["unterminated", "unparseable-line", "zeros", "blank-line"],
)
def test_torn_tail_written_by_hand_is_repaired_at_open(data_dir: Path, garbage: bytes) -> None:
    with EventStore(data_dir) as s:
        for _ in range(3):
            s.append(ev())
    good = log_file(data_dir).read_bytes()
    with open(log_file(data_dir), "ab") as f:
        f.write(garbage)
    with EventStore(data_dir) as s:
        assert [e.seq for e in s.tail("c1")] == [1, 2, 3]  # readers skip the torn part
        assert s.append(ev()).seq == 4
    assert log_file(data_dir).read_bytes().startswith(good)
    check_log(log_file(data_dir))
    (kept,) = torn_files(data_dir)
    assert kept.read_bytes() == garbage


def test_torn_tail_is_repaired_by_the_eager_load_too(data_dir: Path) -> None:
    with EventStore(data_dir) as s:
        s.append(ev())
    with open(log_file(data_dir), "ab") as f:
        f.write(b'{"id":')
    with EventStore(data_dir) as s:
        s.load()
        assert torn_files(data_dir)
        assert not s.damaged()
    check_log(log_file(data_dir))


def test_torn_tail_left_by_a_crash_while_we_run(store: EventStore, data_dir: Path) -> None:
    store.append(ev())
    store.append(ev())
    with open(log_file(data_dir), "ab") as f:  # another writer died mid-line
        f.write(b'{"id":"' + str(uuid.uuid4()).encode() + b'","seq":3,')
    assert store.append(ev()).seq == 3
    check_log(log_file(data_dir))
    assert len(torn_files(data_dir)) == 1


def test_bad_line_in_the_middle_refuses_writes_until_repaired(data_dir: Path) -> None:
    with EventStore(data_dir) as s:
        for _ in range(4):
            s.append(ev())
    lines = log_file(data_dir).read_bytes().splitlines(keepends=True)
    damaged = lines[:2] + [b"this is not json\n"] + lines[2:]
    log_file(data_dir).write_bytes(b"".join(damaged))
    with EventStore(data_dir) as s:
        s.load()
        assert "unparseable line" in s.damaged()["c1"]
        with pytest.raises(CorruptLogError, match="damaged log") as info:
            s.append(ev())
        assert info.value.code == -32006
        assert log_file(data_dir).read_bytes() == b"".join(damaged)  # nothing was written or cut
        assert s.append(ev("other")).seq == 1  # other conversations carry on
        log_file(data_dir).write_bytes(b"".join(lines))  # an operator repairs it by hand
        assert s.append(ev()).seq == 5
    assert not torn_files(data_dir)


def test_damage_appended_by_another_process_while_we_run_is_refused(store: EventStore, data_dir: Path) -> None:
    store.append(ev())  # no id: the unindexed path, which still checks every line others add
    good = log_file(data_dir).read_bytes()
    forged = {**json.loads(good), "id": str(uuid.uuid4()), "seq": 2}
    with open(log_file(data_dir), "ab") as f:  # a bad line, then one that parses: not a torn tail
        f.write(b"this is not json\n" + json.dumps(forged).encode() + b"\n")
    damaged = log_file(data_dir).read_bytes()
    with pytest.raises(CorruptLogError, match="damaged log"):
        store.append(ev())
    assert log_file(data_dir).read_bytes() == damaged  # nothing written, nothing cut
    log_file(data_dir).write_bytes(good)  # repaired by hand
    assert store.append(ev()).seq == 2


def test_seq_gap_is_corruption(data_dir: Path) -> None:
    with EventStore(data_dir) as s:
        for _ in range(3):
            s.append(ev())
    lines = log_file(data_dir).read_bytes().splitlines(keepends=True)
    log_file(data_dir).write_bytes(lines[0] + lines[2])
    with EventStore(data_dir) as s:
        s.load()
        assert "seq gap: expected 2, found 3" in s.damaged()["c1"]
        with pytest.raises(StorageError):
            s.append(ev(id=str(uuid.uuid4())))


def test_two_stores_in_one_process_behave_like_two_processes(data_dir: Path) -> None:
    a, b = EventStore(data_dir), EventStore(data_dir)
    try:
        seqs = []
        for i in range(10):
            seqs.append((a if i % 2 else b).append(ev()).seq)
        assert seqs == list(range(1, 11))
        eid = str(uuid.uuid4())
        first = a.append(ev(id=eid))
        assert b.append(ev(id=eid)).seq == first.seq  # b learns a's ids when it needs them
    finally:
        a.close()
        b.close()
    check_log(log_file(data_dir))


def test_four_processes_share_one_log(data_dir: Path, python: str, python_env: dict) -> None:
    EventStore(data_dir).close()
    procs = [
        subprocess.Popen(
            [python, WRITER, str(data_dir), "shared", "500", f"p{i}"], stdout=subprocess.PIPE, env=python_env
        )
        for i in range(4)
    ]
    acked = {}
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        for line in out.decode().splitlines():
            eid, seq = line.split()
            acked[eid] = int(seq)
    events = check_log(log_file(data_dir, "shared"))
    assert len(events) == 2000 and len(acked) == 2000
    assert {e["id"]: e["seq"] for e in events} == acked
    for i in range(4):  # each writer's own events keep their order
        mine = [e["data"]["n"] for e in events if e["agent_id"] == f"p{i}"]
        assert mine == list(range(1, 501))


def test_kill_9_loses_no_acknowledged_event(data_dir: Path, python: str, python_env: dict) -> None:
    EventStore(data_dir).close()
    procs = [
        subprocess.Popen(
            [python, WRITER, str(data_dir), f"storm{i % 2}", "0", f"k{i}"], stdout=subprocess.PIPE, env=python_env
        )
        for i in range(3)
    ]
    acked: dict[str, str] = {}
    try:
        for p in procs:  # wait until each writer has had 200 appends acknowledged
            assert p.stdout is not None
            for _ in range(200):
                line = p.stdout.readline().decode()
                assert line, "writer died early"
                acked[line.split()[0]] = line
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
    for p in procs:
        assert p.stdout is not None
        rest = p.stdout.read().decode()
        assert p.wait(timeout=30) == -signal.SIGKILL
        for line in rest.splitlines(keepends=True):  # acks that raced the kill count too
            if line.endswith("\n"):  # a line cut by the kill was never a whole answer
                acked[line.split()[0]] = line
    with EventStore(data_dir) as s:
        s.load()
        assert not s.damaged()
        for eid, line in acked.items():
            found = s.get(eid)
            assert found is not None, f"acknowledged event lost: {line}"
            assert found.seq == int(line.split()[1])
        for cid in ("storm0", "storm1"):
            s.append(ev(cid))
            check_log(log_file(data_dir, cid))
