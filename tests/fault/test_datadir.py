"""Nothing in the data directory is trusted, and nothing the daemon makes is anyone else's
(contract §9), against a real daemon: planted symlinks, journals, FIFOs and broken files
are refused for their own conversation or feature while the daemon serves everyone else;
unsafe directories stop the start with one line; files are 0600 and directories 0700
whatever the umask; ids are matched whole; concurrent summaries agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from sidecar_client import AsyncClient, Client, RpcError

from tests.support import line

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a path to another user")


def refused(c: Client, method: str, params: dict[str, Any]) -> RpcError:
    with pytest.raises(RpcError) as info:
        c.call(method, params)
    return info.value


def until(check: Callable[[], bool], what: str, c: Client | None = None, timeout: float = 10.0) -> None:
    """Wait for something the daemon does on its own (a file watcher's reaction)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        if c is not None:
            c.call("sys.health")  # a round trip: the daemon has had a turn
        else:
            time.sleep(0.02)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- symlinks -------------------------------------------------------------------------------------


def test_a_symlinked_log_is_refused_for_its_conversation_only(start_daemon, tmp_path: Path) -> None:
    outside = tmp_path / "victim.jsonl"
    outside.write_bytes(line("evil", 1) + b'{"torn tail')  # the repair would cut it, then append
    before = outside.read_bytes()
    logs = tmp_path / "data" / "logs"
    logs.mkdir(parents=True)
    (logs / "evil.jsonl").symlink_to(outside)
    (logs / "dangling.jsonl").symlink_to(tmp_path / "created-outside.jsonl")
    d = start_daemon()
    with Client(d.socket_path) as c:
        for cid in ("evil", "dangling"):
            err = refused(c, "log.append", {"conversation_id": cid, "type": "a.b"})
            assert err.code == -32006 and cid in err.message
            err = refused(c, "log.tail", {"conversation_id": cid})
            assert err.code == -32006 and cid in err.message
        assert c.call("log.append", {"conversation_id": "good", "type": "a.b"})["seq"] == 1
        assert [e["conversation_id"] for e in c.call("log.since", {"timestamp": "2000-01-01T00:00:00Z"})["events"]] == [
            "good"
        ]
        assert [x["conversation_id"] for x in c.call("log.conversations")["conversations"]] == ["good"]
    assert outside.read_bytes() == before
    assert not (tmp_path / "created-outside.jsonl").exists()


@pytest.mark.parametrize("which", ["data", "socket"])
def test_a_symlinked_lock_file_is_not_followed(start_daemon, tmp_path: Path, which: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    link = data / "sidecar.lock" if which == "data" else run / "s.sock.lock"
    link.symlink_to(victim)
    d = start_daemon(socket_path=str(run / "s.sock"), wait=False)
    assert d.proc.wait(timeout=30) == 1
    assert victim.read_text() == "precious\n"  # not truncated, no pid written into it
    assert "symbolic link" in d.stderr() and "daemon.cannot_start" in d.stderr()


@pytest.mark.parametrize("how", ["directory", "file"])
def test_a_symlink_in_prompts_does_not_leak_a_file(start_daemon, tmp_path: Path, how: str) -> None:
    secret_dir = tmp_path / "root-only"
    secret_dir.mkdir(mode=0o700)
    (secret_dir / "narrator.md").write_text("TOP SECRET $conversation_id")
    (secret_dir / "narrator.md").chmod(0o600)
    data = tmp_path / "data"
    data.mkdir()
    if how == "directory":
        (data / "prompts").symlink_to(secret_dir)
    else:
        (data / "prompts").mkdir()
        (data / "prompts" / "narrator.md").symlink_to(secret_dir / "narrator.md")
    d = start_daemon()
    with Client(d.socket_path) as c:
        c.call("chat.user_message", {"conversation_id": "c1", "text": "hello"})
        prompt = c.call("narrator.prompt", {"conversation_id": "c1", "budget_tokens": 2000})
    assert prompt["messages"] and not any("TOP SECRET" in m["content"] for m in prompt["messages"])
    assert "narrator of conversation c1" in prompt["messages"][0]["content"]  # the shipped default


# --- planted journals ----------------------------------------------------------------------------


def plant_journal(data: Path, lines: list[bytes], mode: int = 0o600) -> Path:
    (data / "journal").mkdir(parents=True, mode=0o700, exist_ok=True)
    path = data / "journal" / "4242-0badf00d.wal"
    path.write_bytes(b"".join(lines))
    path.chmod(mode)
    return path


def test_a_planted_journal_cannot_write_outside_or_forge_ids(start_daemon, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    hostile = line("c1", 1).replace(b'"conversation_id":"c1"', b'"conversation_id":"../../outside/x"')
    newline_id = line("c2", 1).replace(b'"conversation_id":"c2"', b'"conversation_id":"c2\\n"')
    good = line("c3", 1, type="agent.progress")
    plant_journal(tmp_path / "data", [hostile, newline_id, good])
    d = start_daemon()
    with Client(d.socket_path) as c:
        assert [e["type"] for e in c.call("log.tail", {"conversation_id": "c3"})["events"]] == ["agent.progress"]
        assert [x["conversation_id"] for x in c.call("log.conversations")["conversations"]] == ["c3"]
    assert not (tmp_path / "outside" / "x.jsonl").exists()
    assert sorted(p.name for p in (tmp_path / "data" / "logs").iterdir()) == ["c3.jsonl"]
    assert d.stderr().count("log.journal_line_dropped") == 2


@pytest.mark.parametrize("owner", [pytest.param("other", marks=ROOT_ONLY), "world-writable"])
def test_a_journal_that_is_not_ours_alone_writes_no_user_text(start_daemon, tmp_path: Path, owner: str) -> None:
    forged = line("c1", 1, type="narrator.message", visibility="user", data={"text": "send me your password"})
    planted = plant_journal(tmp_path / "data", [forged], mode=0o666 if owner == "world-writable" else 0o600)
    if owner == "other":
        os.chown(planted, 65534, 65534)
    d = start_daemon()
    with Client(d.socket_path) as c:
        assert c.call("log.tail", {"conversation_id": "c1"})["events"] == []  # no grant, no user text
    assert "log.journal_refused" in d.stderr()


# --- the directories themselves -----------------------------------------------------------------


@pytest.mark.parametrize(
    "setup, reason",
    [
        ("data-0777", "writable by others"),
        ("data-0757", "writable by others"),
        pytest.param("data-other", "belongs to uid 65534", marks=ROOT_ONLY),
        pytest.param("socket-other", "belongs to uid 65534", marks=ROOT_ONLY),
        ("socket-0777", "writable by others"),
        ("logs-symlink", "symbolic link"),
    ],
)
def test_an_unsafe_directory_stops_the_start_with_one_line(
    start_daemon, tmp_path: Path, setup: str, reason: str
) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    run.mkdir(mode=0o700)
    where, what = setup.split("-")
    target = {"data": data, "socket": run, "logs": data / "logs"}[where]
    if what == "symlink":
        (tmp_path / "elsewhere").mkdir()
        target.symlink_to(tmp_path / "elsewhere")
    elif what == "other":
        os.chown(target, 65534, 65534)
        target.chmod(0o755)
    else:
        target.chmod(int(what, 8))
    d = start_daemon(socket_path=str(run / "s.sock"), wait=False)
    assert d.proc.wait(timeout=30) == 1
    cannot = [json.loads(x) for x in d.stderr().splitlines() if "daemon.cannot_start" in x]
    assert len(cannot) == 1 and reason in cannot[0]["error"] and "\n" not in cannot[0]["error"]
    assert not (run / "s.sock").exists()


def test_directories_of_ours_open_to_others_are_tightened(start_daemon, tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    (data / "logs").mkdir(parents=True)
    run.mkdir()
    for path in (data, data / "logs", run):
        path.chmod(0o755)  # the checked-in ./data, or a directory made under umask 022
    d = start_daemon(socket_path=str(run / "s.sock"))
    with Client(d.socket_path) as c:
        assert c.call("sys.health")["status"] in ("ok", "degraded")
    assert [mode_of(p) for p in (data, data / "logs", run)] == [0o700, 0o700, 0o700]


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_everything_the_daemon_makes_is_private_whatever_the_umask(start_daemon, tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)  # the daemon inherits it
    try:
        d = start_daemon(config_text="[log]\nrotate_bytes = 2048\n")
    finally:
        os.umask(old)
    with Client(d.socket_path) as c:
        for i in range(40):  # enough to rotate into archive/
            c.call("log.append", {"conversation_id": "c1", "type": "a.b", "data": {"i": i, "pad": "x" * 80}})
        c.call("chat.user_message", {"conversation_id": "c2", "text": "hi"})
        c.call("summary.persist", {"conversation_id": "c1"})
        c.call("tasks.create", {"type": "t", "id": "t1", "conversation_id": "c1"})
        c.call("narrator.prompt", {"conversation_id": "c1", "budget_tokens": 500})
        seen: dict[str, int] = {}
        for path in [d.data_dir, *d.data_dir.rglob("*"), Path(d.socket_path).parent, Path(d.socket_path)]:
            seen[str(path.relative_to(tmp_path))] = mode_of(path)
    assert list((d.data_dir / "archive").glob("c1.*.jsonl")) and list((d.data_dir / "journal").glob("*.wal"))
    assert (d.data_dir / "prompts").is_dir() and (d.data_dir / "summaries" / "c1.md").is_file()
    wrong = {
        name: f"{mode:04o}"
        for name, mode in seen.items()
        if mode != (0o700 if os.path.isdir(tmp_path / name) and not os.path.islink(tmp_path / name) else 0o600)
    }
    assert wrong == {}


# --- ids are matched whole -----------------------------------------------------------------------


def test_ids_with_a_trailing_newline_are_refused(daemon) -> None:
    eid = str(uuid.uuid4())
    with Client(daemon.socket_path) as c:
        for method, params, field in [
            ("log.append", {"conversation_id": "c1\n", "type": "a.b"}, "conversation_id"),
            ("log.append", {"conversation_id": "c1", "type": "a.b\n"}, "type"),
            ("log.append", {"conversation_id": "c1", "type": "a.b", "id": eid + "\n"}, "id"),
            ("chat.user_message", {"conversation_id": "c1\n", "text": "hi"}, "conversation_id"),
            ("log.tail", {"conversation_id": "c1\n"}, "conversation_id"),
            ("log.get", {"event_id": eid + "\n"}, "event_id"),
            ("tasks.create", {"type": "t", "id": "t1\n"}, "id"),
            ("tasks.create", {"type": "t", "conversation_id": "c1\n"}, "conversation_id"),
            ("tasks.get", {"id": "t1\n"}, "id"),
            ("summary.persist", {"conversation_id": "c1\n"}, "conversation_id"),
        ]:
            err = refused(c, method, params)
            assert err.code == -32602 and field in err.message, (method, params, err.message)
        assert c.call("log.conversations")["conversations"] == []
    assert list((daemon.data_dir / "logs").iterdir()) == []


# --- summaries ----------------------------------------------------------------------------------


def test_320_concurrent_summary_persists_all_succeed_and_agree(daemon) -> None:
    with Client(daemon.socket_path) as c:
        for cid in ("c1", "c2"):
            c.call("log.append_many", {"events": [{"conversation_id": cid, "type": "a.b"} for _ in range(30)]})

    async def burst() -> list[Any]:
        clients = [await AsyncClient.connect(daemon.socket_path) for _ in range(5)]
        out: list[Any] = []

        async def one(i: int) -> None:
            params = {"conversation_id": f"c{1 + i % 2}", "keep_recent": i % 7}
            try:
                out.append(await clients[i % 5].call("summary.persist", params))
            except RpcError as exc:
                out.append(exc)

        try:
            async with anyio.create_task_group() as tg:
                for i in range(320):
                    tg.start_soon(one, i)
        finally:
            for client in clients:
                await client.close()
        return out

    answers = anyio.run(burst)
    failures = [a for a in answers if isinstance(a, RpcError)]
    assert len(answers) == 320 and failures == []
    summaries = daemon.data_dir / "summaries"
    with Client(daemon.socket_path) as c:
        for cid in ("c1", "c2"):
            md = (summaries / f"{cid}.md").read_bytes()
            assert json.loads((summaries / f"{cid}.json").read_text())["summary_ref"] == hashlib.sha256(md).hexdigest()
            assert c.call("summary.get", {"conversation_id": cid})["summary_ref"] == hashlib.sha256(md).hexdigest()
    assert not [p for p in summaries.rglob("*") if ".tmp" in p.name]


def test_conversations_a_and_a_md_both_persist_and_read_back(daemon) -> None:
    with Client(daemon.socket_path) as c:
        persisted = {}
        for cid in ("a.md", "a", "a.md.json", "a.json"):
            c.call("log.append", {"conversation_id": cid, "type": "a.b", "data": {"who": cid}})
            persisted[cid] = c.call("summary.persist", {"conversation_id": cid})
        for cid, summary in persisted.items():
            assert c.call("summary.get", {"conversation_id": cid})["markdown"] == summary["markdown"]
            snap = c.call("summary.snapshot", {"conversation_id": cid, "summary_ref": summary["summary_ref"]})
            assert snap["markdown"] == summary["markdown"] and f'"who":"{cid}"' in snap["markdown"]


# --- the task graph file --------------------------------------------------------------------------

# Deep where the schema takes anything (a task's inputs): msgspec gives up with RecursionError.
DEEP = b'{"tasks": [{"id": "a", "type": "t", "created_at": "x", "updated_at": "x", "inputs": ' + b'{"a":' * 5000
DEEP += b"1" + b"}" * 5000 + b"}]}"


@pytest.mark.parametrize("kind", ["deep", "directory"])
def test_an_unusable_graph_at_start_does_not_stop_the_daemon(start_daemon, tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    graph = data / "tasks.graph.json"
    if kind == "deep":
        graph.write_bytes(DEEP)
    else:
        graph.mkdir()
    d = start_daemon()
    with Client(d.socket_path) as c:
        for method, params in [
            ("tasks.get", {"id": "x"}),
            ("tasks.list_active", {}),
            ("tasks.ready", {}),
            ("tasks.create", {"type": "t", "id": "x"}),
            ("tasks.update", {"id": "x", "priority": 1}),
        ]:
            err = refused(c, method, params)
            assert err.code == -32006 and "tasks.graph.json" in err.message, (method, err.message)
        assert c.call("log.append", {"conversation_id": "c1", "type": "a.b"})["seq"] == 1  # the rest is served
        layers = c.call("context.build", {"conversation_id": "c1", "budget_tokens": 500})["layers"]
        assert "tasks" not in [layer["name"] for layer in layers]  # the context goes on without them
        if kind == "deep":
            assert graph.read_bytes() == DEEP  # what we could not read, we do not overwrite
            graph.write_text(json.dumps({"tasks": [], "version": 7}))
        else:
            graph.rmdir()
            graph.write_text('{"tasks": []}')
        until(lambda: _answers(c, "tasks.list_active"), "a valid graph file was not taken in", c)
        assert c.call("tasks.create", {"type": "t", "id": "x"})["version"] == 1
    assert d.proc.poll() is None


def _answers(c: Client, method: str) -> bool:
    try:
        c.call(method, {})
        return True
    except RpcError:
        return False


def test_a_graph_edited_into_deep_nesting_is_refused_while_running(daemon) -> None:
    graph = daemon.data_dir / "tasks.graph.json"
    with Client(daemon.socket_path) as c:
        c.call("tasks.create", {"type": "t", "id": "keep"})
        graph.write_bytes(DEEP)

        def repaired() -> bool:
            try:
                return [t["id"] for t in json.loads(graph.read_bytes())["tasks"]] == ["keep"]
            except (json.JSONDecodeError, RecursionError):
                return False

        until(repaired, "the deep file was not refused and our graph written back", c)
        assert c.call("tasks.get", {"id": "keep"})["id"] == "keep"
    assert daemon.proc.poll() is None and "tasks.file_refused" in daemon.stderr()


def test_a_deleted_graph_is_written_back_from_memory(daemon) -> None:
    graph = daemon.data_dir / "tasks.graph.json"
    with Client(daemon.socket_path) as c:
        c.call("tasks.create", {"type": "t", "id": "survivor", "conversation_id": "ops"})
        graph.unlink()
        until(graph.exists, "the deleted graph was not written back", c)
        until(lambda: graph.stat().st_size > 20, "the graph was written back empty", c)
        assert [t["id"] for t in json.loads(graph.read_text())["tasks"]] == ["survivor"]
        assert c.call("tasks.get", {"id": "survivor"})["version"] == 1  # not taken in as empty
        assert [t["id"] for t in c.call("tasks.list_active")["tasks"]] == ["survivor"]
    assert "tasks.file_missing" in daemon.stderr()


def test_stale_graph_temp_files_are_removed_at_start(start_daemon, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = data / f"tasks.graph.json.tmp.{int(dead.stdout)}"
    stale.write_text('{"tasks": [')  # a writer killed between write and rename
    d = start_daemon()
    with Client(d.socket_path) as c:
        assert c.call("tasks.list_active")["tasks"] == []
    assert not stale.exists()


def test_a_task_whose_event_would_not_fit_the_log_is_refused_whole(start_daemon) -> None:
    """The log records every change with the whole task (the graph is its projection), so a
    change the log could not hold is refused, and nothing of it is kept."""
    d = start_daemon(config_text="[log]\nmax_event_bytes = 4096\n")
    with Client(d.socket_path) as c:
        big = {"type": "t", "id": "big", "conversation_id": "ops", "inputs": {"blob": "x" * 8000}}
        try:
            c.call("tasks.create", big)
            raise AssertionError("a task the log cannot hold was taken")
        except RpcError as exc:
            assert exc.code == -32602 and exc.data["max_event_bytes"] == 4096 and exc.data["bytes"] > 8000
        assert c.call("tasks.list_active")["tasks"] == []
        c.call("tasks.create", {**big, "inputs": {"blob": "x" * 100}})
        c.call("tasks.claim", {"agent_id": "a"})
        try:
            c.call("tasks.update", {"id": "big", "status": "done", "agent_id": "a", "outputs": {"log": "y" * 8000}})
            raise AssertionError("outputs the log cannot hold were taken")
        except RpcError as exc:
            assert exc.code == -32602 and "max_event_bytes" in exc.message
        kept = c.call("tasks.get", {"id": "big"})
        assert kept["status"] == "running" and kept["outputs"] == {} and kept["version"] == 2  # as it was
        done = c.call("tasks.update", {"id": "big", "status": "done", "agent_id": "a", "outputs": {"log": "short"}})
        assert done["version"] == 3
        events = c.call("log.tail", {"conversation_id": "ops"})["events"]
        assert [e["type"] for e in events if e["type"].startswith("task.")] == [
            "task.created",
            "task.claimed",
            "task.updated",
        ]
        assert all("omitted" not in e["data"] for e in events if e["type"].startswith("task."))
