"""The indexer: keeps the search index a projection of the log.

It runs in a process of its own (:mod:`sidecar.daemon.search_worker`), told how far each
conversation's commits have got (:meth:`Indexer.behind`); its thread reads those events back
from the log, the source of truth, and indexes what came in about 50 ms as one transaction.
Reading back is also how it catches up at start (a new, stale or damaged index is built from
the logs, with progress logged).

Deleting a conversation and retention reach it through the same queue, in order, so what
it removes is exactly what is gone.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import structlog

from sidecar.batcher import Batcher
from sidecar.log.events import Event
from sidecar.log.store import EventStore
from sidecar.search.index import Doc, SearchIndex

log = structlog.get_logger("sidecar.search")

# After each transaction the indexer waits this long, so that what commits meanwhile goes in
# the next one together: a transaction per event would cost appends far more than this costs
# freshness (the contract's promise is a second).
LINGER_S = 0.05
_PAGE = 2000  # events read back from the log, and indexed, per transaction


@dataclass(frozen=True, slots=True)
class _Forget:
    cid: str


@dataclass(frozen=True, slots=True)
class _Dropped:
    cid: str
    through_seq: int


@dataclass(frozen=True, slots=True)
class _Behind:
    """Events of ``cid`` up to ``seq`` are durable: read them from the log."""

    cid: str
    seq: int


class _CatchUp:
    """Compare the index with every conversation's log and close the gaps (at start)."""


Item = _Forget | _Dropped | _Behind | _CatchUp


@dataclass
class IndexerStats:
    indexed: int = 0  # events added since start
    read_back: int = 0  # of those, read from the log (catching up, gaps, overflow)
    batches: int = 0
    rebuilds: int = 0  # the index file was put aside and built again
    catching_up: bool = False


_data_encoder = msgspec.json.Encoder()


def doc_of(event: Event) -> Doc:
    return Doc(
        conversation_id=event.conversation_id,
        seq=event.seq,
        event_id=event.id,
        type=event.type,
        agent_id=event.agent_id,
        task_id=event.task_id,
        timestamp=event.timestamp,
        data=_data_encoder.encode(event.data).decode(),
    )


