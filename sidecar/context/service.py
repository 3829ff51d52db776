"""Context for a conversation as the daemon serves it: from the incremental summary state
(no re-read of the log) and the conversation's active and ready tasks."""

from __future__ import annotations

import anyio

from sidecar.context.build import Context, build_context
from sidecar.errors import StorageError
from sidecar.summary.cache import SummaryCache
from sidecar.tasks.service import TaskService
from sidecar.tokens import TokenCounter


class ContextService:
    """``build_context`` over the daemon's live state; given its three sources, nothing more."""

    def __init__(self, tasks: TaskService, summaries: SummaryCache, counter: TokenCounter) -> None:
        self.tasks = tasks
        self.summaries = summaries
        self.counter = counter

    async def build(self, cid: str, budget_tokens: int, system_prompt: str) -> Context:
        graph = self.tasks.graph
        try:
            tasks = [t for t in graph.list_active() if t.conversation_id == cid]
            ready = [t for t in graph.ready() if t.conversation_id == cid]
        except StorageError:  # the task graph file is unusable: the context goes on without it
            tasks, ready = [], []
        state = (await self.summaries.state(cid)).copy()  # a snapshot: commits go on meanwhile

        def work() -> Context:
            return build_context(
                cid,
                state=state,
                budget_tokens=budget_tokens,
                system_prompt=system_prompt,
                tasks=tasks,
                ready=ready,
                counter=self.counter,
            )

        return await anyio.to_thread.run_sync(work)
