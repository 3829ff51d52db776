"""The embedded API of the original specification (S23): plain functions over a data dir.

Each works on ``data_dir=`` if given, else ``$SIDECAR_DATA_DIR``, else ``./data``, and shares
one :class:`EventStore` per directory within the process, so concurrent callers still get
group commit. Results are plain dicts, ready for ``json.dumps``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sidecar.datadir import ensure_layout, resolve_data_dir
from sidecar.log.events import NewEvent, event_to_dict
from sidecar.log.store import EventStore

_stores: dict[str, EventStore] = {}
_stores_lock = threading.Lock()


def store_for(data_dir: str | os.PathLike[str] | None = None) -> EventStore:
    """The process's shared store for ``data_dir`` (created, with the scaffold, on first use)."""
    path = resolve_data_dir(data_dir)
    with _stores_lock:
        store = _stores.get(path)
        if store is None:
            store = _stores[path] = EventStore(ensure_layout(path))
        return store


def append_event(event: NewEvent | dict[str, Any], *, data_dir: str | os.PathLike[str] | None = None) -> str:
    """Durably append ``event``; returns its id (the existing one when the id was already written)."""
    return store_for(data_dir).append(event).id


def tail(
    conversation_id: str, limit: int = 20, *, data_dir: str | os.PathLike[str] | None = None
) -> list[dict[str, Any]]:
    """The newest ``limit`` events of a conversation, oldest first."""
    return [event_to_dict(e) for e in store_for(data_dir).tail(conversation_id, limit)]


def since(timestamp: str | datetime, *, data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Every event of every conversation with ``timestamp >=`` the given, in time order."""
    if isinstance(timestamp, datetime):
        timestamp = timestamp.isoformat()
    return [event_to_dict(e) for e in store_for(data_dir).since(timestamp).events]


def by_type(
    event_types: str | Sequence[str],
    visibility: str | Sequence[str] | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Every event of the given types (and visibility), in time order."""
    return [event_to_dict(e) for e in store_for(data_dir).by_type(event_types, visibility).events]


def get_event(event_id: str, *, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The event with this id, or ``None``."""
    event = store_for(data_dir).get(event_id)
    return event_to_dict(event) if event is not None else None
