"""Claims under leases through a real daemon: many clients, kill -9, the controller's view."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from sidecar_client import Client, RpcError

from tests.daemon.conftest import DaemonProc, daemon, start_daemon  # noqa: F401


def until(check: Any, timeout: float = 20.0) -> Any:
    """Ask ``check()`` again until it answers something true (leases run on the daemon's clock)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer or time.monotonic() > deadline:
            return answer
        time.sleep(0.02)


def test_concurrent_claims_hand_out_every_task_exactly_once(daemon: DaemonProc) -> None:  # noqa: F811
    with Client(daemon.socket_path) as c:
        for i in range(120):
            c.call("tasks.create", {"id": f"t{i:03d}", "type": "work", "priority": i % 3})
    taken: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def agent(name: str) -> None:
        try:
            with Client(daemon.socket_path) as c:
                mine = taken.setdefault(name, [])
                while (task := c.call("tasks.claim", {"agent_id": name, "lease_s": 60})["task"]) is not None:
                    assert task["lease_owner"] == name and task["status"] == "running"
                    mine.append(task["id"])
                    c.call("tasks.update", {"id": task["id"], "status": "done", "agent_id": name})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(f"agent{n}",)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    every = [tid for ids in taken.values() for tid in ids]
    assert sorted(every) == [f"t{i:03d}" for i in range(120)]  # each once, none missed
    assert sum(1 for ids in taken.values() if ids) > 1  # they really shared the work
    with Client(daemon.socket_path) as c:
        stats = c.call("sys.stats")
        assert stats["tasks_pending"] == 0 and stats["tasks_claims"] >= 120 + 8 and stats["claim_ms_mean"] > 0


def test_kill_9_keeps_every_claim_and_hands_out_nothing_twice(start_daemon) -> None:  # noqa: F811
    d = start_daemon()
    with Client(d.socket_path) as c:
        for i in range(5):
            c.call("tasks.create", {"id": f"t{i}", "type": "work", "conversation_id": "c1"})
        held = [c.call("tasks.claim", {"agent_id": "a", "lease_s": 60})["task"]["id"] for _ in range(3)]
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    again = start_daemon(data_dir=d.data_dir, socket_path=d.socket_path)
    with Client(again.socket_path) as c:
        for tid in held:
            task = c.call("tasks.get", {"id": tid})
            assert task["status"] == "running" and task["lease_owner"] == "a" and task["attempts"] == 1
        others = [c.call("tasks.claim", {"agent_id": "b", "lease_s": 60})["task"] for _ in range(3)]
        assert sorted(t["id"] for t in others if t) == sorted({f"t{i}" for i in range(5)} - set(held))
        assert others[-1] is None
        done = c.call("tasks.update", {"id": held[0], "status": "done", "agent_id": "a"})  # the holder goes on
        assert done["status"] == "done"
        try:
            c.call("tasks.update", {"id": held[1], "status": "done", "agent_id": "b"})
            raise AssertionError("b finished a's task")
        except RpcError as exc:
            assert exc.code == -32001


def test_a_lost_lease_comes_back_and_the_controller_speaks_with_the_playbook(start_daemon) -> None:  # noqa: F811
    d = start_daemon(config_text="[controller]\nmin_gap_s = 0.1\nidle_timeout_s = 600.0\n")
    with Client(d.socket_path) as c:
        c.call("tasks.create", {"id": "crawl", "type": "work", "conversation_id": "c1"})
        c.call("tasks.claim", {"agent_id": "crasher", "lease_s": 1})
        # a heartbeat from the holder renews by its last lease_s; one from anyone else does not
        before = c.call("tasks.get", {"id": "crawl"})["lease_expires_at"]
        c.call("controller.heartbeat", {"conversation_id": "c1", "agent_id": "crasher", "task_id": "crawl"})
        assert c.call("tasks.get", {"id": "crawl"})["lease_expires_at"] > before
        back = until(lambda: (t := c.call("tasks.get", {"id": "crawl"}))["status"] == "pending" and t)
        assert back and back["lease_owner"] is None and back["attempts"] == 1

        def decided() -> list[dict]:
            page = c.call("log.query", {"conversation_id": "c1", "types": ["controller.decision"]})
            return [e for e in page["events"] if e["data"].get("playbook") == "agent-crashed"]

        (decision,) = until(decided)
        expired = c.call("log.query", {"conversation_id": "c1", "types": ["task.lease_expired"]})["events"]
        assert len(expired) == 1 and expired[0]["seq"] < decision["seq"]
        assert c.call("playbooks.match", {"event_id": expired[0]["id"]})["id"] == "agent-crashed"


def test_back_pressure_from_the_config(start_daemon) -> None:  # noqa: F811
    d = start_daemon(config_text="[tasks]\nmax_pending = 2\n")
    with Client(d.socket_path) as c:
        c.call("tasks.create", {"type": "work"})
        c.call("tasks.create", {"type": "work"})
        try:
            c.call("tasks.create", {"type": "work"})
            raise AssertionError("a third pending task was taken")
        except RpcError as exc:
            assert exc.code == -32005 and exc.data == {"pending": 2, "max_pending": 2}
        events = c.call("log.query", {"conversation_id": "system"})["events"]
        kinds = [e["type"] for e in events]
        assert kinds == ["task.created", "task.created", "backpressure.warning", "backpressure.full"]
        assert events[0]["data"]["task"]["conversation_id"] is None  # a task of no conversation: recorded in system
