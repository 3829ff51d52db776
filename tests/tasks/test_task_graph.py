"""The task graph (S25): schema, links, cycles, transitions, readiness, and the file API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sidecar.clock import ManualClock
from sidecar.errors import ConflictError, InvalidParams, NotFoundError, StorageError
from sidecar.tasks import NewTask, Task, TaskGraph, TaskPatch, store

T0 = "2026-11-23T10:00:00.000000Z"


def ts(n: int) -> str:
    return f"2026-11-23T10:00:{n:02d}.000000Z"


def graph_with(*specs: tuple) -> TaskGraph:
    g = TaskGraph()
    for i, (tid, deps, parent, priority) in enumerate(specs):
        g.create(NewTask(type="t", id=tid, dependency_ids=deps, parent_id=parent, priority=priority), ts(i))
    return g


def test_create_fills_in_the_schema() -> None:
    g = TaskGraph()
    t = g.create(NewTask(type="build", owner="coder", inputs={"x": 1}, conversation_id="c1"), T0)
    assert (t.status, t.version, t.created_at, t.updated_at, t.priority) == ("pending", 1, T0, T0, 2)
    assert len(t.id) == 36 and g.get(t.id) == t


def test_every_change_bumps_version_and_updated_at() -> None:
    g = graph_with(("a", [], None, 2))
    t = g.update(TaskPatch(id="a", owner="rag"), ts(5))
    assert (t.version, t.updated_at, t.owner) == (2, ts(5), "rag")
    t = g.update(TaskPatch(id="a", status="running"), ts(6))
    assert t.version == 3


def test_expected_version_is_an_optimistic_lock() -> None:
    g = graph_with(("a", [], None, 2))
    g.update(TaskPatch(id="a", owner="x", expected_version=1), T0)
    with pytest.raises(ConflictError) as info:
        g.update(TaskPatch(id="a", owner="y", expected_version=1), T0)
    assert info.value.data["version"] == 2 and g.get("a").owner == "x"


def test_links_must_exist() -> None:
    g = graph_with(("a", [], None, 2))
    with pytest.raises(InvalidParams, match="does not exist") as info:
        g.create(NewTask(type="t", id="b", dependency_ids=["nope"]), T0)
    assert info.value.data["reason"] == "unknown dependency"
    with pytest.raises(InvalidParams, match="parent"):
        g.create(NewTask(type="t", id="b", parent_id="nope"), T0)
    with pytest.raises(NotFoundError):
        g.update(TaskPatch(id="ghost", owner="x"), T0)


def test_cycles_are_refused_and_named() -> None:
    g = graph_with(("a", [], None, 2), ("b", ["a"], None, 2), ("c", ["b"], None, 2))
    with pytest.raises(InvalidParams) as info:
        g.update(TaskPatch(id="a", dependency_ids=["c"]), T0)
    assert info.value.data == {"reason": "cycle", "cycle": ["a", "c", "b", "a"]}
    assert g.get("a").dependency_ids == []  # unchanged
    with pytest.raises(InvalidParams, match="its own"):
        g.update(TaskPatch(id="a", parent_id="a"), T0)
    g2 = graph_with(("p", [], None, 2), ("q", [], "p", 2))
    with pytest.raises(InvalidParams, match="cycle"):
        g2.update(TaskPatch(id="p", parent_id="q"), T0)


def test_transitions() -> None:
    g = graph_with(("a", [], None, 2))
    for status in ("running", "blocked", "running", "done"):
        g.update(TaskPatch(id="a", status=status), T0)
    with pytest.raises(InvalidParams, match="reopen") as info:
        g.update(TaskPatch(id="a", status="running"), T0)
    assert info.value.data["reason"] == "illegal transition"
    with pytest.raises(InvalidParams):
        g.update(TaskPatch(id="a", status="pending"), T0)
    assert g.update(TaskPatch(id="a", status="pending", reopen=True), T0).status == "pending"
    with pytest.raises(InvalidParams, match="cannot start as"):
        g.create(NewTask(type="t", status="done"), T0)


def test_ready_means_beads_ready() -> None:
    g = graph_with(
        ("base", [], None, 2),
        ("dep", ["base"], None, 1),  # waits for base
        ("parent", ["base"], None, 2),  # blocked by its dependency...
        ("child", [], "parent", 0),  # ...so its child waits too
        ("free", [], None, 3),
        ("urgent", [], None, 0),
    )
    assert [t.id for t in g.ready()] == ["urgent", "base", "free"]
    g.update(TaskPatch(id="base", status="running"), T0)
    g.update(TaskPatch(id="base", status="done"), T0)
    assert [t.id for t in g.ready()] == ["child", "urgent", "dep", "parent", "free"]
    g.update(TaskPatch(id="parent", status="blocked"), T0)
    assert "child" not in [t.id for t in g.ready()]


def test_list_active() -> None:
    g = graph_with(("a", [], None, 2), ("b", [], None, 1))
    g.update(TaskPatch(id="a", status="cancelled"), T0)
    assert [t.id for t in g.list_active()] == ["b"]
    assert [t.id for t in g.list_active(["cancelled"])] == ["a"]


def test_whole_graph_check_finds_cycles_and_dangling_links() -> None:
    g = graph_with(("a", [], None, 2), ("b", ["a"], None, 2))
    tasks = sorted(g.tasks.values(), key=lambda t: t.id)
    cyclic = [
        tasks[0].__class__(
            **{**{f: getattr(tasks[0], f) for f in tasks[0].__struct_fields__}, "dependency_ids": ["b"]}
        ),
        tasks[1],
    ]
    with pytest.raises(InvalidParams, match="cycle"):
        TaskGraph(cyclic)
    with pytest.raises(InvalidParams, match="unknown"):
        TaskGraph([tasks[1]])


# --- the file API --------------------------------------------------------------------------------


def test_file_api_round_trip(data_dir: Path) -> None:
    clock = ManualClock()
    a = store.create_task({"type": "build", "id": "a", "conversation_id": "c1"}, data_dir=data_dir, clock=clock)
    clock.advance(1)
    store.create_task({"type": "test", "id": "b", "dependency_ids": ["a"]}, data_dir=data_dir, clock=clock)
    assert [t["id"] for t in store.ready_tasks(data_dir=data_dir)] == ["a"]
    updated = store.update_task("a", status="done", data_dir=data_dir, clock=clock)
    assert updated["version"] == 2 and updated["updated_at"] > a["updated_at"]
    assert [t["id"] for t in store.list_active(data_dir=data_dir)] == ["b"]
    doc = json.loads((data_dir / "tasks.graph.json").read_text())
    assert doc["version"] == 3 and [t["id"] for t in doc["tasks"]] == ["a", "b"]
    assert store.load_graph(data_dir=data_dir)["tasks"][0]["status"] == "done"
    assert not list(data_dir.glob("tasks.graph.json.tmp*"))  # replaced atomically, nothing left over


def test_file_api_refuses_bad_input(data_dir: Path) -> None:
    store.create_task({"type": "t", "id": "a"}, data_dir=data_dir)
    before = (data_dir / "tasks.graph.json").read_bytes()
    with pytest.raises(InvalidParams):
        store.create_task({"type": "t", "id": "b", "dependency_ids": ["zzz"]}, data_dir=data_dir)
    with pytest.raises(InvalidParams):
        store.create_task({"type": "t", "bogus": 1}, data_dir=data_dir)
    with pytest.raises(InvalidParams):
        store.save_graph({"tasks": [{"id": "x"}]}, data_dir=data_dir)
    assert (data_dir / "tasks.graph.json").read_bytes() == before  # nothing half-written


def test_file_api_takes_a_whole_node_with_its_outputs(data_dir: Path) -> None:
    """The seed's create_task({..., "inputs": {...}, "outputs": {}, ...}) was refused for ``outputs``."""
    store.create_task({"type": "plan", "id": "p"}, data_dir=data_dir)
    node = {
        "id": "n1",
        "type": "build",
        "status": "running",
        "owner": "coder",
        "inputs": {"file": "a.py"},
        "outputs": {"partial": [1, 2]},
        "parent_id": "p",
        "dependency_ids": [],
        "conversation_id": "c1",
        "priority": 1,
    }
    made = store.create_task(node, data_dir=data_dir)
    assert {k: made[k] for k in node} == node and made["version"] == 1
    assert store.load_graph(data_dir=data_dir)["tasks"][1]["outputs"] == {"partial": [1, 2]}
    assert store.create_task({"type": "t", "id": "bare"}, data_dir=data_dir)["outputs"] == {}


