"""``sidecar_client.Agent`` and vector clocks (contract section 14), against a real daemon: what
an agent writes is ordered after what it read, and a clock the daemon refuses is mended.

Nothing sleeps to synchronise: the test waits for conditions it polls with a deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from sidecar_client import Agent, AsyncTaskContext, RpcError, Task, TaskContext

from tests.client.agents import connect, running, wait_for
from tests.daemon.conftest import daemon, start_daemon  # noqa: F401


def done(d: Any, task_id: str) -> Callable[[], Task | None]:
    def check() -> Task | None:
        with connect(d) as c:
            task = c.tasks_get(id=task_id)
        return task if task.get("status") in ("done", "failed") else None

    return check


def run_one(d: Any, agent_id: str, task_id: str, handler: Any) -> Task:
    """Run ``handler`` as ``agent_id`` on the task ``task_id`` (of its own type) to its end."""
    agent = Agent(agent_id, handler, types=[task_id], socket_path=d.socket_path)
    with running(agent):
        task = wait_for(done(d, task_id), f"{task_id} to end")
    assert task["status"] == "done", task["outputs"]
    return task


def order(d: Any, a: str, b: str) -> str:
    with connect(d) as c:
        return c.log_compare(a=a, b=b)["order"]


# --- what an agent read comes before what it writes ------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_progress_after_a_read_is_ordered_after_it_and_without_the_read_concurrent(daemon, kind) -> None:  # noqa: F811
    conversations = {"read": f"c-read-{kind}", "unread": f"c-unread-{kind}"}
    others: dict[str, str] = {}
    with connect(daemon) as c:
        for name, conversation in conversations.items():
            c.tasks_create(id=f"{name}-{kind}", type=f"{name}-{kind}", conversation_id=conversation)
            others[name] = c.log_append(conversation_id=conversation, type="note", agent_id="other")["id"]
    progress: dict[str, dict[str, Any]] = {}

    def reader(task: Task, ctx: TaskContext) -> dict[str, Any]:
        if task["type"].startswith("read"):
            assert ctx.call("log.get", {"event_id": others["read"]})["agent_id"] == "other"
        progress[task["type"]] = dict(ctx.progress("after the read, or not"))
        return {}

    async def async_reader(task: Task, ctx: AsyncTaskContext) -> dict[str, Any]:
        if task["type"].startswith("read"):  # log.tail's events list this time
            events = (await ctx.call("log.tail", {"conversation_id": ctx.conversation_id}))["events"]
            assert others["read"] in [e["id"] for e in events]
        progress[task["type"]] = dict(await ctx.progress("after the read, or not"))
        return {}

    handler = reader if kind == "sync" else async_reader
    for name in conversations:
        run_one(daemon, f"a-clk-{name}-{kind}", f"{name}-{kind}", handler)

    read, unread = progress[f"read-{kind}"], progress[f"unread-{kind}"]
    assert read["clock"]["other"] == 1  # the answer to the append is the stored clock
    assert order(daemon, others["read"], read["id"]) == "before"
    assert order(daemon, read["id"], others["read"]) == "after"
    assert "other" not in unread["clock"]
    assert order(daemon, others["unread"], unread["id"]) == "concurrent"
    with connect(daemon) as c:  # as stored, and as the log gives it back
        assert c.log_get(event_id=read["id"])["clock"] == read["clock"]


def test_observe_orders_progress_after_an_event_read_elsewhere(daemon) -> None:  # noqa: F811
    with connect(daemon) as c:
        c.tasks_create(id="obs", type="obs", conversation_id="c-obs")
        first = c.log_append(conversation_id="c-obs", type="note", agent_id="other")
        c.log_append(conversation_id="c-obs", type="note", agent_id="third")
        seen = c.log_get(event_id=first["id"])  # read with a client of its own, not ctx.call
    ids: list[str] = []

    def handler(task: Task, ctx: TaskContext) -> None:
        ctx.observe(seen)
        ids.append(ctx.progress("after what I was shown")["id"])

    run_one(daemon, "a-obs", "obs", handler)
    with connect(daemon) as c:
        third = c.log_query(conversation_id="c-obs", types=["note"])["events"][1]
        assert c.log_get(event_id=ids[0])["clock"].get("other") == 1
    assert order(daemon, first["id"], ids[0]) == "before"
    assert order(daemon, third["id"], ids[0]) == "concurrent"  # observed nothing of that one


def test_events_a_handler_appends_as_itself_get_clocks(daemon) -> None:  # noqa: F811
    with connect(daemon) as c:
        c.tasks_create(id="own", type="own", conversation_id="c-own")
        other = c.log_append(conversation_id="c-own", type="note", agent_id="other")["id"]
    results: dict[str, Any] = {}

    async def handler(task: Task, ctx: AsyncTaskContext) -> None:
        causality = await ctx.call("log.causality", {"event_id": other})
        assert causality["event"]["id"] == other
        one = {"conversation_id": "c-own", "type": "note", "agent_id": "a-own"}
        results["one"] = await ctx.call("log.append", one)
        results["many"] = await ctx.call("log.append_many", {"events": [one, one, {**one, "agent_id": "x"}]})
        results["progress"] = await ctx.progress("last")

    run_one(daemon, "a-own", "own", handler)
    one, (two, three, foreign), last = results["one"], results["many"], results["progress"]
    assert order(daemon, other, one["id"]) == "before"
    mine = [one["clock"]["a-own"], two["clock"]["a-own"], three["clock"]["a-own"], last["clock"]["a-own"]]
    assert mine == sorted(set(mine)), mine  # one after another
    assert order(daemon, one["id"], two["id"]) == "before" and order(daemon, two["id"], three["id"]) == "before"
    assert "a-own" not in foreign["clock"]  # another writer's: the daemon computed it


# --- a clock the daemon refuses ------------------------------------------------------------------------


def test_an_agent_whose_id_wrote_before_mends_its_refused_clock(daemon, caplog) -> None:  # noqa: F811
    """The runtime starts knowing nothing of what was written under its id (as after a restart):
    its first clock is refused, and the refusal's previous clock and floor are taken in."""
    with connect(daemon) as c:
        c.tasks_create(id="again", type="again", conversation_id="c-again")
        other = c.log_append(conversation_id="c-again", type="note", agent_id="other")["id"]
        for _ in range(2):
            c.log_append(conversation_id="c-again", type="note", agent_id="a-again")
        earlier = c.log_append(conversation_id="c-again", type="note", agent_id="a-again", caused_by=[other])
    assert earlier["clock"] == {"a-again": 3, "other": 1}
    ids: list[str] = []

    def handler(task: Task, ctx: TaskContext) -> None:
        ids.append(ctx.progress("still me")["id"])
        ids.append(ctx.progress("and again")["id"])

    with caplog.at_level(logging.INFO, logger="sidecar_client.agent"):
        run_one(daemon, "a-again", "again", handler)
    refusals = [r for r in caplog.records if "sending it again" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]  # once, then it knew
    with connect(daemon) as c:
        first, second = (c.log_get(event_id=i) for i in ids)
    # Past the earlier events and the task.claimed the daemon wrote under the agent's id (4).
    assert first["clock"] == {"a-again": 5, "other": 1}
    assert second["clock"] == {"a-again": 6, "other": 1}
    assert order(daemon, earlier["id"], first["id"]) == "before"
    assert order(daemon, other, first["id"]) == "before"


