"""The search index: SQLite FTS5 over each event's type and the strings in its data.

It is a projection of the log, kept in ``data/index/search.sqlite3``: nothing in it is the
only copy of anything, so when it is missing, from another version, or damaged it is put
aside and built again from the logs. One writer (the indexer's thread) adds and removes;
readers each use a connection of their own (WAL: they never wait for the writer, nor it for
them). A commit is not fsync'd (``synchronous = NORMAL``): a crash may lose the last few
batches, which the indexer finds missing and reads again from the log, since what is
indexed of each conversation is recorded in the same transaction as the events themselves.

The ``docs`` table holds what a hit needs besides the text (where the event is, its type,
agent and time, for filters); ``fts`` is an external-content FTS5 table over ``docs``'
``type``, ``body`` and ``scope`` (the conversation, as one token), so the text is stored
once and snippets come from it. Triggers keep ``fts`` in step with ``docs``, and ``body`` is
drawn from the event's data by SQLite itself (``json_tree``): the indexer's Python does
little per event, since it shares the interpreter with the daemon's event loop.

Ranking scores every match, so a word in most events would cost time in proportion to the
log. A query that matches more than :data:`CANDIDATES` events ranks the newest that many
(found in rowid order, which FTS5 walks without scoring); the conversation filter is part
of the match itself, so it narrows that work instead of following it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from sidecar.datadir import open_regular, private_dir

log = structlog.get_logger("sidecar.search")

SCHEMA_VERSION = "2"
INDEX_DIR = "index"
INDEX_FILE = "search.sqlite3"
MAX_BODY_CHARS = 32 * 1024  # of an event's text: a huge tool output is found by its start
CANDIDATES = 1000  # the most matches a query ranks: the newest, when there are more (bm25: ~5 us each)
SNIPPET_OPEN, SNIPPET_CLOSE = "**", "**"  # the matched words in a snippet, as in Markdown
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs(
    rowid INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    agent_id TEXT,
    task_id TEXT,
    timestamp TEXT NOT NULL,
    scope TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS docs_place ON docs(conversation_id, seq);
CREATE INDEX IF NOT EXISTS docs_task ON docs(task_id) WHERE task_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS progress(conversation_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    type, body, scope, content='docs', content_rowid='rowid', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS docs_added AFTER INSERT ON docs BEGIN
    INSERT INTO fts(rowid, type, body, scope) VALUES (new.rowid, new.type, new.body, new.scope);
END;
CREATE TRIGGER IF NOT EXISTS docs_removed AFTER DELETE ON docs BEGIN
    INSERT INTO fts(fts, rowid, type, body, scope) VALUES ('delete', old.rowid, old.type, old.body, old.scope);
END;
"""
# One event: its place and labels, then its data as JSON, whose strings become the body.
_INSERT = f"""
INSERT OR IGNORE INTO docs(conversation_id, seq, event_id, type, agent_id, task_id, timestamp, scope, body)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, substr(coalesce(
    (SELECT group_concat(value, char(10)) FROM json_tree(?) WHERE type = 'text'), ''), 1, {MAX_BODY_CHARS}))
"""


class IndexDamaged(Exception):
    """The index file cannot be used: it is put aside and built again."""


@dataclass(frozen=True, slots=True)
class Doc:
    """What is indexed of one event; ``data`` is its data as JSON (SQLite draws the strings)."""

    conversation_id: str
    seq: int
    event_id: str
    type: str
    agent_id: str | None
    task_id: str | None
    timestamp: str
    data: str

    def row(self) -> tuple[str, int, str, str, str | None, str | None, str, str, str]:
        return (
            self.conversation_id,
            self.seq,
            self.event_id,
            self.type,
            self.agent_id,
            self.task_id,
            self.timestamp,
            scope_of(self.conversation_id),
            self.data,
        )


def scope_of(cid: str) -> str:
    """A conversation as one FTS5 token (its hex), so a match can be limited to it exactly."""
    return "c" + cid.encode().hex()