def test_file_api_names_the_fields_only_the_graph_sets(data_dir: Path) -> None:
    made = store.create_task({"type": "t", "id": "a"}, data_dir=data_dir)
    copied = {**made, "id": "b"}  # a node as load_graph gives it: created_at, updated_at, version too
    with pytest.raises(InvalidParams, match="created_at, updated_at, version, lease_owner, .* are set by") as info:
        store.create_task(copied, data_dir=data_dir)
    fields = ["created_at", "updated_at", "version", "lease_owner", "lease_expires_at", "attempts", "claimed_at"]
    assert info.value.data == {"reason": "set by the graph", "fields": [*fields, "lease_s"]}
    with pytest.raises(InvalidParams, match="version is set by the graph"):
        store.create_task({"type": "t", "id": "c", "version": 1}, data_dir=data_dir)
    assert [t["id"] for t in store.load_graph(data_dir=data_dir)["tasks"]] == ["a"]


def test_a_new_task_keeps_its_outputs_in_the_graph() -> None:
    g = TaskGraph()
    t = g.create(NewTask(type="t", id="a", outputs={"done_so_far": 3}), T0)
    assert t.outputs == {"done_so_far": 3} and g.get("a").outputs == {"done_so_far": 3}
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"type": "t", "outputs": [1]}, NewTask)  # still an object


