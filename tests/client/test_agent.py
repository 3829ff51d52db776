"""``sidecar_client.Agent`` against a real daemon process: claims, outcomes, leases, signals,
crashes and restarts.

Nothing sleeps to synchronise: handlers block on events the test sets, and the test waits for
conditions it polls with a deadline (``wait_for``). The one stretch of wall-clock time is the
renewal test's, which must outlast the lease to prove anything.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from sidecar_client import Agent, AsyncTaskContext, LeaseLost, RpcError, Task, TaskContext

from tests.client.agents import WAIT, connect, running, wait_for
from tests.daemon.conftest import child_env, daemon, start_daemon  # noqa: F401


def get(d: Any, task_id: str) -> Task:
    with connect(d) as c:
        return c.tasks_get(id=task_id)


def status_is(d: Any, task_id: str, *statuses: str) -> Callable[[], Task | None]:
    def check() -> Task | None:
        task = get(d, task_id)
        return task if task.get("status") in statuses else None

    return check


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- outcomes ------------------------------------------------------------------------------------


def test_concurrency_two_runs_every_task_to_done_with_outputs_and_progress(daemon) -> None:  # noqa: F811
    ids = [f"sq-{n}" for n in range(6)]
    with connect(daemon) as c:
        for n, task_id in enumerate(ids):
            c.tasks_create(id=task_id, type="square", conversation_id="c-conc", inputs={"n": n})
    active, peak = [0], [0]
    both: dict[str, anyio.Event] = {}

    async def square(task: Task, ctx: AsyncTaskContext) -> dict[str, Any]:
        both.setdefault("e", anyio.Event())  # made in the agent's loop
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        if active[0] == 2:
            both["e"].set()
        try:
            with anyio.fail_after(WAIT):  # the first waits for a second one to run beside it
                await both["e"].wait()
            n = task["inputs"]["n"]
            await ctx.progress({"n": n})
            return {"square": n * n}
        finally:
            active[0] -= 1

    agent = Agent("a-conc", square, types=["square"], socket_path=daemon.socket_path, concurrency=2)
    with running(agent):
        wait_for(lambda: all(get(daemon, i)["status"] == "done" for i in ids), "every task done")
    assert peak[0] == 2  # two at once, never more
    assert agent.counts == {"done": 6, "failed": 0, "lost": 0, "released": 0}
    with connect(daemon) as c:
        for n, task_id in enumerate(ids):
            task = c.tasks_get(id=task_id)
            assert task["outputs"] == {"square": n * n}
            assert (task["owner"], task["lease_owner"], task["attempts"]) == ("a-conc", None, 1)
        events = c.log_query(conversation_id="c-conc", types=["agent.progress"])["events"]
    assert sorted((e["task_id"], e["data"]["n"]) for e in events) == sorted(zip(ids, range(6)))
    assert all(e["agent_id"] == "a-conc" and e["visibility"] == "status" for e in events)


def test_a_handler_that_raises_or_returns_no_mapping_fails_the_task(daemon) -> None:  # noqa: F811
    with connect(daemon) as c:
        c.tasks_create(id="boom", type="risky", inputs={"n": 7})  # no conversation: progress goes to system
        c.tasks_create(id="odd", type="risky", conversation_id="c-fail", inputs={"n": 8})

    def risky(task: Task, ctx: TaskContext) -> Any:
        ctx.progress(f"trying {task['inputs']['n']}")
        if task["id"] == "boom":
            raise ValueError(f"bad input: {task['inputs']['n']}")
        return ["not", "a", "mapping"]

    agent = Agent("a-fail", risky, types=["risky"], socket_path=daemon.socket_path)
    with running(agent):
        boom = wait_for(status_is(daemon, "boom", "done", "failed"), "boom to end")
        odd = wait_for(status_is(daemon, "odd", "done", "failed"), "odd to end")
    assert boom["status"] == "failed" and boom["outputs"] == {"error": "bad input: 7", "error_type": "ValueError"}
    assert odd["status"] == "failed" and odd["outputs"]["error_type"] == "TypeError"
    assert "list" in odd["outputs"]["error"]
    assert agent.counts["failed"] == 2
    with connect(daemon) as c:
        system = c.log_query(conversation_id="system", types=["agent.progress"])["events"]
        mine = c.log_query(conversation_id="c-fail", types=["agent.progress"])["events"]
    assert [(e["task_id"], e["agent_id"], e["data"]) for e in system] == [("boom", "a-fail", {"msg": "trying 7"})]
    assert [(e["task_id"], e["data"]) for e in mine] == [("odd", {"msg": "trying 8"})]


def test_an_agent_claims_only_its_types(daemon) -> None:  # noqa: F811
    with connect(daemon) as c:
        c.tasks_create(id="beta-1", type="beta")
        c.tasks_create(id="alpha-1", type="alpha")
    agent = Agent("a-types", lambda task, ctx: {"type": task["type"]}, types=["alpha"], socket_path=daemon.socket_path)
    with running(agent), connect(daemon) as c:
        alpha = wait_for(status_is(daemon, "alpha-1", "done"), "alpha-1 done")
        claims = c.sys_stats()["tasks_claims"]
        wait_for(lambda: c.sys_stats()["tasks_claims"] >= claims + 2, "the agent to poll twice more")
        beta = c.tasks_get(id="beta-1")
    assert alpha["outputs"] == {"type": "alpha"}
    assert (beta["status"], beta["attempts"], beta["lease_owner"]) == ("pending", 0, None)


def test_outputs_that_are_not_json_fail_the_task_and_a_refused_claim_ends_the_run(daemon) -> None:  # noqa: F811
    with connect(daemon) as c:
        c.tasks_create(id="odd-out", type="odd-out")
    agent = Agent("a-odd", lambda task, ctx: {"when": object()}, types=["odd-out"], socket_path=daemon.socket_path)
    with running(agent):
        task = wait_for(status_is(daemon, "odd-out", "done", "failed"), "odd-out to end")
    assert task["status"] == "failed" and task["outputs"]["error_type"] == "OutputsRefused"
    assert "not JSON serializable" in task["outputs"]["error"]

    refused = Agent("a-bad", lambda task, ctx: None, types=["t" * 200], socket_path=daemon.socket_path)
    with pytest.raises(RpcError) as caught:
        refused.run()  # retrying cannot mend -32602: the run ends and says why
    assert caught.value.code == -32602


# --- leases --------------------------------------------------------------------------------------


def test_renewal_keeps_a_slow_task_held_beyond_its_lease(daemon) -> None:  # noqa: F811
    started, proceed = threading.Event(), threading.Event()

    def slow(task: Task, ctx: TaskContext) -> dict[str, Any]:
        started.set()
        assert proceed.wait(WAIT)
        return {"slow": True}

    with connect(daemon) as c:
        c.tasks_create(id="slow-1", type="slow")
    agent = Agent("a-slow", slow, types=["slow"], socket_path=daemon.socket_path, lease_s=1)
    try:
        with running(agent), connect(daemon) as c:
            assert started.wait(WAIT)
            first = c.tasks_get(id="slow-1")
            claimed = ts(first["claimed_at"])
            leases = []
            while time.time() < claimed + 2.5:  # more than twice the lease: only renewals keep it
                task = c.tasks_get(id="slow-1")
                assert (task["status"], task["lease_owner"], task["attempts"]) == ("running", "a-slow", 1), task
                leases.append(ts(task["lease_expires_at"]))
                time.sleep(0.05)  # the pace of the check, not a synchronisation
            proceed.set()
            done = wait_for(status_is(daemon, "slow-1", "done"), "slow-1 done")
    finally:
        proceed.set()
    assert leases[-1] > claimed + 2.0  # renewed again and again
    assert done["outputs"] == {"slow": True} and done["attempts"] == 1
    assert agent.counts == {"done": 1, "failed": 0, "lost": 0, "released": 0}


def test_a_lost_lease_cancels_a_coroutine_handler_and_nothing_is_written(daemon) -> None:  # noqa: F811
    started, cancelled = threading.Event(), threading.Event()

    async def forever(task: Task, ctx: AsyncTaskContext) -> dict[str, Any]:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return {}

    with connect(daemon) as c:
        c.tasks_create(id="victim-a", type="steal-a")
    agent = Agent("a-lost", forever, types=["steal-a"], socket_path=daemon.socket_path, lease_s=1)
    with running(agent), connect(daemon) as c:
        assert started.wait(WAIT)
        c.tasks_release(id="victim-a", agent_id="a-lost")  # behind its back: gone to another agent
        assert c.tasks_claim(agent_id="thief", types=["steal-a"])["task"]["id"] == "victim-a"
        assert cancelled.wait(WAIT)  # its next renewal was refused: the handler is cancelled
        wait_for(lambda: agent.counts["lost"] == 1, "the agent to count it lost")
        task = c.tasks_get(id="victim-a")
    assert (task["status"], task["lease_owner"], task["outputs"]) == ("running", "thief", {})
    assert agent.counts["done"] == agent.counts["failed"] == 0


def test_a_lost_lease_drops_a_plain_handlers_result(daemon) -> None:  # noqa: F811
    started, proceed, refused = threading.Event(), threading.Event(), threading.Event()

    def work(task: Task, ctx: TaskContext) -> dict[str, Any]:
        if task["id"] != "victim-s":
            return {"after": True}
        started.set()
        assert proceed.wait(WAIT)
        assert not ctx.held
        try:
            ctx.progress("too late")
        except LeaseLost:
            refused.set()
        return {"late": True}

    with connect(daemon) as c:
        c.tasks_create(id="victim-s", type="steal-s", conversation_id="c-lost")
    agent = Agent("a-lost-s", work, types=["steal-s"], socket_path=daemon.socket_path, lease_s=1)
    try:
        with running(agent), connect(daemon) as c:
            assert started.wait(WAIT)
            c.tasks_release(id="victim-s", agent_id="a-lost-s")
            assert c.tasks_claim(agent_id="thief", types=["steal-s"])["task"]["id"] == "victim-s"
            wait_for(lambda: agent.counts["lost"] == 1, "the agent to count it lost")
            c.tasks_create(id="after-s", type="steal-s")  # taken once the lost handler's thread has returned
            proceed.set()
            assert refused.wait(WAIT)
            after = wait_for(status_is(daemon, "after-s", "done"), "after-s done")
            task = c.tasks_get(id="victim-s")
            progress = c.log_query(conversation_id="c-lost", types=["agent.progress"])["events"]
    finally:
        proceed.set()
    assert after["outputs"] == {"after": True}
    assert (task["status"], task["lease_owner"], task["outputs"]) == ("running", "thief", {})
    assert progress == []


# --- stopping ------------------------------------------------------------------------------------


def test_stop_gives_the_held_task_back_and_run_puts_the_signal_handlers_back(daemon) -> None:  # noqa: F811
    started, proceed = threading.Event(), threading.Event()

    def blocked(task: Task, ctx: TaskContext) -> dict[str, Any]:
        started.set()
        proceed.wait(WAIT)
        return {"never": "delivered"}

    def mine(signum: int, frame: object) -> None:
        pass

    with connect(daemon) as c:
        c.tasks_create(id="held-1", type="held")
    agent = Agent("a-stop", blocked, types=["held"], socket_path=daemon.socket_path)

    def stopper() -> None:
        if started.wait(WAIT):
            agent.stop()  # from another thread

    before = signal.signal(signal.SIGTERM, mine)
    try:
        threading.Thread(target=stopper, daemon=True).start()
        agent.run()  # in the main thread: it takes SIGTERM and SIGINT for the run
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)
        proceed.set()
    task = get(daemon, "held-1")
    assert (task["status"], task["lease_owner"], task["attempts"], task["outputs"]) == ("pending", None, 0, {})
    assert agent.counts == {"done": 0, "failed": 0, "lost": 0, "released": 1}


AGENT_SCRIPT = """
import sys, threading
from sidecar_client import Agent

