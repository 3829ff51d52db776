"""The typed wrappers match the daemon; follow() survives restarts; the examples run (the agent
runtime's too: coder, search and RAG agents in one process)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sidecar_client import Client, follow

from tests.daemon.conftest import child_env

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "clients" / "python" / "examples"


def test_generated_wrappers_match_the_daemon(daemon) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "sidecar_client.generate", "--socket", daemon.socket_path],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert run.returncode == 0, run.stderr
    checked_in = (ROOT / "clients" / "python" / "sidecar_client" / "methods.py").read_text()
    assert run.stdout == checked_in, "methods.py drifted: regenerate it with python -m sidecar_client.generate"


def test_typed_wrappers_call_the_daemon(daemon) -> None:
    with Client(daemon.socket_path) as c:
        ack = c.log_append(conversation_id="c1", type="agent.progress", data={"pct": 10})
        assert c.log_get(event_id=ack["id"])["data"] == {"pct": 10}
        c.tasks_create(type="t", id="a")
        assert [t["id"] for t in c.tasks_ready()["tasks"]] == ["a"]
        assert c.sys_health()["status"] == "ok"
    assert (ROOT / "clients" / "python" / "sidecar_client" / "py.typed").exists()


def test_follow_resumes_across_a_restart_with_no_gap(start_daemon) -> None:
    first = start_daemon()
    got: queue.Queue = queue.Queue()

    def reader() -> None:
        for event in follow("f1", socket_path=first.socket_path, give_up_after_s=30):
            got.put(event["seq"])
            if event["seq"] == 20:
                return

    with Client(first.socket_path) as c:
        for _ in range(10):
            c.log_append(conversation_id="f1", type="a.b")
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    seen = [got.get(timeout=20) for _ in range(10)]
    assert first.stop() == 0  # the daemon goes away under the follower...
    second = start_daemon(socket_path=first.socket_path)  # ...and comes back
    with Client(second.socket_path) as c:
        for _ in range(10):
            c.log_append(conversation_id="f1", type="a.b")
    seen += [got.get(timeout=30) for _ in range(10)]
    t.join(timeout=10)
    assert seen == list(range(1, 21))


@pytest.mark.parametrize("steps", [3])
def test_the_examples_work_together(start_daemon, steps: int) -> None:
    d = start_daemon(config_text="[controller]\nmin_gap_s = 0.1\n")
    env = child_env()
    narrator = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "narrator.py"), "ex1", "--socket", d.socket_path, "--turns", "1"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    agent = subprocess.run(
        [sys.executable, str(EXAMPLES / "agent.py"), "ex1", "--socket", d.socket_path, "--steps", str(steps)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert agent.returncode == 0, agent.stderr
    assert narrator.wait(timeout=60) == 0  # the finished task made the controller grant a turn
    task_id = agent.stdout.split()[0]  # "<task id> done at version N"
    said = f"The example task {task_id} is done."  # a plain sentence, not the decision's JSON
    assert f": {said}" in narrator.stdout.read()
    with Client(d.socket_path) as c:
        events = c.log_query(conversation_id="ex1", limit=100)["events"]
    kinds = [e["type"] for e in events]
    assert kinds.count("agent.progress") == steps and "controller.decision" in kinds
    spoken = [e for e in events if e["type"] == "narrator.message"]
    assert len(spoken) == 1 and spoken[0]["visibility"] == "user" and spoken[0]["data"]["text"] == said
    assert all(e["visibility"] != "user" for e in events if e["type"] != "narrator.message")


def test_the_coder_search_and_rag_agents_example_runs_its_tasks_to_done(daemon) -> None:
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "agents.py"), "--socket", daemon.socket_path, "--submit", "ex2", "--beat", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert run.returncode == 0, run.stderr
    ended = [line.split(" ", 2) for line in run.stdout.splitlines()]  # ID STATUS OUTPUTS-JSON
    assert [(task_id.split("-")[0], status) for task_id, status, _ in ended] == [
        ("fix", "done"),
        ("find", "done"),
        ("answer", "done"),
    ]
    fix, find, answer = (json.loads(outputs) for _, _, outputs in ended)
    assert fix == {"files": ["auth/session.py"], "tests": "passed"}
    assert find["results"][0]["url"] == "https://example.com/oauth/refresh"
    assert answer["sources"] == ["https://example.com/oauth/refresh"] and "refresh token" in answer["answer"]
    with Client(daemon.socket_path) as c:
        events = c.log_query(conversation_id="ex2", limit=1000)["events"]
        tasks = {task_id: c.tasks_get(id=task_id) for task_id, _, _ in ended}
    by_agent = {(e["agent_id"], e["task_id"]) for e in events if e["type"] == "agent.progress"}
    assert by_agent == {(agent, task_id) for agent, (task_id, _, _) in zip(["coder", "search", "rag"], ended)}
    assert all(e["visibility"] == "status" for e in events if e["type"] == "agent.progress")
    assert all(e["visibility"] != "user" for e in events)  # agents never speak to the user
    assert [t["owner"] for t in tasks.values()] == ["coder", "search", "rag"]


def test_the_agents_example_gives_its_task_back_on_sigterm(daemon) -> None:
    agents = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "agents.py"), "--socket", daemon.socket_path, "--beat", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        with Client(daemon.socket_path) as c:
            c.tasks_create(id="slow-fix", type="code.fix", conversation_id="ex3")
            deadline = time.monotonic() + 20
            while c.tasks_get(id="slow-fix")["status"] != "running":  # the coder took it and is at work
                assert time.monotonic() < deadline and agents.poll() is None, agents.stderr
                time.sleep(0.02)
            agents.send_signal(signal.SIGTERM)
            assert agents.wait(timeout=20) == 0, agents.communicate()[1]
            task = c.tasks_get(id="slow-fix")
    finally:
        if agents.poll() is None:
            agents.kill()
            agents.wait()
    assert (task["status"], task["lease_owner"], task["attempts"]) == ("pending", None, 0)
