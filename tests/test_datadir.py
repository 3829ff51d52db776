"""The checked-in data/ scaffold (S22) and the code that recreates it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from sidecar.datadir import UnsafePathError, ensure_layout, resolve_data_dir

ROOT = Path(__file__).resolve().parent.parent


def test_repository_ships_the_scaffold() -> None:
    for keep in ("logs", "summaries", "archive"):
        assert (ROOT / "data" / keep / ".gitkeep").is_file()
    graph = json.loads((ROOT / "data" / "tasks.graph.json").read_text())
    assert graph["tasks"] == []


def test_scaffold_files_are_tracked_by_git() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "data"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(tracked) == [
        "data/archive/.gitkeep",
        "data/logs/.gitkeep",
        "data/summaries/.gitkeep",
        "data/tasks.graph.json",
    ]


def test_ensure_layout_creates_what_is_missing(tmp_path: Path) -> None:
    root = Path(ensure_layout(tmp_path / "fresh"))
    assert sorted(p.name for p in root.iterdir()) == ["archive", "logs", "summaries", "tasks.graph.json"]
    assert json.loads((root / "tasks.graph.json").read_text()) == {"tasks": []}


def test_ensure_layout_never_overwrites(tmp_path: Path) -> None:
    root = tmp_path / "kept"
    (root).mkdir()
    (root / "tasks.graph.json").write_text('{"tasks": [{"id": "t1"}], "version": 3}')
    ensure_layout(root)
    assert json.loads((root / "tasks.graph.json").read_text())["version"] == 3


def test_data_dir_resolution(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SIDECAR_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir() == str(tmp_path / "data")
    monkeypatch.setenv("SIDECAR_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir() == str(tmp_path / "env")
    assert resolve_data_dir(tmp_path / "kw") == str(tmp_path / "kw")


# --- the data directory's rules (contract §9) ----------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_data_directory_of_ours_open_to_others_is_tightened(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for sub in ("", "logs", "journal"):
        (root / sub).mkdir(exist_ok=True)
        (root / sub).chmod(0o775)  # what mkdir gives under umask 002
    ensure_layout(root)
    for sub in ("", "logs", "summaries", "archive", "journal"):
        assert mode_of(root / sub) == 0o700, sub


@pytest.mark.parametrize("mode", [0o777, 0o757, 0o1777])
def test_a_data_directory_anyone_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    root = tmp_path / "data"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(UnsafePathError, match="writable by others"):
        ensure_layout(root)
    assert not (root / "logs").exists()  # refused before anything was made in it


def test_a_subdirectory_anyone_may_write_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data" / "archive").mkdir(parents=True)
    (tmp_path / "data" / "archive").chmod(0o777)
    with pytest.raises(UnsafePathError, match="archive"):
        ensure_layout(tmp_path / "data")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
@pytest.mark.parametrize("sub", ["", "logs"])
def test_a_data_directory_of_another_user_is_refused(tmp_path: Path, sub: str) -> None:
    root = tmp_path / "data"
    (root / sub).mkdir(parents=True, exist_ok=True)
    os.chown(root / sub, 65534, 65534)
    (root / sub).chmod(0o700)
    with pytest.raises(UnsafePathError, match="belongs to uid 65534"):
        ensure_layout(root)


@pytest.mark.parametrize("sub", ["logs", "summaries", "archive", "journal"])
def test_a_symlinked_part_of_the_layout_is_refused(tmp_path: Path, sub: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    root = tmp_path / "data"
    root.mkdir()
    (root / sub).symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        ensure_layout(root)
    assert list(elsewhere.iterdir()) == []


def test_the_data_directory_itself_may_be_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "data").symlink_to(real)
    ensure_layout(tmp_path / "data")  # the operator named it: followed, and checked
    assert (real / "logs").is_dir() and mode_of(real / "logs") == 0o700
    from sidecar.log import EventStore
    from sidecar.log.summarize import load_summary, persist_summary, rolling_summary
    from sidecar.tasks import store as tasks

    with EventStore(tmp_path / "data") as store:
        store.append({"conversation_id": "c1", "type": "a.b"})
        store.checkpoint()  # the journal's directory is made and synced through the link
    persist_summary("c1", rolling_summary("c1", []), data_dir=tmp_path / "data")
    assert tasks.create_task({"type": "t", "id": "t1"}, data_dir=tmp_path / "data")["version"] == 1
    assert load_summary("c1", data_dir=tmp_path / "data") is not None
    assert (real / "tasks.graph.json").is_file() and not (real / "tasks.graph.json").is_symlink()


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o077])
def test_the_embedded_library_makes_private_files_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    from sidecar.log import query
    from sidecar.log.summarize import persist_summary, rolling_summary
    from sidecar.tasks import store as tasks

    root = tmp_path / "data"
    old = os.umask(umask)
    try:
        query.append_event({"conversation_id": "c1", "type": "a.b"}, data_dir=root)
        persist_summary("c1", rolling_summary("c1", query.tail("c1", data_dir=root)), data_dir=root)
        tasks.create_task({"type": "t", "id": "t1"}, data_dir=root)
    finally:
        os.umask(old)
    assert_private(root)
    assert (root / "journal").is_dir() and (root / "summaries" / "c1.md").is_file()


def assert_private(root: Path) -> None:
    """Every directory under ``root`` (and itself) 0700, every file 0600."""
    seen = 0
    for path in [root, *root.rglob("*")]:
        if path.name == ".gitkeep":
            continue
        seen += 1
        if path.is_dir():
            assert mode_of(path) == 0o700, f"{path} is {mode_of(path):04o}"
        else:
            assert mode_of(path) == 0o600, f"{path} is {mode_of(path):04o}"
    assert seen > 8
