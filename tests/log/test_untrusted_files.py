"""Nothing in the data directory is trusted (contract §9), at the level of the event store.

A symlink, a FIFO or a directory where a log file belongs is refused for that conversation
alone and never followed; a planted journal is replayed only when it can be nobody else's,
and only its lines that are whole, valid events; ids read back from file names are checked.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Annotated

import msgspec
import pytest

from sidecar.errors import CorruptLogError, InvalidParams, StorageError
from sidecar.log import EventStore
from sidecar.log.events import (
    CONVERSATION_ID_PATTERN,
    EVENT_TYPE_PATTERN,
    UUID_PATTERN,
    as_new_event,
)
from sidecar.log.segments import list_archive
from sidecar.log.store import check_conversation_id, check_event_id
from sidecar.tasks.model import NewTask, TaskPatch
from tests.support import line


def ev(cid: str = "c1", **kw: object) -> dict:
    return {"conversation_id": cid, "type": "test.event", **kw}


# --- ids are matched whole ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["c1\n", "c1\n\n", "\nc1", "a..b", "x" * 129])
def test_a_conversation_id_is_matched_whole(bad: str) -> None:
    with pytest.raises(InvalidParams, match="conversation_id"):
        check_conversation_id(bad)
    with pytest.raises(InvalidParams, match="conversation_id"):
        as_new_event(ev(bad))


def test_every_id_pattern_refuses_a_trailing_newline() -> None:
    eid = str(uuid.uuid4())
    with pytest.raises(InvalidParams):
        check_event_id(eid + "\n")
    with pytest.raises(InvalidParams, match="id"):
        as_new_event(ev(id=eid + "\n"))
    with pytest.raises(InvalidParams, match="caused_by"):
        as_new_event(ev(caused_by=[eid + "\n"]))
    with pytest.raises(InvalidParams, match="type"):
        as_new_event({"conversation_id": "c1", "type": "a.b\n"})
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"type": "t", "id": "t1\n"}, NewTask)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"id": "t1", "dependency_ids": ["t2\n"]}, TaskPatch)
    for pattern, good in ((CONVERSATION_ID_PATTERN, "c1"), (UUID_PATTERN, eid), (EVENT_TYPE_PATTERN, "a.b")):
        whole = Annotated[str, msgspec.Meta(pattern=pattern)]
        assert msgspec.convert(good, whole) == good
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(good + "\n", whole)
        # the same pattern in ECMAScript (no \Z there): `$` never matches before a newline
        assert "\\Z" not in pattern and pattern.endswith("$(?!\\n)")


# --- symlinks, FIFOs and directories where log files belong --------------------------------------


def test_a_symlinked_log_is_refused_and_its_target_left_alone(data_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(line("evil", 1) + b'{"torn')  # a torn tail the repair would cut
    before = outside.read_bytes()
    (data_dir / "logs").mkdir(parents=True)
    (data_dir / "logs" / "evil.jsonl").symlink_to(outside)
    with EventStore(data_dir) as store:
        store.load()
        with pytest.raises(StorageError, match="evil"):
            store.append(ev("evil"))
        with pytest.raises(CorruptLogError, match="evil") as info:
            store.tail("evil")
        assert info.value.code == -32006
        assert store.append(ev("good")).seq == 1  # everyone else is served
        assert [e.conversation_id for e in store.since("2000-01-01T00:00:00Z").events] == ["good"]
        assert [c.conversation_id for c in store.conversations()] == ["good"]
    assert outside.read_bytes() == before


def test_a_dangling_symlink_creates_nothing_outside(data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "created-outside.jsonl"
    (data_dir / "logs").mkdir(parents=True)
    (data_dir / "logs" / "c1.jsonl").symlink_to(target)
    with EventStore(data_dir) as store, pytest.raises(StorageError, match="c1"):
        store.append(ev("c1"))
    assert not target.exists()


def test_a_fifo_in_place_of_a_log_never_blocks_a_reader(data_dir: Path) -> None:
    (data_dir / "logs").mkdir(parents=True)
    fifo = data_dir / "logs" / "c1.jsonl"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            with EventStore(data_dir, journal=False) as store:
                store.tail("c1")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # blocked in open(): a writer end lets it go, so the test can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=10)
        pytest.fail("opening the FIFO blocked the reader")
    assert isinstance(outcome[0], CorruptLogError) and "FIFO" in str(outcome[0])
    with EventStore(data_dir, journal=False) as store:
        with pytest.raises(StorageError, match="c1"):
            store.append(ev("c1"))
        assert store.append(ev("c2")).seq == 1


def test_a_directory_in_place_of_a_log_is_that_conversation_only(data_dir: Path) -> None:
    (data_dir / "logs" / "c1.jsonl").mkdir(parents=True)
    with EventStore(data_dir) as store:
        store.load()
        with pytest.raises(StorageError, match="c1"):
            store.append(ev("c1"))
        with pytest.raises(CorruptLogError, match="c1"):
            store.tail("c1")
        assert store.append(ev("c2")).seq == 1


def test_a_symlinked_archive_segment_is_damage_for_its_conversation(data_dir: Path, tmp_path: Path) -> None:
    with EventStore(data_dir, rotate_bytes=200) as store:
        for _ in range(4):
            store.append(ev("c1", data={"pad": "x" * 100}))
        store.append(ev("c2"))
    segment = sorted((data_dir / "archive").glob("c1.*.jsonl"))[0]
    stolen = tmp_path / "elsewhere.jsonl"
    segment.rename(stolen)
    segment.symlink_to(stolen)
    with EventStore(data_dir, rotate_bytes=200) as store:
        store.load()
        assert "c1" in store.damaged()
        with pytest.raises(StorageError, match="c1"):
            store.append(ev("c1"))
        assert store.append(ev("c2")).seq == 2
    assert stolen.read_bytes().count(b"\n") >= 1  # never touched


def test_the_archive_listing_checks_names_and_kinds(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "..x.000000000001-000000000001.jsonl").write_bytes(line("..x", 1))  # no conversation id
    (archive / "ok.000000000001-000000000001.jsonl").write_bytes(line("ok", 1))
    (archive / "linked.000000000001-000000000001.jsonl").symlink_to(archive / "ok.000000000001-000000000001.jsonl")
    (archive / "dir.000000000001-000000000001.jsonl").mkdir()
    assert {cid: [s.first_seq for s in segs] for cid, segs in list_archive(str(archive))[0].items()} == {"ok": [1]}


# --- planted journals -------------------------------------------------------------------------


def plant_journal(data_dir: Path, lines: list[bytes], name: str = "1-deadbeef.wal", mode: int = 0o600) -> Path:
    (data_dir / "journal").mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / "journal" / name
    path.write_bytes(b"".join(lines) + bytes(64))  # zero-filled after the last batch, like ours
    path.chmod(mode)
    return path


def test_journal_lines_with_hostile_ids_are_dropped(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    hostile = line("c1", 1).replace(b'"conversation_id":"c1"', b'"conversation_id":"../../outside/x"')
    bad_id = line("c2", 1).replace(b'"id":"', b'"id":"not-a-uuid-', 1)
    bad_type = line("c3", 1, type="Not.A.Type")
    too_deep = line("c4", 1, data={"a": 1}).replace(b'{"a":1}', b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}")
    good = line("c5", 1, visibility="user", type="user.message", data={"text": "hi"})
    plant_journal(data_dir, [hostile, bad_id, bad_type, too_deep, good])
    with EventStore(data_dir) as store:
        assert store.conversation_ids() == ["c5"]  # the one whole, valid event
        assert store.tail("c5")[0].data == {"text": "hi"}
    assert not (tmp_path / "outside" / "x.jsonl").exists()
    assert sorted(p.name for p in (data_dir / "logs").iterdir()) == ["c5.jsonl"]
    assert not list((data_dir / "journal").glob("*.wal"))  # replayed, then deleted


@pytest.mark.parametrize("mode", [0o666, 0o620])
def test_a_journal_others_could_write_is_not_replayed(data_dir: Path, mode: int) -> None:
    planted = plant_journal(data_dir, [line("c1", 1, visibility="user", type="narrator.message")], mode=mode)
    with EventStore(data_dir) as store:
        assert store.conversation_ids() == []
    assert planted.exists()  # left for a person to look at


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_journal_of_another_user_is_not_replayed(data_dir: Path) -> None:
    planted = plant_journal(data_dir, [line("c1", 1, visibility="user", type="narrator.message")])
    os.chown(planted, 65534, 65534)
    with EventStore(data_dir) as store:
        assert store.conversation_ids() == []


def test_a_symlinked_journal_is_not_replayed(data_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.wal"
    planted = line("c1", 1)
    elsewhere.write_bytes(planted)
    (data_dir / "journal").mkdir(parents=True, mode=0o700)
    (data_dir / "journal" / "1-0.wal").symlink_to(elsewhere)
    with EventStore(data_dir) as store:
        assert store.conversation_ids() == []
    assert elsewhere.read_bytes() == planted


def test_a_journal_line_for_a_symlinked_log_fails_that_conversation_only(data_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "target.jsonl"
    outside.write_bytes(b"")
    (data_dir / "logs").mkdir(parents=True)
    (data_dir / "logs" / "evil.jsonl").symlink_to(outside)
    planted = plant_journal(data_dir, [line("evil", 1), line("good", 1)])
    with EventStore(data_dir) as store:
        assert [e.seq for e in store.tail("good")] == [1]
    assert outside.read_bytes() == b""
    assert planted.exists()  # kept: the evil conversation's line is only there


def test_the_library_makes_private_files_whatever_the_umask(tmp_path: Path) -> None:
    """EventStore used directly (no daemon, no ensure_layout) under umask 022: 0700 and 0600."""
    old = os.umask(0o022)
    try:
        store = EventStore(tmp_path / "fresh", journal=True)
        store.append({"conversation_id": "c1", "type": "a.b"})
        store.close()
    finally:
        os.umask(old)
    modes = {
        os.path.relpath(os.path.join(top, name), tmp_path): os.stat(os.path.join(top, name)).st_mode & 0o777
        for top, dirs, names in os.walk(tmp_path / "fresh")
        for name in dirs + names
    }
    assert modes and modes["fresh/logs/c1.jsonl"] == 0o600
    assert all(mode in (0o600, 0o700) for mode in modes.values()), modes
    assert os.stat(tmp_path / "fresh").st_mode & 0o777 == 0o700
