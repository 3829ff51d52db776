"""The gate over the socket: only the user and a granted narrator write user-visible text."""

from __future__ import annotations

import pytest
from sidecar_client import Client, RpcError

from tests.controller.test_llm import read_notifications

CONFIG = "[controller]\nmin_gap_s = 0.2\nidle_timeout_s = 600.0\ngrant_ttl_s = 60.0\n"


def error_of(call) -> RpcError:
    with pytest.raises(RpcError) as info:
        call()
    return info.value


def test_user_message_grant_narrator_say(start_daemon) -> None:
    d = start_daemon(config_text=CONFIG)
    with Client(d.socket_path) as watcher, Client(d.socket_path) as c:
        decisions = watcher.subscribe({"conversation_id": "c1", "types": ["controller.decision"]})
        ack = c.call("chat.user_message", {"conversation_id": "c1", "text": "what is going on?"})
        decision = next(decisions)  # the controller answers the waiting user
        data = decision["data"]
        assert data["speak_now"] and data["reason"] == "user_message" and len(data["summary_ref"]) == 64
        assert decision["caused_by"] == [] and decision["seq"] > ack["seq"]
        status = c.call("controller.status", {"conversation_id": "c1"})
        assert (status["gate"], status["grant_id"], status["user_waiting"]) == ("open", data["grant_id"], True)

        said = c.call("narrator.say", {"conversation_id": "c1", "grant_id": data["grant_id"], "text": "All fine."})
        events = c.call("log.tail", {"conversation_id": "c1", "limit": 10})["events"]
        spoken = next(e for e in events if e["seq"] == said["seq"])
        assert (spoken["type"], spoken["visibility"], spoken["data"]["text"]) == (
            "narrator.message",
            "user",
            "All fine.",
        )
        user = next(e for e in events if e["seq"] == ack["seq"])
        assert (user["type"], user["visibility"], user["data"]["text"]) == ("user.message", "user", "what is going on?")

        again = error_of(
            lambda: c.call("narrator.say", {"conversation_id": "c1", "grant_id": data["grant_id"], "text": "Twice?"})
        )
        assert again.code == -32004 and again.data["reason"] == "used"
        unknown = error_of(lambda: c.call("narrator.say", {"conversation_id": "c1", "grant_id": "nope", "text": "x"}))
        assert unknown.data["reason"] == "unknown"
        status = c.call("controller.status", {"conversation_id": "c1"})
        assert (status["gate"], status["user_waiting"]) == ("closed", False)


def test_agents_cannot_speak_to_the_user(daemon) -> None:
    with Client(daemon.socket_path) as c:
        err = error_of(
            lambda: c.call(
                "log.append",
                {"conversation_id": "c1", "type": "agent.reply", "visibility": "user", "data": {"text": "hi"}},
            )
        )
        assert err.code == -32003
        err = error_of(
            lambda: c.call(
                "log.append_many",
                {
                    "events": [
                        {"conversation_id": "c1", "type": "agent.note"},
                        {"conversation_id": "c1", "type": "agent.reply", "visibility": "user"},
                    ]
                },
            )
        )
        assert err.code == -32003
        assert c.call("log.tail", {"conversation_id": "c1"})["events"] == []  # nothing of it was written
        assert c.call("controller.heartbeat", {"conversation_id": "c1", "agent_id": "coder", "task_id": "t1"}) == {
            "ok": True
        }
        assert c.call("controller.status", {"conversation_id": "c1"})["gate"] == "closed"


def test_open_work_is_watched_after_a_restart(start_daemon, tmp_path) -> None:
    config = "[controller]\nidle_timeout_s = 0.3\nmin_gap_s = 0.1\n"
    first = start_daemon(config_text=config)
    with Client(first.socket_path) as c:
        c.call(
            "tasks.create",
            {"type": "long", "id": "t-long", "owner": "coder", "conversation_id": "c7", "status": "running"},
        )
    assert first.stop() == 0
    second = start_daemon(config_text=config, socket_path=first.socket_path)
    # Live only (no replay), so what arrives comes from the new daemon; the read times out at 20 s.
    notes = read_notifications(second.socket_path, {"conversation_id": "c7", "types": ["watchdog.idle"]})
    event = next(notes)["params"]["event"]  # it knows t-long is open, and notices the silence
    assert event["data"]["open_tasks"] == ["t-long"]
