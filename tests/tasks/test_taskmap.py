"""TaskMap: a copy and its original never see each other's writes, whatever is written."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given

from sidecar.tasks.model import Task
from sidecar.tasks.taskmap import TaskMap

Op = tuple[str, str, int]  # (side, id, priority); priority -1 deletes


def task(task_id: str, priority: int) -> Task:
    return Task(id=task_id, type="t", created_at="2026-01-01T00:00:00.000000Z", updated_at="x", priority=priority)


ids = st.sampled_from([f"t{i}" for i in range(40)])


@given(
    st.lists(st.tuples(ids, st.integers(0, 9)), max_size=60),
    st.lists(st.tuples(st.sampled_from(["copy", "original"]), ids, st.integers(-1, 9)), max_size=60),
)
def test_a_copy_is_a_dict_of_its_own(start: list[tuple[str, int]], ops: list[Op]) -> None:
    original = TaskMap(task(i, p) for i, p in start)
    model_original = {i: task(i, p) for i, p in start}
    copy = original.copy()
    model_copy = dict(model_original)
    for side, task_id, priority in ops:
        target, model = (copy, model_copy) if side == "copy" else (original, model_original)
        if priority < 0:
            if task_id in model:
                del target[task_id], model[task_id]
        else:
            target[task_id] = model[task_id] = task(task_id, priority)
    for target, model in ((original, model_original), (copy, model_copy)):
        assert dict(target) == model and len(target) == len(model)
        assert sorted(t.id for t in target.all()) == sorted(model)
        assert all(
            (k in target) == (k in model) and target.get(k) == model.get(k) for k in [f"t{i}" for i in range(40)]
        )
