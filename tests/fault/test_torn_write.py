"""Another process writes into a log the daemon is serving: a torn last line is cut off and
kept aside at the next append; a whole bad line stops writes to that conversation only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sidecar_client import Client, RpcError


def scribble(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` from a second process, without the daemon's lock."""
    code = "import sys; f = open(sys.argv[1], 'ab'); f.write(sys.stdin.buffer.read()); f.close()"
    subprocess.run([sys.executable, "-c", code, str(path)], input=data, check=True, timeout=30)


def append(c: Client, cid: str, n: int) -> dict:
    return c.call("log.append", {"conversation_id": cid, "type": "agent.progress", "data": {"n": n}})


def test_a_torn_line_from_another_process_is_repaired_while_the_daemon_runs(daemon) -> None:
    log = daemon.data_dir / "logs" / "torn.jsonl"
    with Client(daemon.socket_path) as c:
        for n in range(3):
            append(c, "torn", n)
        torn = b'{"id":"0193a1b2-0000-7000-8000-000000000000","seq":4,"timestamp":"2026-11-23T1'
        scribble(log, torn)
        assert append(c, "torn", 3)["seq"] == 4  # the torn bytes were never an event
        events = c.call("log.tail", {"conversation_id": "torn", "limit": 10})["events"]
        assert [(e["seq"], e["data"]["n"]) for e in events] == [(1, 0), (2, 1), (3, 2), (4, 3)]
    assert all(line.endswith(b"}") for line in log.read_bytes().split(b"\n")[:-1])
    kept = list((daemon.data_dir / "archive").glob("torn*.torn"))
    assert [p.read_bytes() for p in kept] == [torn]  # kept aside for a human, not thrown away
    assert "torn" in daemon.stderr()  # and the repair is logged


def test_a_bad_line_in_the_middle_refuses_that_conversation_only(daemon) -> None:
    with Client(daemon.socket_path) as c:
        first = append(c, "bad", 0)
        append(c, "good", 0)
        after = first["event"] if "event" in first else c.call("log.get", {"event_id": first["id"]})
        forged = {**after, "id": "0193a1b2-0000-7000-8000-000000000001", "seq": 2}
        scribble(
            daemon.data_dir / "logs" / "bad.jsonl", b"this is not an event\n" + json.dumps(forged).encode() + b"\n"
        )
        with pytest.raises(RpcError) as err:
            append(c, "bad", 1)
        assert err.value.code == -32006
        assert "damaged log" in err.value.message and "repaired" in err.value.message
        assert err.value.data["conversation_id"] == "bad"
        assert append(c, "good", 1)["seq"] == 2  # other conversations carry on
        assert c.call("sys.health")["status"] == "ok"
