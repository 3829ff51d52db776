"""Durable consumer groups through a real daemon: resume after either side restarts, one live
subscriber per group and conversation, acks that only move forward, a damaged file."""

from __future__ import annotations

import json
import signal
import time
from itertools import islice
from typing import Any

from sidecar_client import Client, RpcError

from tests.daemon.conftest import DaemonProc, daemon, start_daemon  # noqa: F401


def append(c: Client, n: int, cid: str = "g1") -> list[int]:
    return [
        c.call("log.append", {"conversation_id": cid, "type": "work.item", "data": {"n": i}})["seq"] for i in range(n)
    ]


def seqs(c: Client, params: dict[str, Any], n: int) -> list[int]:
    return [e["seq"] for e in islice(c.subscribe(params), n)]


def refused(call: Any) -> RpcError:
    try:
        call()
    except RpcError as exc:
        return exc
    raise AssertionError("not refused")


def on_disk(d: DaemonProc, group: str, cid: str, want: int, timeout: float = 10.0) -> int | None:
    """The group's position as written to groups.json, once it is ``want`` (or the deadline)."""
    deadline = time.monotonic() + timeout
    path = d.data_dir / "groups.json"
    found = None
    while True:
        if path.exists():
            entries = json.loads(path.read_text())["groups"]
            found = {(e["group"], e["conversation_id"]): e["acked_seq"] for e in entries}.get((group, cid))
        if found == want or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_a_group_resumes_after_its_ack_when_the_client_comes_back(daemon: DaemonProc) -> None:  # noqa: F811
    with Client(daemon.socket_path) as c:
        append(c, 6)
        with Client(daemon.socket_path) as consumer:
            assert seqs(consumer, {"conversation_id": "g1", "group": "idx"}, 4) == [1, 2, 3, 4]
            assert consumer.call("log.ack", {"group": "idx", "conversation_id": "g1", "seq": 3})["acked_seq"] == 3
        with Client(daemon.socket_path) as again:  # a new process of the same consumer
            assert seqs(again, {"conversation_id": "g1", "group": "idx"}, 3) == [4, 5, 6]  # after the ack, no gap
        with Client(daemon.socket_path) as fresh:  # another group starts where it asks
            assert seqs(fresh, {"conversation_id": "g1", "group": "audit", "from_seq": 5}, 2) == [5, 6]
        # a group has a position once it acks: "audit" read but never acked
        assert c.call("log.groups")["groups"] == [{"group": "idx", "conversation_id": "g1", "acked_seq": 3, "lag": 3}]


def test_acks_move_forward_only_and_not_past_the_end(daemon: DaemonProc) -> None:  # noqa: F811
    with Client(daemon.socket_path) as c:
        append(c, 3)
        ack = {"group": "idx", "conversation_id": "g1"}
        assert c.call("log.ack", {**ack, "seq": 2})["acked_seq"] == 2
        assert c.call("log.ack", {**ack, "seq": 1})["acked_seq"] == 2  # never back
        beyond = refused(lambda: c.call("log.ack", {**ack, "seq": 4}))
        assert beyond.code == -32602 and beyond.data["last_seq"] == 3
        assert refused(lambda: c.call("log.ack", {**ack, "seq": 1, "conversation_id": "none"})).code == -32602
        assert refused(lambda: c.call("log.subscribe", {"group": "idx"})).code == -32602  # which conversation?
        assert refused(lambda: c.call("log.ack", {**ack, "group": "../x", "seq": 1})).code == -32602
        assert c.call("log.groups")["groups"] == [{"group": "idx", "conversation_id": "g1", "acked_seq": 2, "lag": 1}]


def test_one_live_subscriber_per_group_until_its_connection_closes(daemon: DaemonProc) -> None:  # noqa: F811
    with Client(daemon.socket_path) as c:
        append(c, 2)
        first = Client(daemon.socket_path)
        first.call("log.subscribe", {"conversation_id": "g1", "group": "idx"})
        second = refused(lambda: c.call("log.subscribe", {"conversation_id": "g1", "group": "idx"}))
        assert second.code == -32001 and second.data == {"group": "idx", "conversation_id": "g1"}
        other = c.call("log.subscribe", {"conversation_id": "g2", "group": "idx"})  # another conversation: free
        assert other["subscription"] > 0
        first.close()
        deadline = time.monotonic() + 10
        while True:  # the daemon notices the close in its own time
            try:
                taken = c.call("log.subscribe", {"conversation_id": "g1", "group": "idx"})
                break
            except RpcError as exc:
                assert exc.code == -32001 and time.monotonic() < deadline
                time.sleep(0.02)
        assert taken["subscription"] > 0


def test_positions_survive_sigterm_and_kill_9(start_daemon) -> None:  # noqa: F811
    d = start_daemon()
    with Client(d.socket_path) as c:
        append(c, 5)
        c.call("log.ack", {"group": "idx", "conversation_id": "g1", "seq": 2})
    assert d.stop() == 0  # a clean stop writes the last acks
    assert on_disk(d, "idx", "g1", 2, timeout=0) == 2  # already there: written on the way out
    d = start_daemon(data_dir=d.data_dir, socket_path=d.socket_path)
    with Client(d.socket_path) as c:
        assert seqs(c, {"conversation_id": "g1", "group": "idx"}, 3) == [3, 4, 5]
        c.call("log.ack", {"group": "idx", "conversation_id": "g1", "seq": 4})
    assert on_disk(d, "idx", "g1", 4) == 4  # batched, yet soon on disk
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    d = start_daemon(data_dir=d.data_dir, socket_path=d.socket_path)
    with Client(d.socket_path) as c:
        assert seqs(c, {"conversation_id": "g1", "group": "idx"}, 1) == [5]


def test_a_damaged_groups_file_is_kept_aside_and_the_groups_start_over(start_daemon, tmp_path) -> None:  # noqa: F811
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "groups.json").write_text('{"groups": [{"group": 7}]')
    d = start_daemon(data_dir=data)
    with Client(d.socket_path) as c:
        append(c, 2)
        assert seqs(c, {"conversation_id": "g1", "group": "idx"}, 2) == [1, 2]  # from the start: repeated, not lost
    assert list((data / "archive").glob("groups.json.*.invalid"))
    assert "groups.file_refused" in d.stderr()
