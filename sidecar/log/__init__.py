"""The event log: durable, gapless, per-conversation JSONL with queries that cost what they return."""

from __future__ import annotations

from sidecar.log.events import AppendResult, Causality, ConversationInfo, Event, NewEvent, Page
from sidecar.log.filter import QueryFilter
from sidecar.log.store import DEFAULT_MAX_EVENT_BYTES, DEFAULT_ROTATE_BYTES, EventStore

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_ROTATE_BYTES",
    "AppendResult",
    "Causality",
    "ConversationInfo",
    "Event",
    "EventStore",
    "NewEvent",
    "Page",
    "QueryFilter",
]
