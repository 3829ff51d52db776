"""Background work that cannot take the daemon down: a failure is logged, counted, and the
work restarted after a back-off, instead of tearing down the task group it runs in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

log = structlog.get_logger("sidecar.daemon")

BACKOFF = (0.1, 30.0)  # the first and the longest wait before a failed task is restarted


async def supervise(
    name: str,
    work: Callable[..., Any],
    on_fault: Callable[[str], None],
    backoff: tuple[float, float] = BACKOFF,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``work`` (started as ``tg.start`` starts it) until it returns; restart it each
    time it fails, waiting twice as long as the last time (reset once it runs again).

    A failure before ``work`` first reports itself started is a failure to start: it is
    raised, since a daemon without its appender or controller should not claim readiness."""
    delay = backoff[0]
    started = False
    while True:
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(work)
                if not started:
                    started = True
                    task_status.started()
                delay = backoff[0]
            return
        except Exception:
            if not started:
                raise
            on_fault(name)
            log.exception("daemon.task_failed", task=name, restart_in_s=delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, backoff[1])