def test_a_broken_file_is_a_clear_error(data_dir: Path) -> None:
    store.create_task({"type": "t", "id": "a"}, data_dir=data_dir)
    (data_dir / "tasks.graph.json").write_text('{"tasks": [{"id": "a"')
    with pytest.raises(StorageError, match="not a valid task graph"):
        store.load_graph(data_dir=data_dir)


DEEP = b'{"tasks": [{"id": "a", "type": "t", "created_at": "x", "updated_at": "x", "inputs": ' + b'{"a":' * 5000
DEEP += b"1" + b"}" * 5000 + b"}]}"


@pytest.mark.parametrize("kind", ["deep", "directory", "symlink", "fifo", "cycle"])
def test_an_unusable_graph_file_is_a_clear_storage_error(data_dir: Path, tmp_path: Path, kind: str) -> None:
    store.create_task({"type": "t", "id": "a"}, data_dir=data_dir)
    path = data_dir / "tasks.graph.json"
    path.unlink()
    secret = tmp_path / "secret.json"
    secret.write_text('{"tasks": [], "version": 99}')
    if kind == "deep":
        path.write_bytes(DEEP)  # msgspec gives up with RecursionError
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        path.symlink_to(secret)
    elif kind == "fifo":
        os.mkfifo(path)  # opening it to read must not wait for a writer
    else:
        t = {"type": "t", "created_at": T0, "updated_at": T0}
        path.write_text(json.dumps({"tasks": [{**t, "id": "x", "dependency_ids": ["y"]}, {**t, "id": "y"}]}))
        path.write_text(path.read_text().replace('"id": "y"}', '"id": "y", "dependency_ids": ["x"]}'))
    for call in (
        lambda: store.load_graph(data_dir=data_dir),
        lambda: store.list_active(data_dir=data_dir),
        lambda: store.create_task({"type": "t", "id": "b"}, data_dir=data_dir),
    ):
        with pytest.raises(StorageError, match="tasks.graph.json") as info:
            call()
        assert info.value.code == -32006
    assert secret.read_text() == '{"tasks": [], "version": 99}'  # never followed, never written
    if kind == "deep":
        assert path.read_bytes() == DEEP  # a refused file is not overwritten


def test_temp_files_of_dead_writers_are_removed(data_dir: Path) -> None:
    store.create_task({"type": "t", "id": "a"}, data_dir=data_dir)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        stale = data_dir / f"tasks.graph.json.tmp.{int(dead.stdout)}"
        live = data_dir / f"tasks.graph.json.tmp.{alive.pid}"
        stale.write_text("{half a gra")
        live.write_text("{being writ")
        store.update_task("a", data_dir=data_dir, priority=1)
        assert not stale.exists() and live.exists()  # a live writer's is its own business
    finally:
        alive.communicate(b"")


def test_an_audit_event_is_made_to_fit_the_log() -> None:
    from sidecar.tasks.service import _audit_event, fit_audit_event

    g = TaskGraph()
    big = g.create(NewTask(type="t", id="big", conversation_id="c1", inputs={"blob": "x" * 100_000}), T0)
    done = g.update(TaskPatch(id="big", status="done", outputs={"log": "y" * 50_000}), ts(1))
    event = _audit_event(done, big, source="rpc")
    assert event is not None
    fitted = fit_audit_event(event, 4096)
    assert len(msgspec.json.encode(fitted)) + 256 <= 4096
    task = fitted.data["task"]
    assert (task["id"], task["status"], task["version"]) == ("big", "done", 2)  # what the controller needs
    assert task["inputs"] == {"omitted_bytes": len(msgspec.json.encode(big.inputs))} and fitted.data["omitted"] == [
        "inputs",
        "outputs",
    ]
    assert fit_audit_event(_audit_event(big, None, source="rpc"), 1 << 20).data["task"]["inputs"]["blob"]

    huge = Task(id="h", type="t" * 10_000, owner="o" * 10_000, created_at=T0, updated_at=T0, conversation_id="c1")
    hev = _audit_event(huge, None, source="file")
    assert hev is not None and hev.agent_id is None  # an agent_id is at most 256 characters
    small = fit_audit_event(hev, 2048)
    assert len(msgspec.json.encode(small)) + 256 <= 2048 and small.data["task"]["id"] == "h"


