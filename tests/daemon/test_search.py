"""log.search and the context's relevance layers through a real daemon (contract §15)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from typing import Any

from sidecar_client import Client, RpcError

from tests.daemon.conftest import DaemonProc, daemon, start_daemon  # noqa: F401
from tests.support import within


def found(c: Client, q: str, **params: Any) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = c.call("log.search", {"q": q, **params})["hits"]
    return hits


def note(c: Client, cid: str, text: str, **kw: Any) -> dict[str, Any]:
    result: dict[str, Any] = c.call(
        "log.append", {"conversation_id": cid, "type": "note.added", "data": {"text": text}, **kw}
    )
    return result


def test_an_event_is_found_within_a_second_of_its_ack(daemon: DaemonProc) -> None:  # noqa: F811
    with Client(daemon.socket_path) as c:
        for i in range(5):
            ack = note(c, "s1", f"batch {i}: the flux capacitor needs 1.21 gigawatts")
            started = time.monotonic()
            hits = within(1.0, lambda ack=ack: [h for h in found(c, "gigawatts") if h["event"]["id"] == ack["id"]])
            assert time.monotonic() - started < 1.0
        (hit,) = hits
        assert hit["event"]["seq"] == 5 and "**gigawatts**" in hit["snippet"] and hit["score"] > 0


def test_search_ranks_filters_and_refuses_bad_queries_by_name(daemon: DaemonProc) -> None:  # noqa: F811
    with Client(daemon.socket_path) as c:
        note(c, "a", "deploy to staging failed: connection refused", agent_id="ops")
        note(c, "a", "retrying the deploy", agent_id="ops")
        note(c, "b", "deploy went fine")
        last = c.call(
            "log.append", {"conversation_id": "b", "type": "deploy.failed", "data": {"text": "deploy deploy timeout"}}
        )
        within(1.0, lambda: any(h["event"]["id"] == last["id"] for h in found(c, "timeout")))
        assert found(c, '"connection refused"')[0]["event"]["data"]["text"].startswith("deploy to staging")
        assert {h["event"]["conversation_id"] for h in found(c, "deploy", conversation_id="a")} == {"a"}
        assert [h["event"]["type"] for h in found(c, "deploy", types=["deploy.failed"])] == ["deploy.failed"]
        assert {h["event"]["agent_id"] for h in found(c, "deploy", agent_ids=["ops"])} == {"ops"}
        assert len(found(c, "deploy", limit=2)) == 2
        assert found(c, "deploy -refused -retrying -fine")[0]["event"]["id"] == last["id"]
        scores = [h["score"] for h in found(c, "deploy")]
        assert scores == sorted(scores, reverse=True)
        for bad, says in [('"open', "unclosed quote"), ("-x", "nothing to look for"), ("a OR", "ends with OR")]:
            try:
                found(c, bad)
            except RpcError as exc:
                assert exc.code == -32602 and says in exc.message and exc.data["field"] == "q"
            else:
                raise AssertionError(f"{bad!r} was not refused")
        assert c.call("sys.health")["status"] == "ok"  # and the daemon is none the worse


def test_the_index_is_rebuilt_when_deleted_or_damaged_and_follows_deletions(
    start_daemon: Any,  # noqa: F811
) -> None:
    d = start_daemon()
    with Client(d.socket_path) as c:
        for i in range(50):
            note(c, f"c{i % 3}", f"event {i} about the zebra crossing")
        note(c, "gone", "the zebra in a conversation to forget")
        within(1.0, lambda: len(found(c, "zebra", limit=100)) == 51)
        c.call("log.delete_conversation", {"conversation_id": "gone", "confirm": "gone"})
        within(1.0, lambda: len(found(c, "zebra", limit=100)) == 50)
    assert d.stop() == 0
    shutil.rmtree(d.data_dir / "index")
    d = start_daemon(data_dir=d.data_dir)
    with Client(d.socket_path) as c:
        within(10.0, lambda: len(found(c, "zebra", limit=100)) == 50)
    assert "search.catching_up" in d.stderr()
    assert d.stop() == 0
    (d.data_dir / "index" / "search.sqlite3").write_bytes(b"\x00garbage" * 4096)
    d = start_daemon(data_dir=d.data_dir)
    with Client(d.socket_path) as c:
        within(10.0, lambda: len(found(c, "zebra", limit=100)) == 50)
        note(c, "c0", "a new zebra")
        within(1.0, lambda: len(found(c, "zebra", limit=100)) == 51)
    assert "search.index_damaged" in d.stderr()


def test_context_adds_related_events_and_the_tasks_around_a_focus_task(daemon: DaemonProc) -> None:  # noqa: F811
    with Client(daemon.socket_path) as c:
        old = note(c, "ctx", "the database password rotation is scheduled for friday")
        for i in range(40):
            note(c, "ctx", f"routine progress {i}")
        within(1.0, lambda: found(c, "password"))
        c.call("tasks.create", {"id": "a", "type": "build", "conversation_id": "ctx"})
        c.call("tasks.create", {"id": "b", "type": "test", "dependency_ids": ["a"], "conversation_id": "ctx"})
        c.call("tasks.create", {"id": "c", "type": "ship", "dependency_ids": ["b"], "conversation_id": "ctx"})
        c.call("tasks.create", {"id": "d", "type": "party", "dependency_ids": ["c"], "conversation_id": "ctx"})
        c.call("tasks.create", {"id": "far", "type": "other", "conversation_id": "ctx"})
        within(1.0, lambda: len(found(c, "created", conversation_id="ctx", types=["task.created"])) == 5)
        ctx = c.call(
            "context.build",
            {"conversation_id": "ctx", "budget_tokens": 4000, "query": "password rotation", "focus_task_id": "a"},
        )
        layers = {layer["name"]: layer for layer in ctx["layers"]}
        assert [layer["name"] for layer in ctx["layers"]][:3] == ["system", "tasks", "related"]
        assert layers["related"]["covers"] == {"seqs": [old["seq"]], "query": "password rotation"}
        assert "password rotation" in layers["related"]["text"]
        tasks = layers["tasks"]["covers"]
        assert tasks["focus_task_id"] == "a" and tasks["task_ids"] == ["a", "b", "c"]  # two hops, not d
        assert set(tasks["newest_event_ids"]) == {"a", "b", "c"}
        assert ctx["total_tokens"] <= 4000
        tight = c.call(
            "context.build",
            {"conversation_id": "ctx", "budget_tokens": 60, "query": "password", "focus_task_id": "a"},
        )
        assert tight["total_tokens"] <= 60
        try:
            c.call("context.build", {"conversation_id": "ctx", "budget_tokens": 100, "focus_task_id": "nope"})
        except RpcError as exc:
            assert exc.code == -32002
        else:
            raise AssertionError("an unknown focus task was not refused")
        prompt = c.call("narrator.prompt", {"conversation_id": "ctx", "budget_tokens": 3000, "query": "password"})
        assert "## Related earlier events" in prompt["messages"][1]["content"]


def test_search_can_be_turned_off(start_daemon: Any) -> None:  # noqa: F811
    d = start_daemon(config_text="[search]\nenabled = false\n")
    with Client(d.socket_path) as c:
        note(c, "off", "nothing indexes this")
        for method, params in [
            ("log.search", {"q": "nothing"}),
            ("context.build", {"conversation_id": "off", "budget_tokens": 500, "query": "nothing"}),
        ]:
            try:
                c.call(method, params)
            except RpcError as exc:
                assert exc.code == -32003 and "[search] enabled = false" in exc.message
            else:
                raise AssertionError(f"{method} answered with search off")
        assert c.call("context.build", {"conversation_id": "off", "budget_tokens": 500})["layers"]
    assert not (d.data_dir / "index").exists()


def worker_pids(data_dir: Any) -> list[int]:
    """The indexer processes working on ``data_dir`` (from /proc: their command lines)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"sidecar.daemon.search_worker" in argv and str(data_dir).encode() in argv:
                pids.append(int(entry))
    return pids


