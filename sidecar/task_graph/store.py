"""``sidecar.task_graph.store``: the embedded task-graph API under the name the contract (§7)
gives it. Everything here is :mod:`sidecar.tasks.store`."""

from __future__ import annotations

from sidecar.tasks.store import create_task, list_active, load_graph, ready_tasks, save_graph, update_task

__all__ = ["create_task", "list_active", "load_graph", "ready_tasks", "save_graph", "update_task"]
