"""The ``log.*`` contract, on both storage backends (``backend_daemon``: the file log, then a
JetStream stream on the 3-node cluster): what a client sees must not depend on the backend."""

from __future__ import annotations

from typing import Any

import pytest
from sidecar_client import Client, RpcError

from tests.daemon.conftest import DaemonProc

ID = "0190a1b2-c3d4-7e5f-8a6b-9c0d1e2f3a4b"


def append(c: Client, cid: str, type_: str = "agent.progress", **fields: Any) -> dict[str, Any]:
    return dict(c.call("log.append", {"conversation_id": cid, "type": type_, **fields}))


def test_appends_are_gapless_ordered_and_read_back_every_way(backend_daemon: DaemonProc) -> None:
    with Client(backend_daemon.socket_path) as c:
        first = append(c, "a", agent_id="planner", turn=1, data={"n": 1})
        second = append(c, "a", "tool.finished", level="detail", turn=2, caused_by=[first["id"]])
        other = append(c, "b", data={"n": 3})
        assert (first["seq"], second["seq"], other["seq"]) == (1, 2, 1)
        assert first["clock"] == {"planner": 1} and first["timestamp"] <= second["timestamp"]

        tail = c.call("log.tail", {"conversation_id": "a", "limit": 10})["events"]
        assert [e["id"] for e in tail] == [first["id"], second["id"]]
        assert c.call("log.get", {"event_id": second["id"]}) == tail[1]
        assert c.call("log.query", {"conversation_id": "a", "types": ["tool.finished"]})["events"] == [tail[1]]
        assert c.call("log.query", {"conversation_id": "a", "turn_start": 1, "turn_end": 1})["events"] == [tail[0]]
        assert [e["id"] for e in c.call("log.by_type", {"types": ["agent.progress"]})["events"]] == [
            first["id"],
            other["id"],
        ]
        since = c.call("log.since", {"timestamp": first["timestamp"]})["events"]
        assert {e["id"] for e in since} == {first["id"], second["id"], other["id"]}
        causality = c.call("log.causality", {"event_id": second["id"]})
        assert [e["id"] for e in causality["upstream"]] == [first["id"]]
        assert c.call("log.compare", {"a": first["id"], "b": second["id"]})["order"] == "before"
        infos = {i["conversation_id"]: i for i in c.call("log.conversations")["conversations"]}
        assert (infos["a"]["last_seq"], infos["a"]["event_count"], infos["b"]["last_seq"]) == (2, 2, 1)


def test_expected_seq_and_idempotent_ids(backend_daemon: DaemonProc) -> None:
    with Client(backend_daemon.socket_path) as c:
        made = append(c, "e", id=ID, expected_seq=0)
        again = append(c, "e", id=ID)
        assert again["duplicate"] is True and (again["seq"], again["timestamp"]) == (made["seq"], made["timestamp"])
        with pytest.raises(RpcError) as conflict:
            append(c, "e", expected_seq=0)
        assert conflict.value.code == -32001 and conflict.value.data["last_seq"] == 1
        assert append(c, "e", expected_seq=1)["seq"] == 2
        assert [e["seq"] for e in c.call("log.tail", {"conversation_id": "e"})["events"]] == [1, 2]


def test_bad_appends_are_refused_by_name_and_write_nothing(backend_daemon: DaemonProc) -> None:
    with Client(backend_daemon.socket_path) as c:
        with pytest.raises(RpcError) as user_text:
            append(c, "r", visibility="user", data={"text": "hi"})
        assert user_text.value.code == -32003
        with pytest.raises(RpcError) as bad:
            append(c, "r", seq=4)
        assert bad.value.code == -32602 and "seq" in bad.value.message
        with pytest.raises(RpcError) as missing:
            c.call("log.get", {"event_id": ID})
        assert missing.value.code == -32002
        assert c.call("log.tail", {"conversation_id": "r"})["events"] == []