def test_other_conflicts_are_not_mended(daemon) -> None:  # noqa: F811
    with connect(daemon) as c:
        c.tasks_create(id="seq", type="seq", conversation_id="c-seq")
    caught: list[RpcError] = []

    def handler(task: Task, ctx: TaskContext) -> None:
        event = {"conversation_id": "c-seq", "type": "note", "agent_id": "a-seq", "expected_seq": 99}
        with pytest.raises(RpcError) as exc:
            ctx.call("log.append", event)
        caught.append(exc.value)
        bad_clock = {"conversation_id": "c-seq", "type": "note", "agent_id": "a-seq", "clock": {"a-seq": 1}}
        with pytest.raises(RpcError) as exc:  # its own clock, sent as it is: not mended
            ctx.call("log.append", bad_clock)
        caught.append(exc.value)
        ctx.progress("still fine")

    run_one(daemon, "a-seq", "seq", handler)
    assert [e.code for e in caught] == [-32001, -32001]
    assert "expected_seq" in caught[0].data and caught[1].data["writer"] == "a-seq"
    with connect(daemon) as c:
        assert [e["type"] for e in c.log_tail(conversation_id="c-seq")["events"]][-1] == "task.updated"
        progress = c.log_query(conversation_id="c-seq", types=["agent.progress"])["events"]
    assert len(progress) == 1
