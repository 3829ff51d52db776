"""The ``tasks.*`` contract, on both storage backends (``backend_daemon``: the graph file, then a
KV bucket on the 3-node JetStream cluster)."""

from __future__ import annotations

import threading

import pytest
from sidecar_client import Client, RpcError

from tests.daemon.conftest import DaemonProc
from tests.support import within


def test_versions_rules_and_readiness(backend_daemon: DaemonProc) -> None:
    with Client(backend_daemon.socket_path) as c:
        a = c.call("tasks.create", {"id": "a", "type": "build", "conversation_id": "t"})
        b = c.call("tasks.create", {"id": "b", "type": "test", "dependency_ids": ["a"], "priority": 1})
        assert (a["version"], a["status"], b["dependency_ids"]) == (1, "pending", ["a"])
        assert [t["id"] for t in c.call("tasks.ready")["tasks"]] == ["a"]
        with pytest.raises(RpcError) as unknown:
            c.call("tasks.create", {"type": "x", "dependency_ids": ["nope"]})
        assert unknown.value.code == -32602
        with pytest.raises(RpcError) as cycle:
            c.call("tasks.update", {"id": "a", "dependency_ids": ["b"]})
        assert cycle.value.code == -32602 and cycle.value.data["reason"] == "cycle"

        done = c.call("tasks.update", {"id": "a", "status": "done", "expected_version": 1})
        assert done["version"] == 2
        with pytest.raises(RpcError) as stale:
            c.call("tasks.update", {"id": "a", "priority": 5, "expected_version": 1})
        assert stale.value.code == -32001
        assert [t["id"] for t in c.call("tasks.ready")["tasks"]] == ["b"]
        assert [t["id"] for t in c.call("tasks.list_active")["tasks"]] == ["b"]
        assert c.call("tasks.get", {"id": "a"}) == done
        with pytest.raises(RpcError) as missing:
            c.call("tasks.get", {"id": "zz"})
        assert missing.value.code == -32002
        # The log records every change; history is read back from it.
        logged = c.call("log.query", {"conversation_id": "t", "types": ["task.created", "task.updated"]})["events"]
        assert [e["data"]["task"]["version"] for e in logged] == [1, 2]
        history = within(5.0, lambda: c.call("tasks.history", {"id": "a"})["versions"])
        assert [v["version"] for v in history] == [1, 2]


def test_claims_leases_and_fencing(backend_daemon: DaemonProc) -> None:
    with Client(backend_daemon.socket_path) as c:
        c.call("tasks.create", {"id": "low", "type": "job", "priority": 5})
        c.call("tasks.create", {"id": "high", "type": "job", "priority": 1})
        got = c.call("tasks.claim", {"agent_id": "w1", "lease_s": 60})["task"]
        assert (got["id"], got["status"], got["lease_owner"], got["attempts"]) == ("high", "running", "w1", 1)
        with pytest.raises(RpcError) as not_holder:
            c.call("tasks.update", {"id": "high", "status": "done", "agent_id": "w2"})
        assert not_holder.value.code == -32001
        renewed = c.call("tasks.renew", {"id": "high", "agent_id": "w1", "lease_s": 120})
        assert renewed["version"] == got["version"] and renewed["lease_expires_at"] > got["lease_expires_at"]
        back = c.call("tasks.release", {"id": "high", "agent_id": "w1"})
        assert (back["status"], back["attempts"], back["lease_owner"]) == ("pending", 0, None)
        finished = c.call("tasks.claim", {"agent_id": "w2", "types": ["job"]})["task"]
        assert finished["id"] == "high"
        done = c.call("tasks.update", {"id": "high", "status": "done", "agent_id": "w2", "outputs": {"ok": True}})
        assert done["outputs"] == {"ok": True}


def test_a_lease_that_runs_out_puts_the_task_back(backend_daemon: DaemonProc) -> None:
    with Client(backend_daemon.socket_path) as c:
        c.call("tasks.create", {"id": "short", "type": "job", "max_attempts": 2})
        c.call("tasks.claim", {"agent_id": "w1", "lease_s": 1})
        back = within(10.0, lambda: (t := c.call("tasks.get", {"id": "short"}))["status"] == "pending" and t)
        assert back["lease_owner"] is None and back["attempts"] == 1
        # recorded in the log too (its event is written once the change is durable: it may follow the read above)
        expired = within(10.0, lambda: c.call("log.by_type", {"types": ["task.lease_expired"]})["events"])
        assert [e["task_id"] for e in expired] == ["short"]


def test_concurrent_claims_hand_out_every_task_once(backend_daemon: DaemonProc) -> None:
    with Client(backend_daemon.socket_path) as c:
        for i in range(40):
            c.call("tasks.create", {"id": f"j{i}", "type": "job"})
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        with Client(backend_daemon.socket_path) as c:
            while (task := c.call("tasks.claim", {"agent_id": name})["task"]) is not None:
                with lock:
                    claimed.append(task["id"])

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(f"j{i}" for i in range(40))