class Indexer:
    """The one writer of the search index, in a thread of its own."""

    def __init__(self, store: EventStore, index: SearchIndex) -> None:
        self.store = store
        self.index = index
        self.stats = IndexerStats()
        self._indexed: dict[str, int] = {}  # conversation -> last seq indexed
        self._docs: list[Doc] = []  # read, for the next transaction
        self._progress: dict[str, int] = {}  # and how far each conversation is read for it
        self._batcher: Batcher[Item] = Batcher(self._work, "sidecar-search")
        self.caught_up = threading.Event()
        self.on_batch: Callable[[], None] | None = None  # after each batch taken in (the worker reports it)

    def start(self) -> None:
        """Open the index (a damaged one is put aside) and catch up with the logs, in the
        indexer's thread."""
        self._batcher.put([_CatchUp()])

    def behind(self, cid: str, seq: int) -> None:
        """Events of ``cid`` up to ``seq`` are durable: read them from the log."""
        self._batcher.put([_Behind(cid, seq)])

    def forget(self, cid: str) -> None:
        """The conversation was deleted (in commit order: before any event of a new one)."""
        self._batcher.put([_Forget(cid)])

    def dropped(self, cid: str, through_seq: int) -> None:
        """Retention dropped the conversation's events up to ``through_seq``."""
        self._batcher.put([_Dropped(cid, through_seq)])

    def stop(self) -> None:
        """Finish what was asked, then close the index."""
        self._batcher.stop()
        self.index.close()

    # --- the indexer's thread ------------------------------------------------------------------

    def _work(self, items: list[Item]) -> None:
        try:
            for item in items:
                self._apply(item)
            self._flush()
        except sqlite3.DatabaseError as exc:  # the file went bad under us: build it again
            self._drop_pending()
            self._rebuild(str(exc))
        except Exception:
            self._drop_pending()  # not indexed: the next "behind" of those conversations reads them again
            log.exception("search.indexing_failed")
        if self.on_batch is not None:
            self.on_batch()
        time.sleep(LINGER_S)

    def _apply(self, item: Item) -> None:
        if isinstance(item, _CatchUp):
            self._catch_up()
        elif isinstance(item, _Forget):
            self._flush()
            self.index.remove(item.cid)
            self._indexed.pop(item.cid, None)
        elif isinstance(item, _Dropped):
            self._flush()
            self.index.remove(item.cid, through_seq=item.through_seq)
        else:
            self._read_back(item.cid, item.seq)

    def _take(self, docs: list[Doc], cid: str, seq: int) -> None:
        """Docs read up to ``seq`` of ``cid``: into the transaction being gathered, written
        once it holds a page (a commit each is most of the cost of a few events)."""
        self._docs += docs
        self._progress[cid] = seq
        if len(self._docs) >= _PAGE:
            self._flush()

    def _flush(self) -> None:
        """Write the docs gathered and the progress they make, in one transaction."""
        if not self._progress:
            return
        docs, progress = self._docs, self._progress
        self._drop_pending()
        self.stats.indexed += self.index.add(docs, progress)
        self.stats.batches += 1
        self._indexed.update(progress)

    def _drop_pending(self) -> None:
        self._docs, self._progress = [], {}

    def _done(self, cid: str) -> int:
        """The last seq of ``cid`` read: written, or gathered to be."""
        return self._progress.get(cid) or self._indexed.get(cid, 0)

    def _read_back(self, cid: str, through_seq: int) -> None:
        """Index ``cid`` from the log, from what is read of it up to ``through_seq``."""
        while self._done(cid) < through_seq:
            page = self.store.seq_range(cid, self._done(cid) + 1, through_seq, limit=_PAGE)
            if not page:  # gone (retention) or not there: nothing to read up to it
                self._take([], cid, through_seq)
                return
            self._take([doc_of(e) for e in page], cid, page[-1].seq)
            self.stats.read_back += len(page)

    def _catch_up(self) -> None:
        """Open the index and bring every conversation up to its log (with progress shown)."""
        self.stats.catching_up = True
        try:
            if self.index.open():
                log.info("search.index_created", path=self.index.path)
            self._indexed = self.index.progress()
            self._drop_pending()
            self._sync_with_logs()
        finally:
            self.stats.catching_up = False
            self.caught_up.set()

    def _sync_with_logs(self) -> None:
        infos = {c.conversation_id: c for c in self.store.conversations()}
        for cid in [c for c in self._indexed if c not in infos]:  # deleted while we were away
            self.index.remove(cid)
            self._indexed.pop(cid)
        todo = {}
        for cid, info in infos.items():
            indexed = self._indexed.get(cid, 0)
            if indexed > info.last_seq:  # the log is shorter than what we indexed: not the same log
                self.index.remove(cid)
                self._indexed.pop(cid, None)
                indexed = 0
            if info.first_seq > 1 and indexed:
                self.index.remove(cid, through_seq=info.first_seq - 1)  # dropped while we were away
            if info.last_seq > indexed:
                todo[cid] = (indexed, info.last_seq)
        total = sum(last - done for done, last in todo.values())
        if not total:
            return
        log.info("search.catching_up", conversations=len(todo), events=total)
        done, shown, started = 0, time.monotonic(), time.monotonic()
        for cid, (indexed, last) in sorted(todo.items()):
            self._read_back(cid, last)
            done += last - indexed
            if time.monotonic() - shown > 1.0:
                shown = time.monotonic()
                log.info("search.indexing", events_done=done, events=total)
        self._flush()
        log.info("search.caught_up", events=total, seconds=round(time.monotonic() - started, 3))

    def _rebuild(self, reason: str) -> None:
        kept = self.index.put_aside(reason)
        log.error(
            "search.index_damaged", path=self.index.path, error=reason, kept_in=kept, then="rebuilt from the logs"
        )
        self.stats.rebuilds += 1
        self._catch_up()