@dataclass(frozen=True, slots=True)
class Hit:
    conversation_id: str
    seq: int
    event_id: str
    score: float  # higher is better: minus FTS5's bm25
    snippet: str


def body_of(data: object) -> str:
    """The strings in an event's data, depth first, one per line, at most ``MAX_BODY_CHARS``:
    what the index draws with ``json_tree``, in Python (the tests and the benchmark's naive
    scan check the index against it). As in SQLite, a string ends at a NUL character."""
    parts: list[str] = []
    size = 0
    stack: list[object] = [data]
    while stack and size < MAX_BODY_CHARS:
        item = stack.pop()
        if isinstance(item, str):
            item = item.partition("\x00")[0]
            parts.append(item)
            size += len(item) + 1
        elif isinstance(item, Mapping):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return "\n".join(parts)[:MAX_BODY_CHARS]


class SearchIndex:
    """The index file: the writer's connection, and one reading connection per thread."""

    def __init__(self, data_dir: str) -> None:
        self.dir = os.path.join(data_dir, INDEX_DIR)
        self.path = os.path.join(self.dir, INDEX_FILE)
        self.archive_dir = os.path.join(data_dir, "archive")
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None

    # --- opening ------------------------------------------------------------------------------

    def open(self) -> bool:
        """Open (or create) the index for writing; whether it was made new (so it must be
        built from the logs). A damaged or foreign file is put aside first."""
        private_dir(self.dir)
        try:
            return self._open()
        except (sqlite3.DatabaseError, IndexDamaged, OSError) as exc:
            kept = self.put_aside(str(exc))
            log.error(
                "search.index_damaged", path=self.path, error=str(exc), kept_in=kept, then="rebuilt from the logs"
            )
            return self._open()

    def _open(self) -> bool:
        fresh = not os.path.lexists(self.path)
        if fresh:  # created 0600 by us, so SQLite's -wal and -shm files are 0600 too
            os.close(open_regular(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        else:
            os.close(open_regular(self.path, os.O_RDONLY))  # refuses a link or a FIFO by name
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                if not fresh and conn.execute("SELECT 1 FROM docs LIMIT 1").fetchone():
                    raise IndexDamaged("the index has events but no schema version")
                conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                fresh = True
            elif row[0] != SCHEMA_VERSION:
                raise IndexDamaged(f"the index has schema {row[0]!r}, this version reads {SCHEMA_VERSION!r}")
        except BaseException:
            conn.close()
            raise
        self._writer = conn
        return fresh

    def put_aside(self, reason: str) -> str:
        """Move the index file (and its WAL) to the archive; where it went."""
        self.close()
        stamp = f"{os.getpid()}.{int.from_bytes(os.urandom(4), 'big')}"
        kept = os.path.join(self.archive_dir, f"{INDEX_FILE}.{stamp}.damaged")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.replace(self.path + suffix, kept + suffix)
        return kept

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._local = threading.local()

    @property
    def _w(self) -> sqlite3.Connection:
        if self._writer is None:
            raise IndexDamaged("the index is not open")
        return self._writer

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if not os.path.isfile(self.path):  # not made yet: never made here (it would not be 0600)
                raise sqlite3.OperationalError(f"no index at {self.path} yet")
            conn = sqlite3.connect(self.path, check_same_thread=False)
            conn.execute("PRAGMA query_only = 1")  # a reader: it never writes, whatever it is asked
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # --- writing (the indexer's thread) -------------------------------------------------------

    def progress(self) -> dict[str, int]:
        """What is indexed of each conversation: its last seq."""
        return dict(self._w.execute("SELECT conversation_id, last_seq FROM progress").fetchall())

    def add(self, docs: Iterable[Doc], progress: Mapping[str, int]) -> int:
        """Index ``docs`` and record ``progress`` (conversation -> last seq indexed), in one
        transaction; how many were added (a doc already there is skipped)."""
        w = self._w
        with _transaction(w):
            # The rows inserted (sqlite3_changes: never a trigger's, nor FTS5's own writes,
            # which total_changes counted too, over-counting about 4x).
            added = w.executemany(_INSERT, [d.row() for d in docs]).rowcount
            w.executemany(
                "INSERT INTO progress VALUES (?, ?) "
                "ON CONFLICT(conversation_id) DO UPDATE SET last_seq = excluded.last_seq",
                list(progress.items()),
            )
        return added

    def remove(self, cid: str, *, through_seq: int | None = None) -> int:
        """Remove a conversation's events (all, or those up to ``through_seq``); how many."""
        w = self._w
        where, args = (
            ("conversation_id = ?", [cid])
            if through_seq is None
            else ("conversation_id = ? AND seq <= ?", [cid, through_seq])
        )
        with _transaction(w):  # the trigger takes each out of fts too
            removed = w.execute(f"DELETE FROM docs WHERE {where}", args).rowcount
            if through_seq is None:
                w.execute("DELETE FROM progress WHERE conversation_id = ?", (cid,))
        return removed

    # --- reading (any thread) -----------------------------------------------------------------

    def search(
        self,
        fts_query: str,
        *,
        limit: int,
        conversation_id: str | None = None,
        types: list[str] | None = None,
        agent_ids: list[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        before_seq: int | None = None,
    ) -> list[Hit]:
        """The best ``limit`` matches of an FTS5 expression (see :mod:`sidecar.search.query`),
        among the newest :data:`CANDIDATES` when there are more."""
        match = fts_query if conversation_id is None else f'({fts_query}) AND scope : "{scope_of(conversation_id)}"'
        reader = self._reader()
        where = ["fts MATCH ?"]
        args: list[Any] = [match]
        oldest = reader.execute(
            "SELECT rowid FROM fts WHERE fts MATCH ? ORDER BY rowid DESC LIMIT 1 OFFSET ?", (match, CANDIDATES - 1)
        ).fetchone()
        if oldest is not None:  # more matches than we rank: the newest of them
            where.append("fts.rowid >= ?")
            args.append(oldest[0])
        if conversation_id is not None:
            where.append("d.conversation_id = ?")  # the scope token is exact; this is belt and braces
            args.append(conversation_id)
        for column, values in (("d.type", types), ("d.agent_id", agent_ids)):
            if values:
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                args.extend(values)
        if start is not None:
            where.append("d.timestamp >= ?")
            args.append(start)
        if end is not None:
            where.append("d.timestamp <= ?")
            args.append(end)
        if before_seq is not None:
            where.append("d.seq < ?")
            args.append(before_seq)
        sql = (  # CROSS JOIN: the match first, always (the planner may start from docs otherwise)
            "SELECT d.conversation_id, d.seq, d.event_id, bm25(fts, 2.0, 1.0, 0.0) AS rank, "
            f"snippet(fts, -1, '{SNIPPET_OPEN}', '{SNIPPET_CLOSE}', '…', 16) "
            f"FROM fts CROSS JOIN docs d ON d.rowid = fts.rowid WHERE {' AND '.join(where)} ORDER BY rank LIMIT ?"
        )
        args.append(limit)
        rows = reader.execute(sql, args).fetchall()
        return [Hit(cid, seq, event_id, round(-rank, 6), snippet) for cid, seq, event_id, rank, snippet in rows]

    def newest_of_tasks(self, task_ids: list[str]) -> dict[str, str]:
        """Each task's newest event (the last indexed with its ``task_id``): task id -> event id."""
        out = {}
        reader = self._reader()
        for task_id in task_ids:
            row = reader.execute(
                "SELECT event_id FROM docs WHERE task_id = ? ORDER BY rowid DESC LIMIT 1", (task_id,)
            ).fetchone()
            if row is not None:
                out[task_id] = row[0]
        return out

    def stats(self) -> tuple[int, int]:
        """(events indexed, bytes on disk: the file and its WAL)."""
        count = self._reader().execute("SELECT count(*) FROM docs").fetchone()[0]
        size = sum(_size(self.path + s) for s in ("", "-wal"))
        return int(count), size


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
