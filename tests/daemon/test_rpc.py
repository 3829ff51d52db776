"""JSON-RPC over the real socket: the specification's examples, framing limits, concurrency."""

from __future__ import annotations

import json
import threading
import uuid

from sidecar_client import Client

from tests.daemon.conftest import Raw


def test_spec_examples_over_the_socket(daemon) -> None:
    raw = Raw(daemon.socket_path)
    raw.send('{"jsonrpc": "2.0", "method": "sys.health", "id": 1}\n')
    assert raw.recv()["result"]["status"] == "ok"
    raw.send('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}\n')
    assert raw.recv() == {
        "jsonrpc": "2.0",
        "id": "1",
        "error": {"code": -32601, "message": "Method not found: 'foobar'"},
    }
    raw.send('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]\n')
    reply = raw.recv()
    assert reply["error"]["code"] == -32700 and reply["id"] is None
    raw.send("[]\n")
    assert raw.recv()["error"]["code"] == -32600
    raw.send("[1,2,3]\n")
    assert [r["error"]["code"] for r in raw.recv()] == [-32600, -32600, -32600]
    batch = [
        {"jsonrpc": "2.0", "method": "sys.health", "id": "a"},
        {"jsonrpc": "2.0", "method": "log.append", "params": {"conversation_id": "n", "type": "x.y"}},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "log.tail", "params": {"conversation_id": "n"}, "id": "b"},
    ]
    raw.send(json.dumps(batch) + "\n")
    replies = {r["id"]: r for r in raw.recv()}
    assert set(replies) == {"a", None, "b"} and replies[None]["error"]["code"] == -32600
    raw.send('[{"jsonrpc": "2.0", "method": "log.append", "params": {"conversation_id": "n", "type": "x.y"}}]\n')
    # An all-notification batch owes nothing; its effect shows up without any reply.
    for attempt in range(1000):
        raw.send(
            json.dumps(
                {"jsonrpc": "2.0", "id": 100 + attempt, "method": "log.tail", "params": {"conversation_id": "n"}}
            )
            + "\n"
        )
        reply = raw.recv()
        assert reply["id"] == 100 + attempt  # the next line is the answer to this request
        if len(reply["result"]["events"]) == 2:
            break
    assert [e["seq"] for e in reply["result"]["events"]] == [1, 2]
    raw.close()


def test_wrong_params_are_invalid_params(daemon) -> None:
    raw = Raw(daemon.socket_path)
    raw.send('{"jsonrpc":"2.0","id":1,"method":"log.tail","params":{"conversation_id":"../etc","limit":5}}\n')
    assert raw.recv()["error"]["code"] == -32602
    raw.send('{"jsonrpc":"2.0","id":2,"method":"log.append","params":{"conversation_id":"c","type":"a","bogus":1}}\n')
    err = raw.recv()["error"]
    assert err["code"] == -32602 and "bogus" in err["message"]
    raw.send('{"jsonrpc":"2.0","id":3,"method":"log.get","params":{"event_id":"' + str(uuid.uuid4()) + '"}}\n')
    assert raw.recv()["error"]["code"] == -32002
    raw.close()
    assert not list((daemon.data_dir / "logs").glob("*etc*"))


def test_oversize_message_gets_an_error_and_the_connection_closes(start_daemon) -> None:
    d = start_daemon(config_text="[server]\nmax_message_bytes = 4096\n")
    raw = Raw(d.socket_path)
    big = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "log.append",
        "params": {"conversation_id": "c", "type": "a.b", "data": {"x": "y" * 10_000}},
    }
    raw.send(json.dumps(big) + "\n")
    reply = raw.recv()
    assert reply["error"]["code"] == -32600 and "max_message_bytes" in reply["error"]["message"]
    assert raw.closed()
    with Client(d.socket_path) as c:  # the daemon and the data are whole
        assert c.call("log.tail", {"conversation_id": "c"})["events"] == []
        assert c.call("sys.health")["status"] == "ok"


def test_replies_come_out_of_order_matched_by_id(daemon) -> None:
    """A slow request (a full scan) does not hold back fast ones sent after it."""
    with Client(daemon.socket_path) as c:
        c.call("log.append_many", {"events": [{"conversation_id": "big", "type": "a.b"} for _ in range(3000)]})
    raw = Raw(daemon.socket_path)
    slow = {"jsonrpc": "2.0", "id": "slow", "method": "log.query", "params": {"agent_ids": ["nobody"], "limit": 10}}
    fast = [{"jsonrpc": "2.0", "id": f"f{i}", "method": "sys.health"} for i in range(20)]
    raw.send("".join(json.dumps(m) + "\n" for m in [slow, *fast]))
    ids = [raw.recv()["id"] for _ in range(21)]
    assert sorted(ids) == sorted(["slow"] + [f"f{i}" for i in range(20)])
    assert ids[0] != "slow"
    raw.close()


