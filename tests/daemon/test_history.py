"""Event history through a real daemon (contract §14): log.compare, retention and compression
in the background under appends and a live subscription, log.delete_conversation."""

from __future__ import annotations

import threading
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

from sidecar_client import Client, RpcError

from sidecar.log import EventStore
from sidecar.tasks.history import rebuild
from tests.daemon.conftest import DaemonProc, daemon, start_daemon  # noqa: F401
from tests.support import within

RETAIN = 12_000
CONFIG = f"[log]\nrotate_bytes = 2000\nretain_bytes = {RETAIN}\ncompress_archive = true\n"


def refused(call: Callable[[], Any]) -> RpcError:
    try:
        call()
    except RpcError as exc:
        return exc
    raise AssertionError("not refused")


def append(c: Client, cid: str, agent: str | None = None, **kw: Any) -> dict[str, Any]:
    params = {"conversation_id": cid, "type": "agent.progress", "data": {"pad": "x" * 120}, **kw}
    if agent:
        params["agent_id"] = agent
    result: dict[str, Any] = c.call("log.append", params)
    return result


def test_log_compare_orders_events_by_their_clocks(daemon: DaemonProc) -> None:  # noqa: F811
    with Client(daemon.socket_path) as c:
        a = append(c, "k", "A")
        b = append(c, "k", "B")
        b2 = append(c, "k", "B", caused_by=[a["id"]])
        assert b2["clock"] == {"A": 1, "B": 2}
        order = {
            (x, y): c.call("log.compare", {"a": ids[0], "b": ids[1]})["order"]
            for (x, y), ids in {
                ("a", "b2"): (a["id"], b2["id"]),
                ("b2", "a"): (b2["id"], a["id"]),
                ("a", "b"): (a["id"], b["id"]),
                ("b", "b"): (b["id"], b["id"]),
            }.items()
        }
        assert order == {("a", "b2"): "before", ("b2", "a"): "after", ("a", "b"): "concurrent", ("b", "b"): "equal"}
        other = append(c, "elsewhere")
        err = refused(lambda: c.call("log.compare", {"a": a["id"], "b": other["id"]}))
        assert err.code == -32602 and "two conversations" in err.message
        unknown = "0190a1b2-c3d4-7e5f-8a6b-9c0d1e2f3a4b"
        assert refused(lambda: c.call("log.compare", {"a": a["id"], "b": unknown})).code == -32002
        stale = refused(lambda: append(c, "k", "A", clock={"A": 1}))
        assert stale.code == -32001 and stale.data["previous"] == {"A": 1} and stale.data["writer"] == "A"
        assert c.call("log.tail", {"conversation_id": "k", "limit": 1})["events"][0]["id"] == b2["id"]


def test_retention_and_compression_keep_what_the_policy_says_under_appends_and_a_subscription(
    start_daemon: Any,  # noqa: F811
) -> None:
    d = start_daemon(config_text=CONFIG)
    total = 400
    with Client(d.socket_path) as c, Client(d.socket_path) as listener:
        live = listener.subscribe({"conversation_id": "r1"})
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.extend(e["seq"] for e in islice(live, total)))
        reader.start()

        def writer(n: int) -> None:
            with Client(d.socket_path) as w:
                for _ in range(n):
                    append(w, "r1", "w")

        writers = [threading.Thread(target=writer, args=(total // 4,)) for _ in range(4)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        reader.join(timeout=60)
        assert got == list(range(1, total + 1))  # live, in order, nothing lost while the keeper worked

        def settled() -> dict[str, Any] | None:
            info = {x["conversation_id"]: x for x in c.call("log.conversations")["conversations"]}["r1"]
            compressed = not list((d.data_dir / "archive").glob("r1.*.jsonl"))
            return info if info["first_seq"] > 1 and compressed and disk_bytes(d.data_dir, "r1") <= RETAIN else None

        info = within(30.0, settled, "retention and compression")
        first = info["first_seq"]
        assert (info["last_seq"], info["event_count"]) == (total, total - first + 1)
        stats = c.call("sys.stats")
        assert stats["retention_dropped_segments"] > 0 and stats["compressed_segments"] > 0
        assert stats["compression_ratio"] > 1
        # Every read works across what is left, compressed or not.
        events = c.call("log.query", {"conversation_id": "r1", "limit": 1000})["events"]
        assert [e["seq"] for e in events] == list(range(first, total + 1))
        assert c.call("log.get", {"event_id": events[0]["id"]})["seq"] == first
        replay = listener.subscribe({"conversation_id": "r1", "from_seq": 1})
        assert [e["seq"] for e in islice(replay, 3)] == [first, first + 1, first + 2]
        assert append(c, "r1")["seq"] == total + 1


def disk_bytes(data_dir: Path, cid: str) -> int:
    files = list((data_dir / "archive").glob(f"{cid}.0*.jsonl*")) + [data_dir / "logs" / f"{cid}.jsonl"]
    return sum(p.stat().st_size for p in files if p.exists())


def test_delete_conversation_forgets_logs_summaries_and_positions_but_not_tasks(
    start_daemon: Any,  # noqa: F811
) -> None:
    d = start_daemon(config_text="[log]\nrotate_bytes = 2000\n")
    with Client(d.socket_path) as c, Client(d.socket_path) as listener:
        live = listener.subscribe({"conversation_id": "gone"})
        for _ in range(30):
            append(c, "gone", "A")
        append(c, "kept")
        task = c.call("tasks.create", {"type": "t", "conversation_id": "gone"})
        c.call("summary.persist", {"conversation_id": "gone"})
        c.call("log.ack", {"group": "g", "conversation_id": "gone", "seq": 5})
        assert list((d.data_dir / "archive").glob("gone.*")) and list((d.data_dir / "summaries").glob("gone*"))

        wrong = refused(lambda: c.call("log.delete_conversation", {"conversation_id": "gone", "confirm": "kept"}))
        assert wrong.code == -32602 and wrong.data["field"] == "confirm"
        system = refused(lambda: c.call("log.delete_conversation", {"conversation_id": "system", "confirm": "system"}))
        assert system.code == -32003

        done = c.call("log.delete_conversation", {"conversation_id": "gone", "confirm": "gone"})
        assert done["last_seq"] == 31 and done["groups"] == 1 and done["summaries"] >= 2 and done["tasks_carried"] == 1
        left = [p for sub in ("logs", "archive", "summaries") for p in (d.data_dir / sub).rglob("gone*")]
        assert left == []
        assert "gone" not in {x["conversation_id"] for x in c.call("log.conversations")["conversations"]}
        assert c.call("log.groups")["groups"] == []
        deleted = c.call("log.query", {"conversation_id": "system", "types": ["conversation.deleted"]})["events"]
        assert [e["data"]["conversation_id"] for e in deleted] == ["gone"]
        assert c.call("tasks.get", {"id": task["id"]})["conversation_id"] == "gone"  # tasks stay
        with EventStore(d.data_dir) as store:  # and the log alone still gives them
            assert task["id"] in rebuild(store).tasks
        again = append(c, "gone", "A")
        assert (again["seq"], again["clock"]) == (1, {"A": 1})  # a new conversation, from seq 1
        # The live subscription saw the old conversation, then the new one from its seq 1.
        assert [(e["seq"], e["id"] == again["id"]) for e in islice(live, 32)][-2:] == [(31, False), (1, True)]
        assert c.call("log.tail", {"conversation_id": "kept"})["events"][0]["seq"] == 1