def handler(task, ctx):
    print("started", task["id"], flush=True)
    threading.Event().wait()  # blocks for ever: only a signal (or a kill) ends this agent

Agent(sys.argv[2], handler, types=["block"], socket_path=sys.argv[1], lease_s=int(sys.argv[3])).run()
print("returned", flush=True)
"""


@contextmanager
def agent_process(tmp_path: Path, socket_path: str, agent_id: str, lease_s: int) -> Iterator[tuple[Any, queue.Queue]]:
    """A process running an agent whose handler blocks; its stdout lines arrive in the queue."""
    script = tmp_path / "blocking_agent.py"
    script.write_text(AGENT_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), socket_path, agent_id, str(lease_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())

    threading.Thread(target=read, daemon=True).start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=WAIT)


def started_line(proc: Any, lines: queue.Queue) -> str:
    try:
        return str(lines.get(timeout=WAIT))
    except queue.Empty:
        proc.kill()
        raise AssertionError(f"the agent never started its task; stderr:\n{proc.communicate()[1]}") from None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_agent_process_gives_its_task_back_at_once_and_exits_0(daemon, tmp_path: Path, sig) -> None:  # noqa: F811
    with connect(daemon) as c:
        c.tasks_create(id="sig-1", type="block", conversation_id="c-sig")
    with agent_process(tmp_path, daemon.socket_path, "a-proc", 30) as (proc, lines):
        assert started_line(proc, lines) == "started sig-1"
        held = get(daemon, "sig-1")
        assert (held["status"], held["lease_owner"], held["attempts"]) == ("running", "a-proc", 1)
        proc.send_signal(sig)
        assert proc.wait(timeout=WAIT) == 0, proc.stderr.read() if proc.stderr else ""
        task = get(daemon, "sig-1")  # no waiting: it was given back before the process ended
        assert lines.get(timeout=WAIT) == "returned"
    assert (task["status"], task["lease_owner"], task["attempts"]) == ("pending", None, 0)


def test_a_killed_agent_process_loses_its_task_when_the_lease_runs_out(daemon, tmp_path: Path) -> None:  # noqa: F811
    with connect(daemon) as c:
        c.tasks_create(id="kill-1", type="block", conversation_id="c-kill")
    with agent_process(tmp_path, daemon.socket_path, "a-killed", 1) as (proc, lines):
        assert started_line(proc, lines) == "started kill-1"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=WAIT) == -signal.SIGKILL
    task = wait_for(status_is(daemon, "kill-1", "pending"), "the lease to run out")
    assert (task["lease_owner"], task["attempts"]) == (None, 1)  # the attempt counts: it was not given back
    with connect(daemon) as c:
        expired = c.log_query(conversation_id="c-kill", types=["task.lease_expired"])["events"]
    assert [e["task_id"] for e in expired] == ["kill-1"]


# --- the daemon going away -----------------------------------------------------------------------


def test_the_agent_reconnects_when_the_daemon_restarts_and_goes_on(start_daemon) -> None:  # noqa: F811
    first = start_daemon()
    started, proceed = threading.Event(), threading.Event()

    def work(task: Task, ctx: TaskContext) -> dict[str, Any]:
        if task["id"] == "before":
            started.set()
            assert proceed.wait(WAIT)
        ctx.progress(f"finishing {task['id']}")  # over whatever connection there is now
        return {"id": task["id"]}

    with connect(first) as c:
        c.tasks_create(id="before", type="restart", conversation_id="c-restart")
    agent = Agent("a-restart", work, types=["restart"], socket_path=first.socket_path, lease_s=5)
    try:
        with running(agent):
            assert started.wait(WAIT)
            assert first.stop() == 0  # the daemon goes away under the running handler...
            second = start_daemon(socket_path=first.socket_path)  # ...and comes back on the same data
            proceed.set()
            before = wait_for(status_is(second, "before", "done", "failed"), "the held task to be delivered")
            with connect(second) as c:
                c.tasks_create(id="after", type="restart", conversation_id="c-restart")
            after = wait_for(status_is(second, "after", "done", "failed"), "a new task to be done")
    finally:
        proceed.set()
    assert (before["status"], before["outputs"], before["attempts"]) == ("done", {"id": "before"}, 1)
    assert (after["status"], after["outputs"]) == ("done", {"id": "after"})
    with connect(second) as c:
        progress = c.log_query(conversation_id="c-restart", types=["agent.progress"])["events"]
    assert [e["data"]["msg"] for e in progress] == ["finishing before", "finishing after"]
    assert agent.counts == {"done": 2, "failed": 0, "lost": 0, "released": 0}


def test_an_agent_started_before_its_daemon_waits_for_it(start_daemon, tmp_path: Path) -> None:  # noqa: F811
    socket_path = str(tmp_path / "later" / "sidecar.sock")
    agent = Agent("a-early", lambda task, ctx: {"ok": True}, types=["early"], socket_path=socket_path)
    with running(agent):
        d = start_daemon(socket_path=socket_path)  # the agent is already trying, and backing off
        with connect(d) as c:
            c.tasks_create(id="early-1", type="early")
        task = wait_for(status_is(d, "early-1", "done"), "early-1 done")
    assert task["outputs"] == {"ok": True}
