"""The supervisor that keeps background work from taking the daemon down."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import TaskStatus

from sidecar.daemon.supervisor import supervise


def test_failed_work_is_counted_and_restarted_until_it_ends() -> None:
    runs: list[int] = []
    faults: list[str] = []
    finished = anyio.Event()

    async def work(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        runs.append(len(runs))
        task_status.started()
        if len(runs) < 3:
            raise RuntimeError(f"bug number {len(runs)}")
        finished.set()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(supervise, "worker", work, faults.append, (0.001, 0.002))
            await finished.wait()

    anyio.run(main)
    assert runs == [0, 1, 2] and faults == ["worker", "worker"]


def test_a_failure_to_start_is_raised_not_retried() -> None:
    attempts: list[int] = []

    async def work(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        attempts.append(1)
        raise OSError("cannot open what we need")

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(supervise, "worker", work, lambda name: None)

    with pytest.raises(BaseException) as info:
        anyio.run(main)
    assert "cannot open what we need" in repr(info.value) and attempts == [1]


def test_cancellation_is_not_a_fault() -> None:
    faults: list[str] = []

    async def work(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.sleep_forever()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(supervise, "worker", work, faults.append)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert faults == []