def test_the_checked_in_scaffold_loads(tmp_path: Path) -> None:
    """On a copy: even a read takes the graph's lock file, which must not land in the checkout."""
    root = Path(__file__).resolve().parents[2]
    copy = shutil.copytree(root / "data", tmp_path / "data")
    assert store.load_graph(data_dir=copy) == {"tasks": [], "version": 0}


RACER = textwrap.dedent(
    """
    import sys
    from sidecar.errors import ConflictError
    from sidecar.task_graph import store  # the contract's name for the embedded API
    try:
        store.update_task("a", data_dir=sys.argv[1], owner=sys.argv[2], expected_version=1)
        print("won")
    except ConflictError:
        print("conflict")
    """
)


def test_two_processes_race_with_expected_version(data_dir: Path, python_env: dict) -> None:
    store.create_task({"type": "t", "id": "a"}, data_dir=data_dir)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(data_dir), name], stdout=subprocess.PIPE, env=python_env, text=True
        )
        for name in ("one", "two", "three", "four")
    ]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["conflict", "conflict", "conflict", "won"]
    task = store.load_graph(data_dir=data_dir)["tasks"][0]
    assert task["version"] == 2 and task["owner"] in ("one", "two", "three", "four")


# --- properties ----------------------------------------------------------------------------------


class GraphModel(RuleBasedStateMachine):
    """Random operations never leave a cycle, and ready() equals a brute-force answer."""

    def __init__(self) -> None:
        super().__init__()
        self.g = TaskGraph()
        self.n = 0

    def ids(self) -> list[str]:
        return sorted(self.g.tasks)

    @rule(data=st.data(), priority=st.integers(0, 3))
    def create(self, data, priority) -> None:
        ids = self.ids()
        deps = data.draw(st.lists(st.sampled_from(ids), max_size=3)) if ids else []
        parent = data.draw(st.one_of(st.none(), st.sampled_from(ids))) if ids else None
        self.n += 1
        self.g.create(
            NewTask(type="t", id=f"t{self.n}", dependency_ids=deps, parent_id=parent, priority=priority),
            ts(self.n % 60),
        )

    @rule(data=st.data())
    def relink(self, data) -> None:
        ids = self.ids()
        if not ids:
            return
        tid = data.draw(st.sampled_from(ids))
        deps = data.draw(st.lists(st.sampled_from(ids), max_size=3))
        parent = data.draw(st.one_of(st.none(), st.sampled_from(ids)))
        before = dict(self.g.tasks)
        try:
            self.g.update(TaskPatch(id=tid, dependency_ids=deps, parent_id=parent), T0)
        except InvalidParams as exc:
            assert exc.data["reason"] == "cycle"
            assert self.g.tasks == before  # a refused change changes nothing

    @rule(data=st.data(), status=st.sampled_from(["running", "blocked", "done", "failed", "cancelled", "pending"]))
    def move(self, data, status) -> None:
        ids = self.ids()
        if not ids:
            return
        tid = data.draw(st.sampled_from(ids))
        try:
            self.g.update(TaskPatch(id=tid, status=status, reopen=data.draw(st.booleans())), T0)
        except InvalidParams as exc:
            assert exc.data["reason"] == "illegal transition"

    @invariant()
    def no_cycles(self) -> None:
        for edges in (lambda t: t.dependency_ids, lambda t: [t.parent_id] if t.parent_id else []):
            assert not _has_cycle(self.g, edges)

    @invariant()
    def ready_is_brute_force(self) -> None:
        tasks = self.g.tasks

        def blocked(tid: str) -> bool:
            t = tasks[tid]
            if t.status == "blocked" or any(tasks[d].status != "done" for d in t.dependency_ids):
                return True
            return t.parent_id is not None and blocked(t.parent_id)

        want = sorted(
            (t for t in tasks.values() if t.status == "pending" and not blocked(t.id)),
            key=lambda t: (t.priority, t.created_at, t.id),
        )
        assert [t.id for t in self.g.ready()] == [t.id for t in want]


def _has_cycle(g: TaskGraph, edges) -> bool:  # type: ignore[no-untyped-def]
    """Depth-first search with colours: a grey node met again is a cycle."""
    state: dict[str, int] = {}

    def visit(node: str) -> bool:
        state[node] = 1
        for nxt in edges(g.tasks[node]):
            if state.get(nxt) == 1 or (nxt not in state and visit(nxt)):
                return True
        state[node] = 2
        return False

    return any(tid not in state and visit(tid) for tid in list(g.tasks))


TestGraphModel = GraphModel.TestCase
TestGraphModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
