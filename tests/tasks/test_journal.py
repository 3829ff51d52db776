"""The task graph's journal: what every reader replays, what a crash leaves, and when the
whole file is written."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from sidecar.clock import ManualClock
from sidecar.tasks import store
from sidecar.tasks.model import Claim, NewTask, TaskPatch
from sidecar.tasks.service import TaskService
from sidecar.tasks.store import GRAPH_FILE, JOURNAL_SUFFIX, GraphFileError, read_graph


def run_service(data_dir: Path, work) -> TaskService:  # type: ignore[no-untyped-def]
    service = TaskService(str(data_dir), clock=ManualClock())
    service.load()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(service.run)
            await work(service)
            tg.cancel_scope.cancel()

    anyio.run(main)
    return service


def test_changes_go_to_the_journal_and_every_reader_sees_them(tmp_path: Path) -> None:
    async def work(s: TaskService) -> None:
        for i in range(20):
            await s.create(NewTask(id=f"t{i}", type="x"))
        await s.claim(Claim(agent_id="a"))

    service = run_service(tmp_path, work)
    assert service.checkpoints == 0 and service.writes == 21
    assert not (tmp_path / GRAPH_FILE).exists()  # never checkpointed: the journal holds all
    assert (tmp_path / (GRAPH_FILE + JOURNAL_SUFFIX)).stat().st_mode & 0o777 == 0o600
    loaded = store.load_graph(data_dir=tmp_path)
    assert len(loaded["tasks"]) == 20 and loaded["version"] == 21
    assert [t["lease_owner"] for t in loaded["tasks"] if t["status"] == "running"] == ["a"]

    # another process changes it through the file API: the journal is folded in and emptied
    store.update_task("t5", data_dir=tmp_path, priority=0)
    assert not (tmp_path / (GRAPH_FILE + JOURNAL_SUFFIX)).exists()
    assert len(store.load_graph(data_dir=tmp_path)["tasks"]) == 20


def test_a_torn_last_line_is_left_out_and_repaired_at_start(tmp_path: Path) -> None:
    async def work(s: TaskService) -> None:
        await s.create(NewTask(id="kept", type="x"))

    run_service(tmp_path, work)
    journal = tmp_path / (GRAPH_FILE + JOURNAL_SUFFIX)
    with open(journal, "ab") as f:
        f.write(b'{"v": 9, "task": {"id": "torn", "ty')  # a writer killed mid-append: never acknowledged
    assert [t.id for t in read_graph(str(tmp_path / GRAPH_FILE)).tasks.values()] == ["kept"]

    async def more(s: TaskService) -> None:
        await s.create(NewTask(id="after", type="x"))

    run_service(tmp_path, more)  # start-up folds the journal in: nothing is appended after a torn line
    assert sorted(t["id"] for t in store.load_graph(data_dir=tmp_path)["tasks"]) == ["after", "kept"]


def test_a_damaged_line_is_refused_by_name(tmp_path: Path) -> None:
    async def work(s: TaskService) -> None:
        await s.create(NewTask(id="a", type="x"))
        await s.create(NewTask(id="b", type="x"))

    run_service(tmp_path, work)
    journal = tmp_path / (GRAPH_FILE + JOURNAL_SUFFIX)
    lines = journal.read_bytes().split(b"\n")
    journal.write_bytes(b"\n".join([b'{"v": 1, "task": 42}', *lines[1:]]))
    with pytest.raises(GraphFileError, match="damaged at line 1"):
        read_graph(str(tmp_path / GRAPH_FILE))
    service = TaskService(str(tmp_path))
    service.load()  # refused for the task graph only, as a broken file is
    assert service.broken is not None and "damaged at line 1" in service.broken.message


def test_lines_older_than_the_file_are_not_replayed(tmp_path: Path) -> None:
    """A checkpoint that crashed after writing the file but before emptying the journal."""

    async def work(s: TaskService) -> None:
        await s.create(NewTask(id="t", type="x"))
        await s.update(TaskPatch(id="t", priority=1))

    run_service(tmp_path, work)
    journal = tmp_path / (GRAPH_FILE + JOURNAL_SUFFIX)
    stale = journal.read_bytes()
    graph = read_graph(str(tmp_path / GRAPH_FILE))
    with store.locked(str(tmp_path / GRAPH_FILE), exclusive=True):
        store.write_graph(str(tmp_path / GRAPH_FILE), graph)
    store.update_task("t", data_dir=tmp_path, priority=3)  # newer than every stale line
    journal.write_bytes(stale)  # as if the journal had not been emptied
    assert store.load_graph(data_dir=tmp_path)["tasks"][0]["priority"] == 3


def test_the_whole_file_is_written_once_the_journal_outgrows_it(tmp_path: Path) -> None:
    async def work(s: TaskService) -> None:
        await s.create(NewTask(id="t", type="x", inputs={"pad": "x" * 4000}))
        for i in range(400):  # ~1.6 MB of journal: past the 1 MiB floor
            await s.update(TaskPatch(id="t", priority=i % 5))

    service = run_service(tmp_path, work)
    assert service.checkpoints >= 1 and service.journal_bytes < 1 << 20
    assert os.path.getsize(tmp_path / GRAPH_FILE) > 4000
    assert store.load_graph(data_dir=tmp_path)["tasks"][0]["version"] == 401
