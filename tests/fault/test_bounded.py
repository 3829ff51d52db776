"""Many conversations against few descriptors, and lookups that must not stall appends.

Under RLIMIT_NOFILE=128 a daemon with 400 conversations takes group commits across all of
them and answers every cross-conversation read, paging and replay included, in full; a
lookup that has to wait for another process's lock on a log file waits without the writer
lock, so appends go on meanwhile (shown by the order of the answers, not by timing).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import uuid
from pathlib import Path
from typing import Any

from sidecar_client import Client, RpcError

from tests.daemon.conftest import DaemonProc, Raw

CONVERSATIONS = 400
EPOCH = "2000-01-01T00:00:00Z"


def call_batch(raw: Raw, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """One JSON-RPC batch on one line; the results in request order (errors fail the test)."""
    raw.send(
        json.dumps([{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]) + "\n"
    )
    replies = raw.recv()
    assert isinstance(replies, list) and len(replies) == len(calls)
    by_id = {r["id"]: r for r in replies}
    errors = [r["error"] for r in replies if "error" in r]
    assert not errors, errors[:3]
    return [by_id[i]["result"] for i in range(len(calls))]


def fill(d: DaemonProc, rounds: int) -> list[tuple[str, int]]:
    """``rounds`` appends to each of the conversations, each round one batch: the daemon's
    group commit gets all of them at once. Returns every (conversation, seq)."""
    raw = Raw(d.socket_path)
    written = []
    for r in range(rounds):
        calls = [
            (
                "log.append",
                {
                    "conversation_id": f"c{i:03d}",
                    "type": "agent.step" if (i + r) % 3 == 0 else "agent.progress",
                    "visibility": "status" if i % 2 else "internal",
                },
            )
            for i in range(CONVERSATIONS)
        ]
        acks = call_batch(raw, calls)
        assert [a["seq"] for a in acks] == [r + 1] * CONVERSATIONS
        written += [(f"c{i:03d}", r + 1) for i in range(CONVERSATIONS)]
    raw.close()
    return written


def page_through(client: Client, method: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.call(method, {**params, "cursor": cursor} if cursor else params)
        events += page["events"]
        if page["next_cursor"] is None:
            return events
        cursor = page["next_cursor"]
        assert len(events) < 10 * CONVERSATIONS * 2, "the cursor never ends"


def in_order(events: list[dict[str, Any]]) -> bool:
    keys = [(e["timestamp"], e["conversation_id"], e["seq"]) for e in events]
    return keys == sorted(set(keys))


def test_400_conversations_under_128_descriptors(start_daemon) -> None:
    d = start_daemon(max_fds=128)
    written = fill(d, 2)
    with Client(d.socket_path) as c:
        since = page_through(c, "log.since", {"timestamp": EPOCH, "limit": 64})
        assert in_order(since) and sorted((e["conversation_id"], e["seq"]) for e in since) == sorted(written)
        steps = page_through(c, "log.by_type", {"types": ["agent.step"], "limit": 50})
        assert in_order(steps) and steps == [e for e in since if e["type"] == "agent.step"]
        status = page_through(c, "log.query", {"visibility": "status", "levels": ["action"], "limit": 100})
        assert in_order(status) and status == [e for e in since if e["visibility"] == "status"]
        everything = c.call("log.query", {"limit": 100_000})
        assert everything["events"] == since and everything["next_cursor"] is None
        listing = c.call("log.conversations")["conversations"]
        assert len(listing) == CONVERSATIONS and {x["last_seq"] for x in listing} == {2}

        raw = Raw(d.socket_path)  # a raw socket: a replay that dies fails the read, never hangs it
        raw.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "log.subscribe", "params": {"from_seq": 1}}) + "\n")
        assert "subscription" in raw.recv()["result"]
        replayed = []
        while len(replayed) < len(written):
            message = raw.recv()
            assert message.get("method") == "log.event", message
            replayed.append(message["params"]["event"])
        assert replayed == since
        raw.close()

        assert c.call("log.append", {"conversation_id": "c000", "type": "agent.progress"})["seq"] == 3
    assert "Too many open files" not in d.stderr() and "EMFILE" not in d.stderr()
    assert d.stop() == 0


def test_append_many_over_too_many_conversations_is_refused_with_the_limit(start_daemon) -> None:
    d = start_daemon(max_fds=128)
    with Client(d.socket_path) as c:
        wide = [{"conversation_id": f"w{i:04d}", "type": "agent.progress"} for i in range(1000)]
        try:
            c.call("log.append_many", {"events": wide})
            raise AssertionError("1,000 conversations in one all-or-nothing call were taken")
        except RpcError as exc:
            assert exc.code == -32602 and exc.data["conversations"] == 1000
            limit = exc.data["max_conversations"]
            assert 1 < limit < 128 and str(limit) in exc.message
        assert c.call("log.conversations")["conversations"] == []  # all or nothing: nothing
        acks = c.call("log.append_many", {"events": wide[:limit] * 2})
        assert [a["seq"] for a in acks] == [1] * limit + [2] * limit
        assert c.call("sys.health")["status"] in ("ok", "degraded")
    assert d.stop() == 0


def waiting_on(path: Path) -> bool:
    """Whether some process is blocked waiting for a flock on ``path`` (from /proc/locks)."""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return any("->" in line and f":{ino} " in line for line in f)


def test_a_lookup_waiting_on_a_file_does_not_hold_up_appends(daemon: DaemonProc) -> None:
    """Another process holds a log file locked, mid-write. A causality call whose unknown
    ids make the daemon look at that file waits for it; appends to other conversations are
    answered meanwhile, and the lookup answers once the file is released."""
    fill_small = Raw(daemon.socket_path)
    call_batch(
        fill_small, [("log.append", {"conversation_id": f"c{i:03d}", "type": "agent.progress"}) for i in range(50)]
    )
    fill_small.close()
    ghosts = [str(uuid.uuid4()) for _ in range(5000)]
    with Client(daemon.socket_path) as c:
        root = c.call("log.append", {"conversation_id": "root", "type": "agent.progress", "caused_by": ghosts})

    path = daemon.data_dir / "logs" / "c007.jsonl"
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer in another process, between its write and its fsync
        last = json.loads(path.read_bytes().splitlines()[-1])
        line = {**last, "id": str(uuid.uuid4()), "seq": last["seq"] + 1, "data": {"by": "another process"}}
        os.write(fd, json.dumps(line, separators=(",", ":")).encode() + b"\n")

        lookup = Raw(daemon.socket_path)
        lookup.send(
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": "log.causality", "params": {"event_id": root["id"]}})
            + "\n"
        )
        deadline = 200_000
        while not waiting_on(path):  # the daemon reaches our lock: watched for, not slept on
            deadline -= 1
            assert deadline > 0 and daemon.proc.poll() is None, "the lookup never reached the locked file"
            select.select([lookup.sock], [], [], 0.001)

        appender = Raw(daemon.socket_path)
        appender.send(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "log.append",
                    "params": {"conversation_id": "c020", "type": "agent.progress"},
                }
            )
            + "\n"
        )
        assert appender.recv()["result"]["seq"] == 2  # answered while the lookup waits
        assert select.select([lookup.sock], [], [], 0)[0] == []  # and the lookup is still waiting
        appender.close()
    finally:
        os.close(fd)  # the other process is done
    answer = lookup.recv()["result"]
    assert answer["upstream"] == [] and answer["truncated"]
    assert answer["missing"] == ghosts[:1000]  # at most max_events unknown ids, in order
    lookup.close()
    with Client(daemon.socket_path) as c:  # the other process's event was indexed on the way
        assert c.call("log.get", {"event_id": line["id"]})["seq"] == last["seq"] + 1
