"""The task graph: tasks with owners, parents, dependencies and versions, without cycles."""

from __future__ import annotations

from sidecar.task_graph.graph import TaskGraph
from sidecar.task_graph.model import ACTIVE, TERMINAL, GraphFile, NewTask, Task, TaskPatch

__all__ = ["ACTIVE", "TERMINAL", "GraphFile", "NewTask", "Task", "TaskGraph", "TaskPatch"]
