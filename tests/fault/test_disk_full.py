"""A disk that fills up under the daemon: appends get -32006 and write nothing, everything
else keeps working, and appends succeed again once space returns, with no gap in seq."""

from __future__ import annotations

import os
from pathlib import Path

from sidecar_client import Client, RpcError

CONFIG = "[log]\njournal_bytes = 262144\n"  # the journal is zero-filled ahead: keep it small here


def append(c: Client, size: int, cid: str = "full") -> dict:
    return c.call("log.append", {"conversation_id": cid, "type": "agent.progress", "data": {"pad": "x" * size}})


def test_enospc_gives_clean_errors_and_recovery_once_space_returns(start_daemon, make_tmpfs) -> None:
    disk = make_tmpfs("2m")
    d = start_daemon(config_text=CONFIG, data_dir=disk / "data")
    filler = disk / "filler"
    with Client(d.socket_path) as c:
        acked = [append(c, 100)["seq"]]
        free = _free_bytes(disk)
        filler.write_bytes(b"\0" * (free - 64 * 1024))  # leave room for a few dozen events
        errors: list[RpcError] = []
        while len(errors) < 5:
            try:
                acked.append(append(c, 2000)["seq"])
            except RpcError as exc:
                errors.append(exc)
            assert len(acked) < 1000, "the disk never filled"
        assert {e.code for e in errors} == {-32006}
        assert "disk is full (ENOSPC)" in errors[0].message, errors[0].message
        # Nothing half-written, and the daemon still serves reads and health.
        assert c.call("sys.health")["status"] == "ok"
        tail = c.call("log.tail", {"conversation_id": "full", "limit": 1000})["events"]
        assert [e["seq"] for e in tail] == acked == list(range(1, len(acked) + 1))

        filler.unlink()  # space returns
        acked.append(append(c, 2000)["seq"])
        acked.append(append(c, 100, cid="other")["seq"])
        assert acked[-2] == len(acked) - 1  # carries on right after the last acknowledged seq
    assert d.stop() == 0

    again = start_daemon(config_text=CONFIG, data_dir=disk / "data")
    with Client(again.socket_path) as c:
        events = c.call("log.tail", {"conversation_id": "full", "limit": 1000})["events"]
        assert [e["seq"] for e in events] == list(range(1, len(acked)))


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
