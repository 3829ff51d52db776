"""The checked-in data/ scaffold (S22) and the code that recreates it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from sidecar.datadir import ensure_layout, resolve_data_dir

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
