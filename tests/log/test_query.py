"""The original specification's embedded API (S23): sidecar.log.query on a data directory."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sidecar.errors import InvalidParams
from sidecar.log import query


def test_append_event_returns_the_id_and_writes_the_line(data_dir: Path) -> None:
    event = {"conversation_id": "c1", "type": "agent.progress", "data": {"step": 1}}
    eid = query.append_event(event, data_dir=data_dir)
    (line,) = (data_dir / "logs" / "c1.jsonl").read_text().splitlines()
    stored = json.loads(line)
    assert stored["id"] == eid and stored["seq"] == 1 and stored["data"] == {"step": 1}
    assert (data_dir / "tasks.graph.json").is_file()  # the scaffold comes with first use


def test_tail_since_by_type(data_dir: Path) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    ids = [
        query.append_event({"conversation_id": "c1", "type": t, "visibility": v}, data_dir=data_dir)
        for t, v in [("agent.progress", "status"), ("task.updated", "internal"), ("agent.progress", "internal")]
    ]
    other = query.append_event({"conversation_id": "c2", "type": "agent.progress"}, data_dir=data_dir)

    tail = query.tail("c1", limit=2, data_dir=data_dir)
    assert [e["id"] for e in tail] == ids[1:]
    assert all(isinstance(e, dict) for e in tail)
    assert [e["id"] for e in query.tail("c1", data_dir=data_dir)] == ids

    assert [e["id"] for e in query.since(before, data_dir=data_dir)] == ids + [other]
    assert [e["id"] for e in query.since(before.isoformat(), data_dir=data_dir)] == ids + [other]
    assert query.since(datetime.now(UTC) + timedelta(hours=1), data_dir=data_dir) == []

    assert [e["id"] for e in query.by_type(["agent.progress"], data_dir=data_dir)] == [ids[0], ids[2], other]
    assert [e["id"] for e in query.by_type("agent.progress", visibility="status", data_dir=data_dir)] == [ids[0]]
    assert query.get_event(ids[1], data_dir=data_dir)["type"] == "task.updated"


def test_environment_picks_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_DATA_DIR", str(tmp_path / "from-env"))
    eid = query.append_event({"conversation_id": "env", "type": "a.b"})
    assert (tmp_path / "from-env" / "logs" / "env.jsonl").is_file()
    assert query.tail("env")[0]["id"] == eid


def test_default_is_data_under_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIDECAR_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    query.append_event({"conversation_id": "here", "type": "a.b"})
    assert (tmp_path / "data" / "logs" / "here.jsonl").is_file()


def test_bad_input_is_refused(data_dir: Path) -> None:
    with pytest.raises(InvalidParams):
        query.append_event({"conversation_id": "../../etc", "type": "a"}, data_dir=data_dir)
    with pytest.raises(InvalidParams):
        query.tail("../../etc", data_dir=data_dir)
    assert not (data_dir / "logs").exists() or list((data_dir / "logs").iterdir()) == []


def test_threads_share_one_store(data_dir: Path) -> None:
    out: list[str] = []

    def worker() -> None:
        for _ in range(25):
            out.append(query.append_event({"conversation_id": "t", "type": "a.b"}, data_dir=data_dir))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e["seq"] for e in query.tail("t", 500, data_dir=data_dir)) == list(range(1, 201))
    assert len(set(out)) == 200