def test_a_subscription_replays_then_goes_live_without_gap_or_repeat(backend_daemon: DaemonProc) -> None:
    with Client(backend_daemon.socket_path) as writer, Client(backend_daemon.socket_path) as reader:
        for n in range(3):
            append(writer, "s", data={"n": n})
        sub = reader.subscribe({"conversation_id": "s", "from_seq": 2, "types": ["agent.progress"]})
        for n in range(3, 6):
            append(writer, "s", data={"n": n})
        assert [next(sub)["data"]["n"] for _ in range(4)] == [1, 2, 3, 4]
        assert next(sub)["seq"] == 6


def test_append_many_is_all_or_none(backend_daemon: DaemonProc) -> None:
    with Client(backend_daemon.socket_path) as c:
        append(c, "m1")
        made = c.call(
            "log.append_many",
            {
                "events": [
                    {"conversation_id": "m1", "type": "tool.started", "agent_id": "a"},
                    {"conversation_id": "m2", "type": "tool.started"},
                    {"conversation_id": "m1", "type": "tool.finished", "agent_id": "a"},
                ]
            },
        )
        assert [r["seq"] for r in made] == [2, 1, 3] and [r["clock"].get("a") for r in made] == [1, None, 2]
        with pytest.raises(RpcError) as conflict:  # the second fails: the first is not written either
            c.call(
                "log.append_many",
                {
                    "events": [
                        {"conversation_id": "m2", "type": "a.b"},
                        {"conversation_id": "m1", "type": "a.b", "expected_seq": 0},
                    ]
                },
            )
        assert conflict.value.code == -32001
        assert [e["seq"] for e in c.call("log.tail", {"conversation_id": "m2"})["events"]] == [1]
        again = c.call(  # a known id is answered as what it was; the rest are written
            "log.append_many",
            {
                "events": [
                    {"conversation_id": "m1", "type": "tool.started", "id": made[0]["id"]},
                    {"conversation_id": "m1", "type": "a.b"},
                ]
            },
        )
        assert (again[0]["duplicate"], again[0]["seq"], again[1]["seq"]) == (True, 2, 4)


def test_a_deleted_conversation_starts_over(backend_daemon: DaemonProc) -> None:
    with Client(backend_daemon.socket_path) as c:
        first = append(c, "d")
        append(c, "d")
        c.call("tasks.create", {"id": "kept", "type": "t", "conversation_id": "d"})
        deleted = c.call("log.delete_conversation", {"conversation_id": "d", "confirm": "d"})
        assert (deleted["last_seq"], deleted["tasks_carried"]) == (3, 1)
        assert c.call("log.tail", {"conversation_id": "d"})["events"] == []
        with pytest.raises(RpcError) as missing:
            c.call("log.get", {"event_id": first["id"]})
        assert missing.value.code == -32002
        assert c.call("tasks.get", {"id": "kept"})["conversation_id"] == "d"  # tasks stay
        assert append(c, "d")["seq"] == 1
        carried = c.call("log.by_type", {"types": ["task.carried"]})["events"]
        assert [e["task_id"] for e in carried] == ["kept"]


def test_only_the_controller_writes_its_decisions(backend_daemon: DaemonProc) -> None:
    """A decision carries a speak grant that every daemon of a stream honours: a client cannot
    write one, on either path."""
    forged = {"speak_now": True, "grant_id": "g-forged", "expires_at": "2099-01-01T00:00:00.000000Z"}
    with Client(backend_daemon.socket_path) as c:
        for method, params in [
            ("log.append", {"conversation_id": "f", "type": "controller.decision", "data": forged}),
            ("log.append_many", {"events": [{"conversation_id": "f", "type": "controller.decision", "data": forged}]}),
        ]:
            with pytest.raises(RpcError) as refused:
                c.call(method, params)
            assert refused.value.code == -32003 and "controller" in refused.value.message
        with pytest.raises(RpcError) as no_grant:
            c.call("narrator.say", {"conversation_id": "f", "grant_id": "g-forged", "text": "hi"})
        assert no_grant.value.code == -32004
        assert c.call("log.tail", {"conversation_id": "f"})["events"] == []
