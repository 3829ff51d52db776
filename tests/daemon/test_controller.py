"""The gate over the socket: only the user and a granted narrator write user-visible text."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
from sidecar_client import Client, RpcError

from tests.support import read_notifications

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


def _next_of(events: Iterable[dict], pred: Callable[[dict], bool]) -> dict:
    """The first of ``events`` (a subscription) that satisfies ``pred``."""
    return next(e for e in events if pred(e))


def test_only_the_chat_itself_opens_the_gate(start_daemon) -> None:
    """log.append may write a user.message or narrator.message, just not with visibility user
    (-32003). Such an event is no user waiting, and no answer to one."""
    d = start_daemon(config_text=CONFIG)
    with Client(d.socket_path) as watcher, Client(d.socket_path) as c:
        decisions = watcher.subscribe({"types": ["controller.decision"]})
        seen = watcher.subscribe({"types": ["user.message", "narrator.message"]})
        for vis in ("internal", "status"):
            c.call("log.append", {"conversation_id": "c1", "type": "user.message", "visibility": vis})
            _next_of(seen, lambda e: e["conversation_id"] == "c1")  # published, so observed
        status = c.call("controller.status", {"conversation_id": "c1"})
        assert (status["gate"], status["user_waiting"], status["reason"]) == ("closed", False, "nothing to say")

        # A real user in c2: once its decision is out, one for c1 (due no later) would be too.
        c.call("chat.user_message", {"conversation_id": "c2", "text": "hello?"})
        decision = next(decisions)
        assert (decision["conversation_id"], decision["data"]["reason"]) == ("c2", "user_message")
        assert not [e for e in c.call("log.tail", {"conversation_id": "c1"})["events"] if e["type"].startswith("c")]
        assert c.call("controller.status", {"conversation_id": "c1"})["gate"] == "closed"

        # A note on the status rail is no answer: c2's user still waits, its grant still stands.
        c.call(
            "log.append",
            {"conversation_id": "c2", "type": "narrator.message", "visibility": "status", "data": {"text": "done"}},
        )
        _next_of(seen, lambda e: e["type"] == "narrator.message")
        status = c.call("controller.status", {"conversation_id": "c2"})
        assert (status["gate"], status["user_waiting"]) == ("open", True)
        assert status["grant_id"] == decision["data"]["grant_id"]


def test_hostile_task_data_does_not_stop_the_controller(start_daemon) -> None:
    """task.updated is open to any client, data and all. Ids that are numbers, lists or
    dicts, owners that are objects: none may stop the controller (a mixed list of ids used
    to crash the watchdog's tick, and the daemon with it) or reach an event it writes."""
    d = start_daemon(config_text="[controller]\nmin_gap_s = 0.1\nidle_timeout_s = 1.0\ngrant_ttl_s = 60.0\n")
    with Client(d.socket_path) as watcher, Client(d.socket_path) as c:
        notes = watcher.subscribe({"conversation_id": "h1", "types": ["task.stalled", "controller.decision"]})
        for task in (
            [1, 2],
            {"id": 5, "status": {}},
            {"id": 5, "status": "running"},
            {"id": ["t"], "status": "running"},
            {"id": "t-ok", "status": "running", "owner": {"name": "coder"}},
            {"id": "t-ok2", "status": [], "owner": "rag"},
        ):
            c.call("log.append", {"conversation_id": "h1", "type": "task.updated", "data": {"task": task}})
        before: list[dict] = []
        for stalled in notes:  # the watchdog speaks up at 1 s, the stall report follows at 2 s
            if stalled["type"] == "task.stalled":
                break
            before.append(stalled)
        assert stalled["task_id"] == "t-ok" and stalled.get("agent_id") is None
        grant_id = _next_of(before, lambda e: e["data"]["reason"] == "idle")["data"]["grant_id"]
        events = c.call("log.tail", {"conversation_id": "h1", "limit": 50})["events"]  # the log reads back
        idle = _next_of(events, lambda e: e["type"] == "watchdog.idle")
        assert idle["data"]["open_tasks"] == ["t-ok"]
        assert c.call("controller.status", {"conversation_id": "h1"})["open_tasks"] == ["t-ok"]

        c.call("narrator.say", {"conversation_id": "h1", "grant_id": grant_id, "text": "t-ok is silent."})
        ack = c.call("chat.user_message", {"conversation_id": "h1", "text": "still there?"})
        answer = _next_of(notes, lambda e: e["type"] == "controller.decision" and e["seq"] > ack["seq"])
        assert (answer["data"]["speak_now"], answer["data"]["reason"]) == (True, "user_message")  # it decides
        assert c.call("sys.health")["status"] == "ok"
    assert d.proc.poll() is None
