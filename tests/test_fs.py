"""sidecar.fs: the one atomic write and the one lock helper."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sidecar import fs
from sidecar.datadir import UnsafePathError


def test_atomic_write_replaces_the_file_0600_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    fs.atomic_write(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_atomic_write_removes_its_temp_when_the_rename_fails(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()  # a directory in the way: the rename fails
    with pytest.raises(OSError):
        fs.atomic_write(str(tmp_path / "d"), b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_atomic_write_with_a_named_temp_never_follows_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(victim, tmp_path / "f.tmp.1")
    with pytest.raises(UnsafePathError):
        fs.atomic_write(str(tmp_path / "f"), b"x", temp=str(tmp_path / "f.tmp.1"))
    assert victim.read_bytes() == b"keep"
    fs.atomic_write(str(tmp_path / "g"), b"y", temp=str(tmp_path / "g.tmp.1"))
    assert (tmp_path / "g").read_bytes() == b"y" and not (tmp_path / "g.tmp.1").exists()


def test_locked_shares_and_excludes(tmp_path: Path) -> None:
    path = str(tmp_path / "x.lock")
    with (
        fs.locked(path, exclusive=False),
        fs.locked(path, exclusive=False),
        pytest.raises(BlockingIOError),
        fs.locked(path, exclusive=True, blocking=False),
    ):
        pass  # two shared holders; no exclusive one while they hold it
    with fs.locked(path, exclusive=True) as fd:
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        with pytest.raises(BlockingIOError), fs.locked(path, exclusive=False, blocking=False):
            pass
    with fs.locked(path, exclusive=True, blocking=False):
        pass  # released on leaving


def test_a_lock_file_is_never_a_link(tmp_path: Path) -> None:
    os.symlink(tmp_path / "elsewhere", tmp_path / "x.lock")
    with pytest.raises(UnsafePathError), fs.locked(str(tmp_path / "x.lock"), exclusive=True):
        pass
    assert not (tmp_path / "elsewhere").exists()
