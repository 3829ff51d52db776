"""The JSON-RPC methods, one module per namespace, on one registry.

Each handler takes its params Struct and a :class:`~sidecar.api.session.Session` and
returns its result Struct; importing this package registers every method.
"""

from __future__ import annotations

from sidecar.api import chat, context, controller, log, narrator, playbooks, search, summary, sys, tasks
from sidecar.api.common import registry

__all__ = [
    "chat",
    "context",
    "controller",
    "log",
    "narrator",
    "playbooks",
    "registry",
    "search",
    "summary",
    "sys",
    "tasks",
]
