"""log.subscribe: replay then live with no gap and no duplicate; slow subscribers dropped loudly."""

from __future__ import annotations

import json
import socket
import threading

from sidecar_client import Client


def append(path: str, cid: str, n: int, **extra: object) -> list[dict]:
    with Client(path) as c:
        return [c.call("log.append", {"conversation_id": cid, "type": "a.b", **extra}) for _ in range(n)]


def test_replay_then_live_with_a_writer_racing(daemon) -> None:
    append(daemon.socket_path, "c1", 300)
    got: list[int] = []
    done = threading.Event()

    def writer() -> None:
        append(daemon.socket_path, "c1", 700)
        done.set()

    with Client(daemon.socket_path) as sub:
        events = sub.subscribe({"conversation_id": "c1", "from_seq": 1})
        t = threading.Thread(target=writer)
        t.start()  # appends land while the replay is still reading history
        for event in events:
            got.append(event["seq"])
            if len(got) == 1000:
                break
        t.join(timeout=60)
    assert got == list(range(1, 1001))


def test_live_only_and_filters(daemon) -> None:
    append(daemon.socket_path, "old", 5)
    with Client(daemon.socket_path) as sub:
        events = sub.subscribe({"types": ["task.updated"], "visibility": "status"})
        with Client(daemon.socket_path) as w:
            w.call("log.append", {"conversation_id": "x", "type": "a.b", "visibility": "status"})
            w.call("log.append", {"conversation_id": "x", "type": "task.updated", "visibility": "internal"})
            w.call("log.append", {"conversation_id": "y", "type": "task.updated", "visibility": "status"})
            w.call("log.append", {"conversation_id": "x", "type": "task.updated", "visibility": "status"})
        first, second = next(events), next(events)
    assert [(e["conversation_id"], e["seq"]) for e in (first, second)] == [("y", 1), ("x", 3)]


def test_from_seq_in_the_middle(daemon) -> None:
    append(daemon.socket_path, "m", 20)
    with Client(daemon.socket_path) as sub:
        events = sub.subscribe({"conversation_id": "m", "from_seq": 15})
        assert [next(events)["seq"] for _ in range(6)] == [15, 16, 17, 18, 19, 20]


def test_unsubscribe(daemon) -> None:
    with Client(daemon.socket_path) as c:
        sub = c.call("log.subscribe", {"conversation_id": "u"})["subscription"]
        assert c.call("sys.stats")["subscriptions"] == 1
        assert c.call("log.unsubscribe", {"subscription": sub}) == {"ok": True}
        assert c.call("sys.stats")["subscriptions"] == 0
        err = None
        try:
            c.call("log.unsubscribe", {"subscription": sub})
        except Exception as exc:  # RpcError
            err = exc
        assert err is not None and err.code == -32002


def test_a_stalled_subscriber_overflows_beside_a_fast_writer(start_daemon) -> None:
    d = start_daemon(config_text="[server]\nsubscriber_queue = 50\n")
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(d.socket_path)
    raw.sendall(b'{"jsonrpc":"2.0","id":1,"method":"log.subscribe","params":{"conversation_id":"fast"}}\n')
    reader = raw.makefile("rb")
    assert json.loads(reader.readline())["result"]["subscription"] >= 1
    # The subscriber now reads nothing while a writer appends as fast as it can.
    pad = "x" * 2000
    with Client(d.socket_path) as w:
        for _ in range(40):
            w.call("log.append_many", {"events": [{"conversation_id": "fast", "type": "a.b", "data": {"p": pad}}] * 50})
        assert w.call("sys.health")["status"] == "ok"  # the writer was never held up
        assert w.call("sys.stats")["subscriptions"] == 0  # the laggard was dropped
    seqs: list[int] = []
    raw.settimeout(20)
    while True:
        message = json.loads(reader.readline())
        if message["method"] == "log.overflow":
            break
        seqs.append(message["params"]["event"]["seq"])
    assert seqs == list(range(1, len(seqs) + 1))  # what did arrive is whole and in order
    assert len(seqs) < 2000
    params = message["params"]
    assert params["conversation_id"] == "fast" and params["from_seq"] == len(seqs) + 1  # where to resume
    raw.close()
