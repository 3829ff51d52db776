"""tasks.* over the socket: rules, the audit trail, coalesced writes, outside edits."""

from __future__ import annotations

import json
import time

import anyio
import pytest
from sidecar_client import AsyncClient, Client, RpcError

from sidecar.tasks import store


def rpc_error(call) -> RpcError:
    with pytest.raises(RpcError) as info:
        call()
    return info.value


def test_create_update_ready_and_the_rules(daemon) -> None:
    with Client(daemon.socket_path) as c:
        a = c.call("tasks.create", {"type": "build", "id": "a", "owner": "coder"})
        c.call("tasks.create", {"type": "test", "id": "b", "dependency_ids": ["a"], "priority": 0})
        assert (a["status"], a["version"]) == ("pending", 1)
        assert [t["id"] for t in c.call("tasks.ready")["tasks"]] == ["a"]
        c.call("tasks.update", {"id": "a", "status": "running", "expected_version": 1})
        assert (
            rpc_error(lambda: c.call("tasks.update", {"id": "a", "owner": "x", "expected_version": 1})).code == -32001
        )
        err = rpc_error(lambda: c.call("tasks.update", {"id": "a", "dependency_ids": ["b"]}))
        assert err.code == -32602 and err.data["cycle"] == ["a", "b", "a"]
        assert rpc_error(lambda: c.call("tasks.create", {"type": "t", "parent_id": "zz"})).code == -32602
        assert rpc_error(lambda: c.call("tasks.get", {"id": "zz"})).code == -32002
        c.call("tasks.update", {"id": "a", "status": "done"})
        assert rpc_error(lambda: c.call("tasks.update", {"id": "a", "status": "running"})).code == -32602
        assert [t["id"] for t in c.call("tasks.ready")["tasks"]] == ["b"]
        assert [t["id"] for t in c.call("tasks.list_active")["tasks"]] == ["b"]
        assert [t["id"] for t in c.call("tasks.list_active", {"statuses": ["done"]})["tasks"]] == ["a"]
    on_disk = store.load_graph(data_dir=daemon.data_dir)  # the file and its journal, as any reader sees them
    assert {t["id"]: t["status"] for t in on_disk["tasks"]} == {"a": "done", "b": "pending"}


def test_changes_are_logged_for_their_conversation(daemon) -> None:
    with Client(daemon.socket_path) as c:
        c.call("tasks.create", {"type": "search", "id": "s1", "conversation_id": "chat", "owner": "rag"})
        c.call("tasks.update", {"id": "s1", "status": "running"})
        c.call("tasks.update", {"id": "s1", "status": "done", "outputs": {"hits": 3}})
        c.call("tasks.create", {"type": "quiet", "id": "q1"})  # no conversation: logged in system
        events = c.call("log.tail", {"conversation_id": "chat", "limit": 10})["events"]
    assert [(e["type"], e["task_id"], e["level"]) for e in events] == [
        ("task.created", "s1", "state"),
        ("task.updated", "s1", "state"),
        ("task.updated", "s1", "milestone"),
    ]
    assert events[-1]["data"]["task"]["outputs"] == {"hits": 3} and "status" in events[-1]["data"]["changed"]


def test_a_burst_of_updates_is_a_few_writes(daemon) -> None:
    with Client(daemon.socket_path) as c:
        c.call("tasks.create", {"type": "t", "id": "hot"})
        writes_before = c.call("sys.stats")["task_graph_writes"]

    async def burst() -> list[dict]:
        async with await AsyncClient.connect(daemon.socket_path) as client:
            out: list[dict] = []

            async def one(i: int) -> None:
                out.append(await client.call("tasks.update", {"id": "hot", "inputs": {"i": i}}))

            async with anyio.create_task_group() as tg:
                for i in range(1000):
                    tg.start_soon(one, i)
            return out

    answers = anyio.run(burst)
    assert sorted(a["version"] for a in answers) == list(range(2, 1002))  # each change acknowledged once
    with Client(daemon.socket_path) as c:
        writes = c.call("sys.stats")["task_graph_writes"] - writes_before
        assert c.call("tasks.get", {"id": "hot"})["version"] == 1001
    assert 1 <= writes < 200, f"{writes} rewrites for 1000 updates"
    assert store.load_graph(data_dir=daemon.data_dir)["tasks"][0]["version"] == 1001


def test_an_outside_edit_is_taken_in_within_a_second(daemon) -> None:
    with Client(daemon.socket_path) as c:
        c.call("tasks.create", {"type": "t", "id": "x", "conversation_id": "ops"})
        store.update_task("x", data_dir=daemon.data_dir, owner="someone-else")  # another process, with the lock
        deadline = time.monotonic() + 1.0
        while c.call("tasks.get", {"id": "x"})["owner"] != "someone-else":
            assert time.monotonic() < deadline, "the outside edit was not taken in within a second"
        while True:  # the audit event follows the graph swap; bounded by the deadline
            events = c.call("log.tail", {"conversation_id": "ops", "limit": 10})["events"]
            if events[-1]["type"] == "task.updated":
                break
            assert time.monotonic() < deadline + 1, "no task.updated event for the outside edit"
        assert events[-1]["data"]["source"] == "file" and events[-1]["data"]["task"]["owner"] == "someone-else"
        # and a daemon change after it builds on it rather than overwriting it
        c.call("tasks.update", {"id": "x", "priority": 0})
    task = store.load_graph(data_dir=daemon.data_dir)["tasks"][0]
    assert (task["owner"], task["priority"]) == ("someone-else", 0)


def test_a_broken_file_is_refused_and_repaired(daemon) -> None:
    path = daemon.data_dir / "tasks.graph.json"
    with Client(daemon.socket_path) as c:
        c.call("tasks.create", {"type": "t", "id": "keep"})
        path.write_text('{"tasks": [{"id": "broken"')  # a person's bad edit, without the lock
        deadline = time.monotonic() + 5
        while not list((daemon.data_dir / "archive").glob("tasks.graph.json.*.invalid")):
            assert time.monotonic() < deadline, "the broken file was not noticed"
            c.call("sys.health")
        assert c.call("tasks.get", {"id": "keep"})["id"] == "keep"  # the daemon kept its graph
        while True:  # and writes it back, right after keeping the broken one
            try:
                repaired = json.loads(path.read_text())
                break
            except json.JSONDecodeError:
                assert time.monotonic() < deadline, "the valid graph was not written back"
                c.call("sys.health")
    assert [t["id"] for t in repaired["tasks"]] == ["keep"]
    assert "tasks.file_refused" in daemon.stderr()


def test_tasks_survive_a_restart(start_daemon, tmp_path) -> None:
    first = start_daemon()
    with Client(first.socket_path) as c:
        c.call("tasks.create", {"type": "t", "id": "durable"})
    assert first.stop() == 0
    second = start_daemon(socket_path=first.socket_path)
    with Client(second.socket_path) as c:
        assert c.call("tasks.get", {"id": "durable"})["version"] == 1
