"""Errors a person can act on, over the real socket: -32601 says what was probably meant,
-32602 says where, what would do and what came, and every server-defined error a method
answers with is one its rpc.discover entry lists (so the reference cannot promise less)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from sidecar.rpc.dispatch import ERRORS
from tests.daemon.conftest import DaemonProc, Raw


class Caller:
    """One raw connection: a request out, its answer back (notifications on the way skipped)."""

    def __init__(self, socket_path: str) -> None:
        self.raw = Raw(socket_path)
        self.next_id = 0

    def reply(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.next_id += 1
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            request["params"] = params
        self.raw.send(json.dumps(request) + "\n")
        while True:
            message = self.raw.recv()
            assert isinstance(message, dict)
            if message.get("id") == self.next_id:
                return message

    def error(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = self.reply(method, params)
        assert "error" in answer, f"{method} {params} succeeded: {answer}"
        return answer["error"]

    def declared(self, method: str) -> set[int]:
        doc = self.reply("rpc.discover")["result"]
        return {e["code"] for e in next(m for m in doc["methods"] if m["name"] == method)["errors"]}

    def close(self) -> None:
        self.raw.close()


@pytest.fixture
def caller(daemon: DaemonProc) -> Any:
    c = Caller(daemon.socket_path)
    yield c
    c.close()


def test_an_unknown_method_gets_suggestions(caller: Caller) -> None:
    error = caller.error("tasks.list", {})
    assert error["code"] == -32601 and error["data"] == {"suggestions": ["tasks.list_active"]}
    assert "did you mean tasks.list_active?" in error["message"]
    assert caller.error("log.gett", {"event_id": str(uuid.uuid4())})["data"]["suggestions"] == ["log.get"]
    plain = caller.error("foobar")  # nothing close: the specification's own answer, no data
    assert plain == {"code": -32601, "message": "Method not found: 'foobar'"}


def test_a_bad_choice_lists_the_allowed_values(caller: Caller) -> None:
    error = caller.error("log.append", {"conversation_id": "c1", "type": "agent.progress", "level": "error"})
    assert error["code"] == -32602
    data = error["data"]
    assert data["path"] == "$.level" and data["field"] == "level" and data["got"] == "error"
    assert sorted(data["allowed"]) == ["action", "decision", "detail", "milestone", "state"]
    assert all(level in error["message"] for level in data["allowed"])


def test_a_bad_id_deep_in_a_batch_is_pointed_at_in_plain_words(caller: Caller) -> None:
    events = [{"conversation_id": "c1", "type": "a.b"} for _ in range(5)]
    events[3]["conversation_id"] = "../etc/passwd"
    error = caller.error("log.append_many", {"events": events})
    data = error["data"]
    assert data["path"] == "$.events[3].conversation_id" and data["field"] == "events[3].conversation_id"
    assert data["got"] == "../etc/passwd"
    assert data["expected"].startswith("1 to 128 characters: letters, digits, '.', '_' or '-'")
    assert "(?!" not in error["message"] and "\\\\" not in error["message"]  # no regex, no doubled escapes
    assert caller.reply("log.tail", {"conversation_id": "c1"})["result"]["events"] == []  # all or none


def test_bounds_types_and_unknown_fields_say_what_would_do(caller: Caller) -> None:
    data = caller.error("log.tail", {"conversation_id": "c1", "limit": "many"})["data"]
    assert data == {"path": "$.limit", "field": "limit", "expected": "an integer from 0 to 10000", "got": "many"}
    error = caller.error("log.get", {"id": str(uuid.uuid4())})
    assert error["data"]["path"] == "$.id" and error["data"]["allowed"] == ["event_id"]
    assert "did you mean event_id?" in error["message"]
    missing = caller.error("log.append", {"conversation_id": "c1"})["data"]
    assert missing["path"] == "$.type" and "got" not in missing and "dotted lower case" in missing["expected"]
    long = caller.error("tasks.get", {"id": "x" * 5000 + " "})["data"]
    assert long["got"] == "x" * 200 + "..."


@pytest.mark.parametrize(
    ("method", "params", "code"),
    [
        ("log.get", {"event_id": str(uuid.uuid4())}, -32002),
        ("log.causality", {"event_id": str(uuid.uuid4())}, -32002),
        ("log.append", {"conversation_id": "c1", "type": "chat.said", "visibility": "user"}, -32003),
        ("log.append", {"conversation_id": "c1", "type": "a.b", "expected_seq": 7}, -32001),
        ("log.append_many", {"events": [{"conversation_id": "c1", "type": "a.b", "visibility": "user"}]}, -32003),
        ("log.unsubscribe", {"subscription": 99}, -32002),
        ("narrator.say", {"conversation_id": "c1", "grant_id": "no-such-grant", "text": "hi"}, -32004),
        ("tasks.get", {"id": "nope"}, -32002),
        ("tasks.update", {"id": "nope", "status": "running"}, -32002),
        ("tasks.update", {"id": "t1", "expected_version": 9, "status": "running"}, -32001),
        ("summary.get", {"conversation_id": "c1"}, -32002),
        ("summary.snapshot", {"conversation_id": "c1", "summary_ref": "0" * 64}, -32002),
    ],
)
def test_each_server_error_is_one_the_method_declares(
    daemon: DaemonProc, caller: Caller, method: str, params: dict[str, Any], code: int
) -> None:
    caller.reply("tasks.create", {"type": "t", "id": "t1"})
    error = caller.error(method, params)
    assert error["code"] == code and code in caller.declared(method)
    assert "rpc.undeclared_error" not in daemon.stderr()


def test_too_many_subscriptions_is_a_declared_overload(start_daemon: Any) -> None:
    d = start_daemon(config_text="[server]\nmax_subscriptions = 1\n")
    caller = Caller(d.socket_path)
    try:
        assert "result" in caller.reply("log.subscribe", {"conversation_id": "c1"})
        error = caller.error("log.subscribe", {"conversation_id": "c2"})
        assert error["code"] == -32005 and -32005 in caller.declared("log.subscribe")
    finally:
        caller.close()


def test_every_example_runs_against_a_real_daemon(daemon: DaemonProc, caller: Caller) -> None:
    """The reference's examples are real calls: each succeeds, or fails with an error its method
    declares (log.get's made-up id is -32002, narrator.say's made-up grant -32004), and none
    is refused as malformed."""
    doc = caller.reply("rpc.discover")["result"]
    outcomes = {}
    for method in sorted(doc["methods"], key=lambda m: m["name"]):  # tasks.create comes before tasks.update
        (example,) = method["examples"]
        answer = caller.reply(method["name"], {p["name"]: p["value"] for p in example["params"]})
        code = answer["error"]["code"] if "error" in answer else None
        declared = {e["code"] for e in method["errors"]}
        assert code is None or code in declared, f"{method['name']}: {answer}"
        outcomes[method["name"]] = code
    assert outcomes["log.append"] is None and outcomes["tasks.update"] is None and outcomes["log.get"] == -32002
    assert outcomes["narrator.say"] == -32004 and ERRORS[-32004].name == "gate closed"
    assert "rpc.undeclared_error" not in daemon.stderr()
