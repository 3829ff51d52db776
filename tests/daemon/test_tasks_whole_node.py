"""``tasks.create`` takes a task's own fields, ``outputs`` included, over the wire."""

from __future__ import annotations

import pytest
from sidecar_client import Client, RpcError


def test_tasks_create_keeps_outputs_and_reports_them_in_the_audit_event(daemon) -> None:
    with Client(daemon.socket_path) as c:
        made = c.call(
            "tasks.create",
            {"id": "t1", "type": "build", "conversation_id": "c1", "inputs": {"a": 1}, "outputs": {"draft": "x"}},
        )
        assert made["outputs"] == {"draft": "x"} and made["version"] == 1
        assert c.call("tasks.get", {"id": "t1"})["outputs"] == {"draft": "x"}
        created = c.call("log.tail", {"conversation_id": "c1"})["events"][-1]
        assert created["type"] == "task.created" and created["data"]["task"]["outputs"] == {"draft": "x"}
        with pytest.raises(RpcError) as info:
            c.call("tasks.create", {"id": "t2", "type": "build", "outputs": "not an object"})
        assert info.value.code == -32602
        with pytest.raises(RpcError) as info:
            c.call("tasks.create", {"id": "t3", "type": "build", "version": 4})  # the graph's to set
        assert info.value.code == -32602 and "version" in str(info.value.message) + str(info.value.data)
