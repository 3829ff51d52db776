"""Context for a conversation as the daemon serves it: from the incremental summary state
(no re-read of the log), the conversation's active and ready tasks, and, when asked, the
tasks around a focus task and the older events that match a query (from the search index)."""

from __future__ import annotations

import anyio

from sidecar.context.build import RECENT_WINDOW, Context, Focus, Related, build_context
from sidecar.errors import StorageError
from sidecar.search.service import SearchService
from sidecar.summary.cache import SummaryCache
from sidecar.tasks.graph import TaskGraph
from sidecar.tasks.model import Task
from sidecar.tasks.service import TaskService
from sidecar.tokens import TokenCounter

RELATED = 10  # matching older events asked of the index for the related layer
HOPS = 2  # how far along dependencies the focus layer reaches, either way


class ContextService:
    """``build_context`` over the daemon's live state; given its sources, nothing more."""

    def __init__(
        self, tasks: TaskService, summaries: SummaryCache, counter: TokenCounter, search: SearchService
    ) -> None:
        self.tasks = tasks
        self.summaries = summaries
        self.counter = counter
        self.search = search

    async def build(
        self,
        cid: str,
        budget_tokens: int,
        system_prompt: str,
        *,
        query: str | None = None,
        focus_task_id: str | None = None,
    ) -> Context:
        graph = self.tasks.graph
        focus_tasks: list[Task] = []
        try:
            tasks = [t for t in graph.list_active() if t.conversation_id == cid]
            ready = [t for t in graph.ready() if t.conversation_id == cid]
            if focus_task_id is not None:
                focus_tasks = around(graph, self.tasks.queue.dependents, focus_task_id, HOPS)
                ready = [t for t in graph.ready() if t.id in {f.id for f in focus_tasks}]
        except StorageError:  # the task graph file is unusable: the context goes on without it
            tasks, ready = [], []
        state = (await self.summaries.state(cid)).copy()  # a snapshot: commits go on meanwhile
        window = state.newest(RECENT_WINDOW + 1)  # the recent layer's: related events come before it
        before_seq = window[0]["seq"] if window else None

        def work() -> Context:
            focus = None
            if focus_task_id is not None and focus_tasks:
                newest = self.search.newest_of_tasks([t.id for t in focus_tasks])
                focus = Focus(task_id=focus_task_id, tasks=focus_tasks, newest=newest)
            related = None
            if query is not None:
                hits = self.search.search(query, limit=RELATED, conversation_id=cid, before_seq=before_seq).hits
                related = Related(query=query, events=[h.event for h in hits])
            return build_context(
                cid,
                state=state,
                budget_tokens=budget_tokens,
                system_prompt=system_prompt,
                tasks=tasks,
                ready=ready,
                counter=self.counter,
                focus=focus,
                related=related,
            )

        return await anyio.to_thread.run_sync(work)


def around(graph: TaskGraph, dependents: dict[str, set[str]], task_id: str, hops: int) -> list[Task]:
    """``task_id`` and the tasks within ``hops`` dependency links of it, either way, nearest
    first (an unknown id: :class:`~sidecar.errors.NotFoundError`)."""
    found = [graph.get(task_id)]
    seen = {task_id}
    frontier = [task_id]
    for _ in range(hops):
        nxt: list[str] = []
        for tid in frontier:
            task = graph.tasks.get(tid)
            links = [*(task.dependency_ids if task is not None else ()), *sorted(dependents.get(tid, ()))]
            for other in links:
                if other not in seen and graph.tasks.get(other) is not None:
                    seen.add(other)
                    nxt.append(other)
        found.extend(graph.get(t) for t in nxt)
        frontier = nxt
    return found