def test_many_concurrent_clients(daemon) -> None:
    acked: list[list[dict]] = [[] for _ in range(100)]

    def worker(i: int) -> None:
        with Client(daemon.socket_path) as c:
            for _ in range(10):
                acked[i].append(c.call("log.append", {"conversation_id": "crowd", "type": "a.b", "agent_id": f"a{i}"}))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    with Client(daemon.socket_path) as c:
        events = c.call("log.tail", {"conversation_id": "crowd", "limit": 5000})["events"]
        stats = c.call("sys.stats")
    assert [e["seq"] for e in events] == list(range(1, 1001))
    on_disk = {e["id"]: e["seq"] for e in events}
    assert all(on_disk[a["id"]] == a["seq"] for acks in acked for a in acks)
    assert stats["appends"] >= 1000 and stats["connections_total"] >= 101
    assert stats["mean_batch"] >= 1


def test_rpc_discover_is_generated_from_the_schemas(daemon) -> None:
    with Client(daemon.socket_path) as c:
        doc = c.call("rpc.discover")
    assert doc["openrpc"].startswith("1.")
    names = {m["name"] for m in doc["methods"]}
    for name in [
        "sys.health",
        "sys.stats",
        "rpc.discover",
        "log.append",
        "log.append_many",
        "log.tail",
        "log.since",
        "log.by_type",
        "log.query",
        "log.get",
        "log.causality",
        "log.conversations",
        "log.subscribe",
        "log.unsubscribe",
    ]:
        assert name in names
    append = next(m for m in doc["methods"] if m["name"] == "log.append")
    params = {p["name"]: p for p in append["params"]}
    assert params["conversation_id"]["required"] and not params["data"]["required"]
    assert "pattern" in json.dumps(params["conversation_id"]["schema"])
    assert "NewEvent" in doc["components"]["schemas"] or "Event" in doc["components"]["schemas"]


def test_on_asyncio_s_own_loop_too(start_daemon) -> None:
    """``[server] event_loop = "asyncio"``: the same answers, pipelined, in order of readiness."""
    d = start_daemon(config_text='[server]\nevent_loop = "asyncio"\n')
    raw = Raw(d.socket_path)
    lines = [
        {"jsonrpc": "2.0", "id": i, "method": "log.append", "params": {"conversation_id": "c", "type": "a.b"}}
        for i in range(1, 6)
    ]
    raw.send("".join(json.dumps(line) + "\n" for line in lines) + '{"jsonrpc":"2.0","id":9,"method":"sys.health"}\n')
    replies = {r["id"]: r for r in (raw.recv() for _ in range(6))}
    assert sorted(r["result"]["seq"] for i, r in replies.items() if i != 9) == [1, 2, 3, 4, 5]
    assert replies[9]["result"]["status"] == "ok"
    raw.close()


def test_past_max_inflight_lines_wait_and_every_one_is_answered(start_daemon) -> None:
    """Two in flight at most: the rest of a long pipelined write waits (the daemon stops
    reading), batches wait for room for their members, and nothing is lost or reordered."""
    d = start_daemon(config_text="[server]\nmax_inflight = 2\n")
    raw = Raw(d.socket_path)
    append = {"jsonrpc": "2.0", "method": "log.append", "params": {"conversation_id": "c", "type": "a.b"}}
    out = [json.dumps({**append, "id": i}) for i in range(1, 201)]
    batch = [{**append, "id": 1000 + i} for i in range(5)]
    out.insert(100, json.dumps(batch))
    out.append('{"jsonrpc":"2.0","id":999,"method":"log.tail","params":{"conversation_id":"c","limit":1}}')
    raw.send("\n".join(out) + "\n")
    got = [raw.recv() for _ in range(202)]
    singles = {r["id"]: r["result"]["seq"] for r in got if isinstance(r, dict) and r["id"] < 999}
    assert sorted(singles) == list(range(1, 201))
    members = next(r for r in got if isinstance(r, list))
    assert sorted(m["id"] for m in members) == [1000, 1001, 1002, 1003, 1004]
    assert sorted([*singles.values(), *(m["result"]["seq"] for m in members)]) == list(range(1, 206))
    tail = next(r for r in got if isinstance(r, dict) and r["id"] == 999)
    assert tail["result"]["events"][0]["seq"] >= 204  # taken with at most one request still in flight
    raw.close()
