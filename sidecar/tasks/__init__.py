"""The task graph: tasks with owners, parents, dependencies and versions, without cycles."""

from __future__ import annotations

from sidecar.tasks.graph import TaskGraph
from sidecar.tasks.model import ACTIVE, TERMINAL, GraphFile, NewTask, Task, TaskPatch

__all__ = ["ACTIVE", "TERMINAL", "GraphFile", "NewTask", "Task", "TaskGraph", "TaskPatch"]
