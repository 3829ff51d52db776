"""Claims under leases: the claim index against a brute-force model (hypothesis), and the
service's leases, renewals, fencing, timeouts, retries and back-pressure on a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sidecar.clock import ManualClock
from sidecar.errors import ConflictError, InvalidParams, OverloadedError
from sidecar.log.events import NewEvent
from sidecar.log.timestamps import format_timestamp
from sidecar.tasks.graph import TaskGraph
from sidecar.tasks.model import Claim, NewTask, Release, Renew, TaskPatch
from sidecar.tasks.queue import ClaimQueue
from sidecar.tasks.service import TaskService

NS = 1_000_000_000


class ClaimModel(RuleBasedStateMachine):
    """The queue's choice is always the brute-force best ready task, and nothing held is
    handed out again."""

    def __init__(self) -> None:
        super().__init__()
        self.graph = TaskGraph()
        self.queue = ClaimQueue()
        self.now = 1_790_000_000 * NS
        self.held: dict[str, str] = {}  # task -> agent, by the model

    def _apply(self, before, after) -> None:  # type: ignore[no-untyped-def]
        self.queue.changed(self.graph, before, after)

    @rule(kind=st.sampled_from(["a", "b"]), priority=st.integers(0, 3), data=st.data())
    def create(self, kind: str, priority: int, data: st.DataObject) -> None:
        ids = sorted(self.graph.tasks)
        deps = data.draw(st.lists(st.sampled_from(ids), max_size=2, unique=True)) if ids else []
        parent = data.draw(st.none() | st.sampled_from(ids)) if ids else None
        self.now += 1000  # each task a microsecond younger than the last
        new = NewTask(type=kind, priority=priority, dependency_ids=deps, parent_id=parent, id=f"t{len(ids)}")
        self._apply(None, self.graph.create(new, format_timestamp(self.now)))

    @rule(agent=st.sampled_from(["x", "y", "z"]), types=st.none() | st.lists(st.sampled_from(["a", "b"]), min_size=1))
    def claim(self, agent: str, types: list[str] | None) -> None:
        ready = [t for t in self.graph.ready() if types is None or t.type in types]
        chosen = self.queue.take(self.graph, types)
        if not ready:
            assert chosen is None
            return
        assert chosen is not None and chosen.id == ready[0].id, (chosen, ready[0])
        assert chosen.id not in self.held  # never handed out twice
        before = self.graph.tasks[chosen.id]
        self._apply(before, self.graph.claim(chosen.id, agent, 5, self.now))
        self.held[chosen.id] = agent

    @precondition(lambda self: self.held)
    @rule(data=st.data(), outcome=st.sampled_from(["done", "failed", "blocked", "release"]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.held)))
        agent = self.held.pop(task_id)
        before = self.graph.tasks[task_id]
        if outcome == "release":
            after = self.graph.release(task_id, agent, self.now)
        else:
            patch = TaskPatch(id=task_id, status=outcome, agent_id=agent)  # type: ignore[arg-type]
            after = self.graph.update(patch, format_timestamp(self.now))
        self._apply(before, after)

    @precondition(lambda self: any(t.status == "blocked" for t in self.graph.tasks.values()))
    @rule(data=st.data())
    def unblock(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(t.id for t in self.graph.tasks.values() if t.status == "blocked")))
        before = self.graph.tasks[task_id]
        self._apply(before, self.graph.update(TaskPatch(id=task_id, status="pending"), format_timestamp(self.now)))

    @rule()
    def leases_run_out(self) -> None:
        self.now += 6 * NS
        for task_id in self.queue.due(format_timestamp(self.now)):
            before = self.graph.tasks[task_id]
            expired = self.graph.expire(task_id, self.now)
            if expired is not None:
                self._apply(before, expired[0])
                self.held.pop(task_id, None)

    @invariant()
    def the_model_agrees(self) -> None:
        running = {t.id: t.lease_owner for t in self.graph.tasks.values() if t.lease_owner is not None}
        assert running == self.held
        assert self.queue.pending == sum(t.status == "pending" for t in self.graph.tasks.values())


TestClaimModel = ClaimModel.TestCase
TestClaimModel.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


# --- the service, on a manual clock ------------------------------------------------------------------


class Harness:
    def __init__(self, service: TaskService, clock: ManualClock, events: list[NewEvent]) -> None:
        self.service, self.clock, self.events = service, clock, events

    def types(self) -> list[str]:
        return [e.type for e in self.events]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async for h in _harness(tmp_path, max_pending=10_000):
        yield h


async def _harness(tmp_path: Path, max_pending: int) -> AsyncIterator[Harness]:
    clock = ManualClock()
    events: list[NewEvent] = []

    async def audit(batch: list[NewEvent]) -> None:
        events.extend(batch)

    service = TaskService(str(tmp_path), audit=audit, clock=clock, max_pending=max_pending)
    service.load()
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        yield Harness(service, clock, events)
        tg.cancel_scope.cancel()


def new(task_id: str, **kw) -> NewTask:  # type: ignore[no-untyped-def]
    return NewTask(id=task_id, type=kw.pop("type", "index"), conversation_id="c1", **kw)


@pytest.mark.anyio
async def test_a_lease_that_runs_out_gives_the_task_back_then_fails_it(harness: Harness) -> None:
    s, clock = harness.service, harness.clock
    await s.create(new("t1", max_attempts=2))
    first = await s.claim(Claim(agent_id="a", lease_s=10))
    assert first is not None and first.attempts == 1 and first.lease_owner == "a" and first.status == "running"
    clock.advance(9.9)
    await s.sweep()
    assert s.get("t1").status == "running"  # not yet
    clock.advance(0.1)
    await s.sweep()
    back = s.get("t1")
    assert back.status == "pending" and back.lease_owner is None and back.lease_expires_at is None
    second = await s.claim(Claim(agent_id="b", lease_s=10))
    assert second is not None and second.attempts == 2 and second.owner == "b"
    clock.advance(10)
    await s.sweep()
    failed = s.get("t1")
    assert failed.status == "failed" and "max_attempts 2" in failed.outputs["error"]
    assert harness.types() == [
        "task.created",
        "task.claimed",
        "task.lease_expired",
        "task.claimed",
        "task.lease_expired",
    ]
    assert harness.events[-1].data["task"]["status"] == "failed"


@pytest.mark.anyio
async def test_renewal_by_the_holder_only_and_by_heartbeat(harness: Harness) -> None:
    s, clock = harness.service, harness.clock
    await s.create(new("t1"))
    claimed = await s.claim(Claim(agent_id="a", lease_s=10))
    assert claimed is not None
    clock.advance(8)
    renewed = await s.renew(Renew(id="t1", agent_id="a", lease_s=20))
    assert renewed.version == claimed.version and renewed.lease_expires_at > (claimed.lease_expires_at or "")
    with pytest.raises(ConflictError):
        await s.renew(Renew(id="t1", agent_id="b", lease_s=20))
    clock.advance(15)
    await s.heartbeat("t1", "a")  # renews by the last lease_s: 20 s from now
    await s.heartbeat("t1", "b")  # not the holder: nothing changes
    clock.advance(15)
    await s.sweep()
    assert s.get("t1").lease_owner == "a"  # 38 s after the claim, still held
    clock.advance(5)
    await s.sweep()
    assert s.get("t1").status == "pending"
    assert harness.types().count("task.claimed") == 1 and "task.updated" not in harness.types()  # renewals: no event


@pytest.mark.anyio
async def test_only_the_holder_may_finish_a_held_task(harness: Harness) -> None:
    s = harness.service
    await s.create(new("t1"))
    await s.claim(Claim(agent_id="a"))
    for agent in (None, "b"):
        with pytest.raises(ConflictError) as refused:
            await s.update(TaskPatch(id="t1", status="done", agent_id=agent))
        assert refused.value.data["lease_owner"] == "a"
    with pytest.raises(ConflictError):
        await s.update(TaskPatch(id="t1", outputs={"x": 1}))
    assert (await s.update(TaskPatch(id="t1", priority=0))).priority == 0  # other fields: anyone
    done = await s.update(TaskPatch(id="t1", status="done", agent_id="a", outputs={"ok": True}))
    assert done.status == "done" and done.lease_owner is None and done.outputs == {"ok": True}
    with pytest.raises(ConflictError):
        await s.release(Release(id="t1", agent_id="a"))  # no longer held


@pytest.mark.anyio
async def test_release_refunds_the_attempt_and_a_timeout_fails_the_task(harness: Harness) -> None:
    s, clock = harness.service, harness.clock
    await s.create(new("t1", timeout_s=30))
    await s.claim(Claim(agent_id="a", lease_s=10))
    released = await s.release(Release(id="t1", agent_id="a"))
    assert released.status == "pending" and released.attempts == 0
    await s.claim(Claim(agent_id="a", lease_s=10))
    for _ in range(3):  # renewed all along, but the timeout counts from the claim
        clock.advance(9)
        await s.renew(Renew(id="t1", agent_id="a", lease_s=10))
    await s.sweep()
    assert s.get("t1").status == "running"
    clock.advance(3)
    await s.sweep()
    timed_out = s.get("t1")
    assert timed_out.status == "failed" and timed_out.outputs["error"] == "timeout"
    assert harness.types()[-1] == "task.timed_out"


@pytest.mark.anyio
async def test_claims_take_the_best_ready_task_of_the_types_asked(harness: Harness) -> None:
    s, clock = harness.service, harness.clock
    await s.create(new("old", priority=2))
    clock.advance(1)
    await s.create(new("new", priority=2))
    await s.create(new("urgent", priority=0, dependency_ids=["old"]))
    await s.create(new("other", type="search", priority=1))
    assert (await s.claim(Claim(agent_id="a", types=["index"]))).id == "old"  # type: ignore[union-attr]
    assert (await s.claim(Claim(agent_id="a", types=["index"]))).id == "new"  # type: ignore[union-attr]
    assert await s.claim(Claim(agent_id="a", types=["index"])) is None  # urgent waits for old
    await s.update(TaskPatch(id="old", status="done", agent_id="a"))
    assert (await s.claim(Claim(agent_id="b"))).id == "urgent"  # type: ignore[union-attr]
    assert (await s.claim(Claim(agent_id="b"))).id == "other"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_back_pressure_warns_fills_refuses_and_clears(tmp_path: Path) -> None:
    async for h in _harness(tmp_path, max_pending=5):
        s = h.service
        for i in range(4):
            await s.create(new(f"t{i}"))
        assert [e.type for e in h.events if e.conversation_id == "system"] == ["backpressure.warning"]
        await s.create(new("t4"))
        with pytest.raises(OverloadedError) as full:
            await s.create(new("t5"))
        assert full.value.data == {"pending": 5, "max_pending": 5}
        await s.create(new("busy", status="running"))  # only the pending queue is bounded
        for _ in range(2):
            await s.claim(Claim(agent_id="a"))
        pressure = [(e.type, e.data["pending"]) for e in h.events if e.conversation_id == "system"]
        assert pressure == [("backpressure.warning", 4), ("backpressure.full", 5), ("backpressure.cleared", 3)]
        assert all(e.visibility == "status" for e in h.events if e.conversation_id == "system")
        assert s.pending == 3


def test_a_restart_gives_every_held_lease_a_fresh_lease_s(tmp_path: Path) -> None:
    clock = ManualClock()

    async def hold() -> None:
        async for h in _harness(tmp_path, max_pending=10):
            await h.service.create(new("t1"))
            await h.service.claim(Claim(agent_id="a", lease_s=60))

    anyio.run(hold)
    later = TaskService(str(tmp_path), clock=clock)
    clock.advance(3600)  # down for an hour: the old lease is long gone
    later.load()
    task = later.get("t1")
    assert task.lease_owner == "a" and task.lease_expires_at == format_timestamp(clock.now_ns() + 60 * NS)
    assert later.queue.take(later.graph, None) is None  # still held: not handed out again


@pytest.mark.anyio
async def test_a_late_holder_cannot_renew_or_finish_once_its_lease_ran_out(harness: Harness) -> None:
    s, clock = harness.service, harness.clock
    await s.create(new("t1"))
    await s.claim(Claim(agent_id="a", lease_s=5))
    clock.advance(3)
    renewed = await s.renew(Renew(id="t1", agent_id="a"))  # no lease_s: by its last, 5 s
    assert renewed.lease_expires_at == format_timestamp(clock.now_ns() + 5 * NS)
    clock.advance(5)
    with pytest.raises(ConflictError, match="ran out"):  # run out, though not yet swept
        await s.renew(Renew(id="t1", agent_id="a"))
    await s.sweep()
    with pytest.raises(ConflictError):  # its late result must not finish the task
        await s.update(TaskPatch(id="t1", status="done", agent_id="a", outputs={"late": True}))
    assert s.get("t1").status == "pending" and s.get("t1").outputs == {}
    manual = await s.update(TaskPatch(id="t1", status="cancelled"))  # a person, naming no agent, still may
    assert manual.status == "cancelled"


def test_a_dependency_done_frees_the_children_of_its_dependents_too() -> None:
    """Found by ClaimModel: t2's parent t1 waited on t0; t0 done makes t2 claimable too."""
    graph, queue, now = TaskGraph(), ClaimQueue(), 1_790_000_000 * NS

    def put(before, after) -> None:  # type: ignore[no-untyped-def]
        queue.changed(graph, before, after)

    put(None, graph.create(NewTask(id="t0", type="a", priority=0), format_timestamp(now)))
    put(None, graph.create(NewTask(id="t1", type="a", priority=1, dependency_ids=["t0"]), format_timestamp(now + 1)))
    t0 = queue.take(graph, None)
    assert t0 is not None and t0.id == "t0"
    put(t0, graph.claim("t0", "x", 5, now))
    put(None, graph.create(NewTask(id="t2", type="a", priority=0, parent_id="t1"), format_timestamp(now + 2)))
    assert queue.take(graph, None) is None  # t1 waits for t0, and t2 with its parent
    before = graph.tasks["t0"]
    put(before, graph.update(TaskPatch(id="t0", status="done", agent_id="x"), format_timestamp(now + 3)))
    assert [t.id for t in graph.ready()] == ["t2", "t1"]
    assert [queue.take(graph, None).id, queue.take(graph, None).id] == ["t2", "t1"]  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_claim_the_log_could_not_record_leaves_the_task_pending_and_queued(tmp_path: Path) -> None:
    async for h in _harness(tmp_path, max_pending=10):
        s = h.service
        probe = await s.create(new("probe"))
        base = len(msgspec.json.encode(probe))
        s.max_event_bytes = base + 1500  # room for a bigger task, not for its lease fields too
        await s.create(new("t1", inputs={"pad": "x" * 1000}))
        await s.claim(Claim(agent_id="a", types=["other"]))  # nothing of that type: no change
        await s.update(TaskPatch(id="probe", status="cancelled"))
        with pytest.raises(InvalidParams, match="max_event_bytes"):
            await s.claim(Claim(agent_id="a-very-long-agent-name-" + "z" * 200, lease_s=3600))
        task = s.get("t1")
        assert task.status == "pending" and task.version == 1 and task.lease_owner is None
        assert s.pending == 1 and s.queue.take(s.graph, None) is not None  # still queued
