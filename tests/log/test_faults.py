"""A failing disk: fsync errors, a full disk, a file size limit. Clean errors, intact files."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sidecar.errors import StorageError
from sidecar.log import EventStore
from sidecar.log import files as log_files


def ev(cid: str = "c1", size: int = 10) -> dict:
    return {"conversation_id": cid, "type": "test.event", "data": {"pad": "x" * size}}


def check_log(path: Path) -> list[int]:
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n")
    seqs = [json.loads(line)["seq"] for line in raw.splitlines()]
    assert seqs == list(range(1, len(seqs) + 1))
    return seqs


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "per-file-fsync"])
def test_fsync_failure_fails_the_batch_and_cuts_it_back(data_dir: Path, monkeypatch, journal: bool) -> None:
    store = EventStore(data_dir, journal=journal)
    store.append(ev("a"))
    store.append(ev("b"))
    sizes = {c: (data_dir / "logs" / f"{c}.jsonl").stat().st_size for c in "ab"}
    calls = []

    def failing(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(log_files, "fdatasync", failing)
    with pytest.raises(StorageError, match="EIO") as info:
        store.append_many([ev("a"), ev("b")])
    assert info.value.code == -32006
    assert len(calls) == len(set(calls))  # no fsync was ever retried on the same file
    for c in "ab":
        assert (data_dir / "logs" / f"{c}.jsonl").stat().st_size == sizes[c]
    if journal:
        (wal,) = (data_dir / "journal").glob("*.wal")
        assert wal.read_bytes().rstrip(b"\0") == b"".join(
            (data_dir / "logs" / f"{c}.jsonl").read_bytes() for c in "ab"
        )  # the failed batch was erased from the journal too
    else:
        assert len(calls) == 2
    monkeypatch.undo()
    assert store.append(ev("a")).seq == 2  # the next write starts afresh, with no gap
    assert check_log(data_dir / "logs" / "a.jsonl") == [1, 2]
    store.close()


def test_write_error_mid_batch_leaves_no_partial_line(store: EventStore, data_dir: Path, monkeypatch) -> None:
    store.append(ev())
    real_write = os.write
    state = {"n": 0}

    def short_then_fail(fd: int, data) -> int:
        state["n"] += 1
        if state["n"] == 1:
            return real_write(fd, bytes(data[:7]))  # a short write...
        raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr(os, "write", short_then_fail)
    with pytest.raises(StorageError, match="disk is full"):
        store.append(ev())
    monkeypatch.undo()
    assert check_log(data_dir / "logs" / "c1.jsonl") == [1]
    assert store.append(ev()).seq == 2


FSIZE_SCRIPT = textwrap.dedent(
    """
    import json, resource, signal, sys
    from sidecar.errors import StorageError
    from sidecar.log import EventStore

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    data_dir = sys.argv[1]
    out = {}
    with EventStore(data_dir) as s:
        for _ in range(5):
            s.append({"conversation_id": "c1", "type": "test.event"})
        size = __import__("os").path.getsize(data_dir + "/logs/c1.jsonl")
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))
        try:
            s.append({"conversation_id": "c1", "type": "test.event", "data": {"pad": "x" * 1000}})
            out["error"] = None
        except StorageError as exc:
            out["error"] = exc.message
            out["code"] = exc.code
        out["size_after"] = __import__("os").path.getsize(data_dir + "/logs/c1.jsonl")
        out["size_before"] = size
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        out["next_seq"] = s.append({"conversation_id": "c1", "type": "test.event"}).seq
    print(json.dumps(out))
    """
)


def test_file_size_limit_gives_a_clean_error(data_dir: Path, python_env: dict) -> None:
    run = subprocess.run(
        [sys.executable, "-c", FSIZE_SCRIPT, str(data_dir)], env=python_env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["code"] == -32006 and "disk is full" in out["error"] and "EFBIG" in out["error"]
    assert out["size_after"] == out["size_before"]
    assert out["next_seq"] == 6
    assert check_log(data_dir / "logs" / "c1.jsonl") == [1, 2, 3, 4, 5, 6]


@pytest.fixture
def tiny_tmpfs(make_tmpfs) -> Path:
    return make_tmpfs("256k")


def test_full_disk_on_a_tiny_tmpfs(tiny_tmpfs: Path) -> None:
    data_dir = tiny_tmpfs / "data"
    filler = tiny_tmpfs / "filler"
    with EventStore(data_dir) as s:
        s.append(ev())
        filler.write_bytes(b"\0" * (180 * 1024))
        errors = 0
        acked = 1
        for _ in range(400):
            try:
                s.append(ev(size=500))
                acked += 1
            except StorageError as exc:
                assert "ENOSPC" in exc.message
                errors += 1
                if errors == 3:
                    break
        assert errors == 3
        assert check_log(data_dir / "logs" / "c1.jsonl") == list(range(1, acked + 1))
        filler.unlink()  # space returns
        assert s.append(ev(size=500)).seq == acked + 1
    assert check_log(data_dir / "logs" / "c1.jsonl") == list(range(1, acked + 2))