def test_the_indexer_process_is_restarted_and_never_outlives_its_daemon(start_daemon: Any) -> None:  # noqa: F811
    d = start_daemon()
    with Client(d.socket_path) as c:
        note(c, "w", "before the crash: albatross")
        within(1.0, lambda: found(c, "albatross"))
        (pid,) = within(5.0, lambda: worker_pids(d.data_dir))
        os.kill(pid, signal.SIGKILL)
        note(c, "w", "after the crash: albatross")  # the daemon goes on; a new worker catches up
        within(10.0, lambda: len(found(c, "albatross")) == 2)
        assert c.call("sys.stats")["faults"].get("search-indexer", 0) >= 1
    d.stop(signal.SIGKILL)  # the daemon dies without a word: its worker sees its stdin end
    within(10.0, lambda: not worker_pids(d.data_dir))


def test_a_signal_to_the_whole_process_group_is_left_to_the_daemon(start_daemon: Any) -> None:  # noqa: F811
    """Ctrl-C, honcho and systemd signal every process at once; the worker must outlive the
    signal so that the daemon, draining, can still tell it what was committed."""
    d = start_daemon()
    with Client(d.socket_path) as c:
        note(c, "g", "before the signals: cormorant")
        within(1.0, lambda: found(c, "cormorant"))  # the worker is up and past its set-up
        (pid,) = worker_pids(d.data_dir)
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        note(c, "g", "after the signals: cormorant")
        within(1.0, lambda: len(found(c, "cormorant")) == 2)
        assert worker_pids(d.data_dir) == [pid]
        assert c.call("sys.stats")["faults"].get("search-indexer", 0) == 0
    assert d.stop(signal.SIGTERM) == 0
    assert '"level": "error"' not in d.stderr(), d.stderr()
    within(10.0, lambda: not worker_pids(d.data_dir))
