"""Search as the daemon answers it: the index's best matches, each checked against the log.

The index is a projection and may lag or hold what the log no longer has (retention, a
deletion on its way through the indexer's queue), so every hit is read back from the log by
id and kept only if it is still that event; the event returned is the log's, never the
index's copy.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Protocol

import msgspec
import structlog

from sidecar.errors import ForbiddenError, InvalidParams
from sidecar.log.events import Event
from sidecar.log.store import EventStore
from sidecar.search.index import SearchIndex
from sidecar.search.query import to_fts

log = structlog.get_logger("sidecar.search")

_SPARE = 5  # hits asked for beyond the limit, for those the log no longer has


class SearchHit(msgspec.Struct, kw_only=True):
    event: Event
    score: float  # higher is better (BM25)
    snippet: str  # the best passage, matched words between ** and **


class SearchResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    hits: list[SearchHit]
    indexing: bool = False  # the index is still being built from the logs: hits may be missing


class IndexerStatus(Protocol):
    """What search needs to know of whoever keeps the index: whether it has caught up."""

    caught_up: threading.Event


class SearchService:
    def __init__(self, store: EventStore, index: SearchIndex, indexer: IndexerStatus, *, enabled: bool = True) -> None:
        self.store = store
        self.index = index
        self.indexer = indexer
        self.enabled = enabled  # [search] enabled

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise ForbiddenError("search is off in this daemon ([search] enabled = false)", {"field": "q"})

    def search(
        self,
        q: str,
        *,
        limit: int = 20,
        conversation_id: str | None = None,
        types: list[str] | None = None,
        agent_ids: list[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        before_seq: int | None = None,
    ) -> SearchResult:
        """The best ``limit`` events for ``q`` (blocking: run it in a thread). ``before_seq``
        (with ``conversation_id``) keeps only older events: the context's related layer."""
        self._check_enabled()
        expr = to_fts(q)
        indexing = not self.indexer.caught_up.is_set()
        try:
            hits = self.index.search(
                expr,
                limit=limit + _SPARE,
                conversation_id=conversation_id,
                types=types,
                agent_ids=agent_ids,
                start=start,
                end=end,
                before_seq=before_seq,
            )
        except sqlite3.OperationalError as exc:
            if "fts5" in str(exc) or "syntax" in str(exc):
                raise InvalidParams(f"q cannot be searched: {exc}", {"field": "q"}) from None
            log.warning("search.unavailable", error=str(exc))
            return SearchResult(hits=[], indexing=True)
        except sqlite3.DatabaseError as exc:  # being rebuilt: no answer from it yet
            log.warning("search.unavailable", error=str(exc))
            return SearchResult(hits=[], indexing=True)
        out: list[SearchHit] = []
        for hit in hits:
            event = self.store.get(hit.event_id)
            if event is None or event.conversation_id != hit.conversation_id or event.seq != hit.seq:
                continue  # the log no longer has it: dropped or deleted since it was indexed
            out.append(SearchHit(event=event, score=hit.score, snippet=hit.snippet))
            if len(out) >= limit:
                break
        return SearchResult(hits=out, indexing=indexing)

    def newest_of_tasks(self, task_ids: list[str]) -> dict[str, Event]:
        """Each task's newest event, as the log has it (blocking; none while search is off)."""
        if not self.enabled:
            return {}
        try:
            found = self.index.newest_of_tasks(task_ids)
        except sqlite3.DatabaseError as exc:
            log.warning("search.unavailable", error=str(exc))
            return {}
        out = {}
        for task_id, event_id in found.items():
            event = self.store.get(event_id)
            if event is not None and event.task_id == task_id:
                out[task_id] = event
        return out
