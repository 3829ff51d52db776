"""Playbooks over the socket: list and match, a new file in data/playbooks/ taken in while the
daemon runs, and the decision after an error carrying its playbook into the narrator's prompt."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from sidecar_client import Client, RpcError

CONFIG = "[controller]\nmin_gap_s = 0.2\nidle_timeout_s = 600.0\ngrant_ttl_s = 60.0\n"


def test_list_and_match(daemon) -> None:
    with Client(daemon.socket_path) as c:
        listed = {p["id"]: p for p in c.call("playbooks.list")["playbooks"]}
        assert listed["tool-timeout"]["matches"] == ["tool.timeout", "tool.timed_out"]
        assert set(listed["agent-error"]) == {"id", "title", "matches"}
        error = c.call("log.append", {"conversation_id": "p1", "type": "agent.error", "data": {"msg": "boom"}})
        found = c.call("playbooks.match", {"event_id": error["id"]})
        assert found["id"] == "agent-error" and found["source"] == "builtin" and "Tell the user" in found["text"]
        quiet = c.call("log.append", {"conversation_id": "p1", "type": "agent.progress"})
        assert c.call("playbooks.match", {"event_id": quiet["id"]}) is None
        with pytest.raises(RpcError) as info:
            c.call("playbooks.match", {"event_id": str(uuid.uuid4())})
        assert info.value.code == -32002


def test_a_playbook_dropped_into_data_playbooks_is_taken_in_while_running(daemon) -> None:
    folder = Path(daemon.data_dir) / "playbooks"
    with Client(daemon.socket_path) as c:
        deadline = time.monotonic() + 20
        while not folder.is_dir():  # the daemon makes it (0700) when it starts watching
            assert time.monotonic() < deadline
            c.call("sys.health")
        (folder / "deploy.md").write_text(
            '+++\nid = "deploy"\ntitle = "A deploy failed"\nmatches = ["deploy.failed"]\n+++\nSay which service.\n'
        )
        while "deploy" not in {p["id"] for p in c.call("playbooks.list")["playbooks"]}:
            assert time.monotonic() < deadline, "the new playbook never appeared"
        failed = c.call("log.append", {"conversation_id": "p2", "type": "deploy.failed"})
        assert c.call("playbooks.match", {"event_id": failed["id"]})["text"] == "Say which service."


def test_the_decision_after_an_error_carries_its_playbook_into_the_prompt(start_daemon) -> None:
    d = start_daemon(config_text=CONFIG)
    with Client(d.socket_path) as watcher, Client(d.socket_path) as c:
        decisions = watcher.subscribe({"conversation_id": "p3", "types": ["controller.decision"]})
        c.call("log.append", {"conversation_id": "p3", "type": "tool.timeout", "data": {"tool": "grep"}})
        decision = next(decisions)
        assert decision["data"]["playbook"] == "tool-timeout" and decision["data"]["reason"] == "error"
        status = c.call("controller.status", {"conversation_id": "p3"})
        assert status["last_decision"]["playbook"] == "tool-timeout"
        prompt = c.call("narrator.prompt", {"conversation_id": "p3", "budget_tokens": 2000})
        assert "## Playbook: A tool timed out" in prompt["messages"][0]["content"]

        # The grant spent, the next decision (the user asking) follows no new failure: no playbook.
        c.call("narrator.say", {"conversation_id": "p3", "grant_id": decision["data"]["grant_id"], "text": "On it."})
        c.call("chat.user_message", {"conversation_id": "p3", "text": "and now?"})
        later = next(decisions)
        assert later["data"]["reason"] == "user_message" and "playbook" not in later["data"]
        prompt = c.call("narrator.prompt", {"conversation_id": "p3", "budget_tokens": 2000})
        assert "## Playbook" not in prompt["messages"][0]["content"]
