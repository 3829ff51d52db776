"""``sidecar demo`` runs start to finish and shows the gate, the watchdog and a playbook at work,
in a daemon of its own or played into a running one (``--socket``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from sidecar_client import Client

from tests.daemon.conftest import DaemonProc, child_env, start_daemon  # noqa: F401 - the fixture

# A daemon whose watchdog will not fire while the demo plays: the story must end anyway.
SLOW_WATCHDOG = "[controller]\nmin_gap_s = 1.0\nidle_timeout_s = 600.0\ngrant_ttl_s = 30.0\n"
FIRST_LINE = re.compile(r"sidecar demo: playing into the daemon on (\S+), conversation (\S+)")


def _demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "demo", *args], capture_output=True, text=True, timeout=90, env=child_env(env)
    )


def test_the_demo_runs() -> None:
    run = _demo()
    assert run.returncode == 0, run.stderr
    out = run.stdout
    where = re.fullmatch(r"sidecar demo: running its own daemon in (\S+) \(removed at the end\)", out.splitlines()[0])
    assert where is not None, out.splitlines()[0]  # it says first where its daemon runs...
    assert os.path.isabs(where.group(1)) and not os.path.exists(where.group(1))  # ...and removes it
    assert "you: Please fix the failing login test" in out
    assert "narrator: On it" in out and "narrator: Done: fix-login." in out  # spoke only with grants
    assert "[controller] SPEAK (user_message)" in out and "[controller] SPEAK (task_done)" in out
    assert "watchdog.idle" in out and "[controller] SPEAK (idle)" in out  # the watchdog spoke up
    assert "task.stalled: find-oauth" in out
    # search's tool timed out: the playbook beside the error, and the narrator's words follow it
    assert "[search] tool.timeout: web_search gave no answer in 30 s" in out
    assert "[controller] SPEAK (error) playbook tool-timeout" in out
    assert "narrator: One step is taking longer than it should" in out
    assert "[controller] SPEAK (task_failed) playbook task-failed" in out
    chat_lines = [line.split("|")[0] for line in out.splitlines() if "|" in line]
    assert not any("[coder]" in line or "[search]" in line for line in chat_lines)  # agents never in the chat
    assert "sidecar web" not in out  # nothing to watch once its daemon is gone


def _story(client: Client, out: str, sock: str) -> tuple[str, list[str]]:
    """Check what one run left in the daemon's log; its conversation and task ids."""
    lines = out.splitlines()
    first = FIRST_LINE.fullmatch(lines[0])
    assert first is not None, lines[0]
    assert first.group(1) == sock
    cid = first.group(2)
    assert re.fullmatch(r"demo-\d{8}-\d{6}(-\d+)?", cid)
    assert lines[-1] == (
        f"sidecar demo: to watch it in a browser, run `sidecar web --socket {sock}` "
        f"and open the URL it prints with &conversation={cid}"
    )
    assert "Not shown in time here: the watchdog" in out  # it did not wait for a watchdog that would not fire

    events: list[dict[str, Any]] = client.call("log.query", {"conversation_id": cid})["events"]

    def of(kind: str) -> list[dict[str, Any]]:
        return [e for e in events if e["type"] == kind]

    (asked,) = of("user.message")
    assert asked["visibility"] == "user" and asked["seq"] == 1
    assert all(e["type"] in ("user.message", "narrator.message") for e in events if e["visibility"] == "user")

    speak = {e["data"]["grant_id"]: e for e in of("controller.decision") if e["data"]["speak_now"]}
    said = of("narrator.message")
    for message in said:  # every word the narrator said came with a grant, after its decision
        decision = speak[message["data"]["grant_id"]]
        assert decision["seq"] < message["seq"] and decision["data"]["reason"] == message["data"]["reason"]
    reasons = [m["data"]["reason"] for m in said]  # two tasks done may take one turn or two
    assert list(dict.fromkeys(reasons)) == ["user_message", "error", "task_done", "task_failed"]
    assert reasons.count("error") == 1 and reasons.count("task_failed") == 1

    created = [e["task_id"] for e in of("task.created")]
    assert len(created) == 3 and len(set(created)) == 3
    suffix = created[0].removeprefix("fix-login")
    assert created == [f"fix-login{suffix}", f"find-oauth{suffix}", f"index-docs{suffix}"] and suffix
    fix, find, index = created
    assert {client.call("tasks.get", {"id": t})["status"] for t in (fix, index)} == {"done"}
    assert client.call("tasks.get", {"id": find})["status"] == "failed"  # nothing of ours left open

    progress = of("agent.progress")
    assert {e["agent_id"] for e in progress} == {"coder", "search", "rag"}
    assert all(e["visibility"] == "status" and e["task_id"] in created for e in progress)

    (timeout,) = of("tool.timeout")
    assert timeout["visibility"] == "status" and timeout["agent_id"] == "search" and timeout["task_id"] == find
    assert timeout["data"]["tool"] == "web_search"
    (decision,) = [e for e in of("controller.decision") if e["data"].get("playbook") == "tool-timeout"]
    assert decision["data"]["speak_now"] and decision["data"]["reason"] == "error"
    assert decision["seq"] > timeout["seq"]
    (answer,) = [m for m in said if m["data"]["grant_id"] == decision["data"]["grant_id"]]
    assert "web_search" in answer["data"]["text"]  # the playbook: name the tool

    (failed,) = [e for e in of("controller.decision") if e["data"].get("playbook") == "task-failed"]
    assert failed["data"]["reason"] == "task_failed" and failed["data"]["speak_now"]
    assert all(e["seq"] < failed["seq"] for e in of("task.updated") if e["data"]["task"]["status"] == "failed")
    return cid, created


def test_the_demo_plays_into_a_running_daemon(start_daemon: Callable[..., DaemonProc]) -> None:  # noqa: F811
    daemon = start_daemon(SLOW_WATCHDOG)
    first = _demo("--socket", daemon.socket_path)
    assert first.returncode == 0, first.stderr
    again = _demo("--socket", env={"SIDECAR_SOCKET": daemon.socket_path})  # no PATH: $SIDECAR_SOCKET
    assert again.returncode == 0, again.stderr
    with Client(daemon.socket_path) as client:
        cid1, tasks1 = _story(client, first.stdout, daemon.socket_path)
        cid2, tasks2 = _story(client, again.stdout, daemon.socket_path)
        assert cid1 != cid2 and not set(tasks1) & set(tasks2)  # two runs, no clash
        earlier = client.call("log.query", {"conversation_id": cid1})["events"]
        assert {e["task_id"] for e in earlier if e.get("task_id")} == set(tasks1)  # the second run kept out
        assert client.call("tasks.list_active")["tasks"] == []


def test_no_daemon_on_the_socket() -> None:
    run = _demo("--socket", "/nonexistent/sidecar.sock")
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.startswith("sidecar demo: no sidecar daemon answers on /nonexistent/sidecar.sock")
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
