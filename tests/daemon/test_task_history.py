"""The task graph as a projection of the log: history, time travel, and rebuilding the file."""

from __future__ import annotations

import os
import subprocess
import sys

from sidecar_client import Client, RpcError

from tests.daemon.conftest import DaemonProc, child_env, daemon, start_daemon  # noqa: F401


def changes(c: Client) -> dict[str, dict[str, dict]]:
    """A little history, and the graph after each change, by the timestamp of its event."""
    after: dict[str, dict[str, dict]] = {}
    state: dict[str, dict] = {}

    def did(task: dict) -> None:
        state[task["id"]] = task
        events = c.call("log.tail", {"conversation_id": task["conversation_id"] or "system", "limit": 1})["events"]
        after[events[-1]["timestamp"]] = dict(state)  # the same timestamp twice: the later state

    did(c.call("tasks.create", {"id": "plan", "type": "plan", "conversation_id": "c1"}))
    did(c.call("tasks.create", {"id": "build", "type": "code", "conversation_id": "c1", "dependency_ids": ["plan"]}))
    did(c.call("tasks.create", {"id": "chore", "type": "code"}))  # no conversation: recorded in system
    did(c.call("tasks.claim", {"agent_id": "a", "types": ["plan"]})["task"])
    did(c.call("tasks.update", {"id": "plan", "status": "done", "agent_id": "a", "outputs": {"steps": 3}}))
    did(c.call("tasks.claim", {"agent_id": "b", "types": ["code"]})["task"])
    did(c.call("tasks.update", {"id": "chore", "priority": 0}))
    did(c.call("tasks.release", {"id": "build", "agent_id": "b"}))
    return after


def test_history_and_time_travel_agree_with_the_changes_made(daemon: DaemonProc) -> None:  # noqa: F811
    with Client(daemon.socket_path) as c:
        after = changes(c)
        for timestamp, expected in after.items():
            at = {t["id"]: t for t in c.call("tasks.at", {"timestamp": timestamp})["tasks"]}
            assert at == expected, timestamp
        assert c.call("tasks.at", {"timestamp": "2000-01-01T00:00:00Z"})["tasks"] == []

        versions = c.call("tasks.history", {"id": "plan"})["versions"]
        assert [(v["version"], v["status"], v["event_type"]) for v in versions] == [
            (1, "pending", "task.created"),
            (2, "running", "task.claimed"),
            (3, "done", "task.updated"),
        ]
        assert [v["seq"] for v in versions] == sorted(v["seq"] for v in versions)
        assert versions[-1]["outputs"] == {"steps": 3} and versions[-1] == {
            **c.call("tasks.get", {"id": "plan"}),
            "seq": versions[-1]["seq"],
            "timestamp": versions[-1]["timestamp"],
            "event_type": "task.updated",
        }
        chore = c.call("tasks.history", {"id": "chore"})["versions"]  # from system
        assert [v["priority"] for v in chore] == [2, 0]
        try:
            c.call("tasks.history", {"id": "nothing"})
            raise AssertionError("a history for no task")
        except RpcError as exc:
            assert exc.code == -32002


def test_the_graph_comes_back_from_the_log_alone(start_daemon) -> None:  # noqa: F811
    d = start_daemon()
    with Client(d.socket_path) as c:
        changes(c)
        before = sorted(c.call("tasks.list_active", {"statuses": ["pending", "running", "done"]})["tasks"], key=str)
    assert d.stop() == 0
    graph = d.data_dir / "tasks.graph.json"
    for path in (graph, d.data_dir / "tasks.graph.json.journal"):
        if path.exists():
            os.unlink(path)

    run = subprocess.run(
        [sys.executable, "-m", "sidecar", "rebuild-tasks", "--data-dir", str(d.data_dir)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "3 tasks from 8 task events" in run.stdout and graph.exists()
    again = start_daemon(data_dir=d.data_dir, socket_path=d.socket_path)
    with Client(again.socket_path) as c:
        rebuilt = sorted(c.call("tasks.list_active", {"statuses": ["pending", "running", "done"]})["tasks"], key=str)
    assert rebuilt == before  # the same tasks, the same versions, leases and all
    assert again.stop() == 0

    os.unlink(graph)  # gone again: the daemon rebuilds it by itself at start
    third = start_daemon(data_dir=d.data_dir, socket_path=d.socket_path)
    with Client(third.socket_path) as c:
        assert (
            sorted(c.call("tasks.list_active", {"statuses": ["pending", "running", "done"]})["tasks"], key=str)
            == before
        )
    assert "tasks.rebuilt_from_log" in third.stderr()
