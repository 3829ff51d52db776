"""``EventStore``: the event log of one data directory, for use in-process or by the daemon.

Writes go through group commit: every append is queued for the commit thread
(:class:`~sidecar.log.committer.Committer`), which hands all that is queued to the
:class:`~sidecar.log.writer.LogWriter` as one batch, and everyone is answered after the
batch's one fdatasync. Reads work straight on the files through snapshots,
so they never wait behind a commit.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.datadir import private_dir
from sidecar.errors import CorruptLogError, InvalidParams, NotFoundError
from sidecar.log import clocks, files
from sidecar.log.clocks import Order
from sidecar.log.committer import Committer
from sidecar.log.conversation import LogPaths
from sidecar.log.events import (
    CONVERSATION_ID_PATTERN,
    UUID_PATTERN,
    AppendResult,
    Causality,
    ConversationInfo,
    Event,
    NewEvent,
    Page,
    as_new_event,
    decode_event,
)
from sidecar.log.filter import QueryFilter, as_filter
from sidecar.log.index import IdIndex
from sidecar.log.journal import Journal, replay_orphans
from sidecar.log.reader import Snapshot
from sidecar.log.request import AppendRequest
from sidecar.log.scan import QueryStats, ReadBudget, decode_lines, run_query, seq_range, skip_unreadable
from sidecar.log.segments import DECODE_ERRORS, SUFFIX, ArchiveListing, active_path, head_decoder
from sidecar.log.writer import LogWriter, WriterStats

DEFAULT_ROTATE_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
DEFAULT_JOURNAL_BYTES = 64 * 1024 * 1024
QUICK_MERGE = 8  # conversations a query with wait=False may merge; more go to a thread

log = structlog.get_logger("sidecar.log")

_CID_RE = re.compile(CONVERSATION_ID_PATTERN)
_UUID_RE = re.compile(UUID_PATTERN)


def check_conversation_id(cid: object) -> str:
    """``cid`` if it is a safe conversation id; it names a file, so this guards the path."""
    if not isinstance(cid, str) or not _CID_RE.match(cid):
        raise InvalidParams(
            f"invalid conversation_id {cid!r}: use 1-128 of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit, without '..'",
            {"field": "conversation_id"},
        )
    return cid


def check_event_id(event_id: object) -> str:
    if not isinstance(event_id, str) or not _UUID_RE.match(event_id):
        raise InvalidParams(f"invalid event id {event_id!r}: expected a UUID", {"field": "event_id"})
    return event_id.lower()


class EventStore:
    """The append-only, per-conversation event log under ``data_dir``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        rotate_bytes: int = DEFAULT_ROTATE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        clock: Clock = SYSTEM_CLOCK,
        journal: bool = True,
        journal_bytes: int = DEFAULT_JOURNAL_BYTES,
    ) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.paths = LogPaths(os.path.join(self.data_dir, "logs"), os.path.join(self.data_dir, "archive"))
        self.journal_dir = os.path.join(self.data_dir, "journal")
        private_dir(self.data_dir, follow=True, what="data directory")  # 0700, ours, whatever the umask
        private_dir(self.paths.logs_dir)
        private_dir(self.paths.archive_dir)
        self._listing = ArchiveListing(self.paths.archive_dir)
        self._index = IdIndex()
        self._writer = LogWriter(
            self.paths,
            ArchiveListing(self.paths.archive_dir),
            self._index,
            now_ns=clock.now_ns,
            max_event_bytes=max_event_bytes,
            rotate_bytes=rotate_bytes,
            journal=Journal(self.journal_dir, journal_bytes) if journal else None,
        )
        self._write_lock = threading.Lock()  # whoever holds it drives the writer
        self._committer = Committer(self._writer, self._write_lock, name=f"sidecar-commit:{self.data_dir}")
        self._indexed_all = False
        # Cross-conversation reads together keep at most this many snapshots open (each one
        # or two descriptors): half the writer's share, whatever the number of conversations.
        self._read_budget = ReadBudget(max(2, files.open_files_budget() // 2))
        self.query_stats = QueryStats()
        # The most one read may hold and return, in encoded bytes (None: no bound). The
        # daemon sets it just under a reply's cap, so a page ends early, with a cursor,
        # rather than being built whole and then refused.
        self.max_read_bytes: int | None = None
        self.lookup_stats = LookupStats()
        self._catch_up_lock = threading.Lock()
        self._catch_ups = 0  # passes started, so that concurrent misses share one
        self.recover()

    # --- writing ---------------------------------------------------------------------------

    def append(self, event: NewEvent | dict[str, Any], *, expected_seq: int | None = None) -> AppendResult:
        """Durably append one event; returns once it is fdatasync'd."""
        new = as_new_event(event)
        if expected_seq is not None:
            new = msgspec.structs.replace(new, expected_seq=expected_seq)
        return self._append_valid([new])[0]

    def append_many(self, events: Sequence[NewEvent | dict[str, Any]]) -> list[AppendResult]:
        """Append several events, all or none; answers in order. They may name at most as
        many conversations as the writer holds files open (:class:`InvalidParams` beyond)."""
        return self._append_valid([as_new_event(e) for e in events])

    def copy(self, events: list[Event]) -> list[AppendResult]:
        """Write events another log placed, as they are, each at its own seq (a replica's
        write: see :mod:`sidecar.jetstream.mirror`); one already here is a duplicate."""
        req = AppendRequest([], placed=events)
        self.append_requests([req])
        return req.wait()

    def _append_valid(self, events: list[NewEvent]) -> list[AppendResult]:
        if not events:
            return []
        req = AppendRequest(events)
        self.append_requests([req])
        return req.wait()

    def append_requests(self, reqs: list[AppendRequest]) -> None:
        """Queue requests for the commit thread, together: every append, from any caller,
        comes through here. Each is answered as its request says (a waiting thread, or its
        sink)."""
        self._committer.append(reqs)

    def on_commit(self, callback: Callable[[list[Event]], None] | None) -> None:
        """Call ``callback(events)`` in the commit thread after each durable batch."""
        self._writer.on_commit = callback

    def on_rotate(self, callback: Callable[[], object] | None) -> None:
        """Call ``callback()`` in the commit thread whenever a segment is sealed."""
        self._writer.on_rotate = callback

    @property
    def writer_stats(self) -> WriterStats:
        return self._writer.stats

    def commit_queue_depth(self) -> int:
        return self._committer.depth()

    # --- loading ---------------------------------------------------------------------------

    def recover(self) -> int:
        """Replay the journals of dead writers (after a power cut); returns how many."""
        with self._write_lock:
            return replay_orphans(self.journal_dir, self._writer.restore)

    def checkpoint(self) -> None:
        """Make every log file durable on its own and empty this process's journal."""
        with self._write_lock:
            self._writer.checkpoint()

    def load(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Read and index every conversation: repairs torn tails and flags damaged logs.

        The daemon calls this at start-up; the embedded API does it on first need.
        ``progress(done, total)`` is called after each conversation.
        """
        cids = self.conversation_ids()
        with self._write_lock:
            for done, cid in enumerate(cids, 1):
                self._writer.index_conversations([cid])
                if progress is not None:
                    progress(done, len(cids))
            self._indexed_all = True

    def last_seqs(self) -> dict[str, int]:
        """Each conversation's last seq as the writer knows it since :meth:`load`, without
        reading a file again (the jetstream copy's starting point)."""
        with self._write_lock:
            return {cid: c.last_seq for cid, c in self._writer.conversations.items() if c.indexed and c.last_seq}

    def damaged(self) -> dict[str, str]:
        """Conversations whose logs are refused for writing, with the reason."""
        return {c.cid: c.corrupt for c in self._writer.by_no if c.corrupt is not None}

    # --- reading ---------------------------------------------------------------------------

    def snapshot(self, cid: str, *, wait: bool = True) -> Snapshot:
        return Snapshot(self.paths.logs_dir, self._listing, check_conversation_id(cid), wait=wait)

    def conversation_ids(self) -> list[str]:
        """Every conversation with a log file, active or archived, sorted. A symlink, FIFO or
        directory in logs/ is no log file (never followed; reading it is refused by name)."""
        found = set(self._listing.conversations())
        with os.scandir(self.paths.logs_dir) as entries:
            for entry in entries:
                if entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                    found.add(entry.name[: -len(SUFFIX)])
        return sorted(cid for cid in found if _CID_RE.match(cid))

    def tail(self, conversation_id: str, limit: int = 20, *, wait: bool = True, shared: bool = False) -> list[Event]:
        """The newest ``limit`` events, oldest first; costs O(limit) whatever the log's size.

        ``wait=False`` raises :class:`BlockingIOError` rather than wait for a writer's lock
        (for callers on an event loop, who then retry in a thread). ``shared=True`` may answer
        with the very events this process wrote, from memory, while the file is as it left
        it (:mod:`sidecar.log.recent`): for a caller that only reads them (encodes a reply)."""
        if not isinstance(limit, int) or limit < 0:
            raise InvalidParams(f"limit must be a non-negative integer, not {limit!r}")
        conv = self._writer.conversations.get(conversation_id) if shared and limit else None
        recent = conv.recent if conv is not None else None  # read once: another thread may drop it
        if conv is not None and recent is not None:
            found = recent.newest(conv.path, limit, self.max_read_bytes)
            if found is not None:
                return found
        with self.snapshot(conversation_id, wait=wait) as snap:
            lines = snap.newest_lines(limit, self.max_read_bytes) if limit else []
            events = decode_lines(lines, conversation_id)
            if conv is not None:  # the next tail is served from memory, while the file stays so
                view = snap.recent_view(lines, events)
                if view is not None:
                    self._writer.views.keep(conv, view)
            return events

    def get(self, event_id: str, *, wait: bool = True, shared: bool = False) -> Event | None:
        """The event with this id (the earliest, should two conversations share it).

        ``wait=False`` raises :class:`BlockingIOError` rather than wait for a lock or do
        slow work (loading, or looking for writes by other processes after a miss);
        ``shared``: as for :meth:`tail`."""
        event_id = check_event_id(event_id)
        self._ensure_indexed(wait)
        found = self._find(event_id, wait, shared)
        if found is None:
            if not wait:
                raise BlockingIOError("not found in the index: look again, slowly")
            self._catch_up()  # perhaps written by another process since we indexed
            found = self._find(event_id)
        return found

    def _ensure_indexed(self, wait: bool = True) -> None:
        if not self._indexed_all:
            if not wait:
                raise BlockingIOError("the id index is not loaded yet")
            self.load()

    def _find(self, event_id: str, wait: bool = True, shared: bool = False) -> Event | None:
        """``event_id`` through the index alone, each hit checked against the log."""
        found = self._verified(self._index.locate(event_id), lambda e: e.id == event_id, wait, shared)
        return min(found, key=_order) if found else None

    def _catch_up(self) -> None:
        """Index what other processes wrote since we last looked, so a miss can be trusted.

        Our own commits keep the index current, so only files that changed on disk since
        they were indexed are read again: a stat per conversation, without the writer lock,
        then each changed one indexed under the lock alone. A pass that began after the
        caller's miss answers for it too, so concurrent misses share one."""
        ticket = self._catch_ups
        with self._catch_up_lock:
            if self._catch_ups != ticket:
                return
            self._catch_ups += 1
            stale = self._writer.stale(self.conversation_ids())
            reindexed = 0
            for cid in stale:
                _wait_for_writers(active_path(self.paths.logs_dir, cid))
                with self._write_lock:  # held for one conversation, never for the pass
                    reindexed += self._writer.index_conversations([cid])
            self.lookup_stats.catch_ups += 1
            self.lookup_stats.reindexed += reindexed

    def _verified(
        self,
        places: Iterable[tuple[int, int]],
        check: Callable[[Event], bool],
        wait: bool = True,
        shared: bool = False,
    ) -> list[Event]:
        out: list[Event] = []
        for no, seq in places:
            conv = self._writer.by_no[no]
            cid = conv.cid
            recent = conv.recent if shared else None
            event = recent.event_at_seq(conv.path, seq) if recent is not None else None
            if event is not None:  # one we wrote, and the file is as we left it
                if check(event):
                    out.append(event)
                continue
            try:
                with self.snapshot(cid, wait=wait) as snap:
                    line = snap.line_at_seq(seq)  # a binary search: it may step on a damaged line
                if line is None:
                    continue
                event = decode_event(line)
            except DECODE_ERRORS as exc:  # damage an outside edit left: not this event, say so
                log.warning("log.bad_line_skipped", conversation_id=cid, seq=seq, error=str(exc))
                continue
            if check(event):
                out.append(event)
        return out

    def query(self, flt: QueryFilter | dict[str, Any] | None = None, *, wait: bool = True, **fields: Any) -> Page:
        """Events matching a filter (see :class:`QueryFilter`), one page at a time.

        ``wait=False`` raises :class:`BlockingIOError` rather than wait for a writer's lock,
        or merge more than ``QUICK_MERGE`` conversations (the caller then asks again from a
        thread, with ``wait=True``)."""
        merged = dict(fields)
        if isinstance(flt, QueryFilter):
            merged = {**{k: v for k, v in msgspec.structs.asdict(flt).items() if v is not None}, **merged}
        elif flt is not None:
            merged = {**flt, **merged}
        cids = self.conversation_ids()
        if not wait and len(cids) > QUICK_MERGE and merged.get("conversation_id") is None:
            raise BlockingIOError(f"a merge of {len(cids)} conversations is not quick")
        return run_query(
            as_filter(merged),
            cids,
            functools.partial(self.snapshot, wait=wait),
            self._read_budget,
            self.query_stats,
            self.max_read_bytes,
        )

    def seq_range(self, conversation_id: str, from_seq: int, through_seq: int, *, limit: int) -> list[Event]:
        """Events ``from_seq`` to ``through_seq`` of one conversation, in seq order, at most
        ``limit``: what a reader that follows a log by seq (the search indexer) asks for.
        Unlike :meth:`query` it reads nothing past ``through_seq`` nor lists the others."""
        flt = as_filter({"conversation_id": conversation_id, "from_seq": from_seq})
        with self.snapshot(conversation_id) as snap:
            return [] if snap.empty else seq_range(flt, snap, through_seq, limit)

    def since(self, timestamp: str, *, limit: int | None = None, cursor: str | None = None, wait: bool = True) -> Page:
        """Events of every conversation with ``timestamp >=`` the given, in time order
        (``wait``: as for :meth:`query`)."""
        return self.query(start=timestamp, limit=limit, cursor=cursor, wait=wait)

    def by_type(
        self,
        types: str | Sequence[str],
        visibility: str | Sequence[str] | None = None,
        *,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        """Events of the given types (and visibility), in time order."""
        types = [types] if isinstance(types, str) else list(types)
        vis = visibility if visibility is None or isinstance(visibility, str) else list(visibility)
        return self.query(types=types, visibility=vis, limit=limit, cursor=cursor)

    def causality(self, event_id: str, *, max_depth: int = 16, max_events: int = 1000) -> Causality | None:
        """What led to an event and what followed from it through ``caused_by``.

        Breadth-first both ways, each event visited once (so cycles end), at most
        ``max_depth`` steps and ``max_events`` events per direction; ``truncated`` says so.
        The work is bounded by ``max_events``, not by how many ids an event names: ids are
        looked up a level at a time, the files are caught up with at most once per call,
        and ``missing`` lists at most ``max_events`` unknown ids.
        """
        event_id = check_event_id(event_id)
        self._ensure_indexed()
        caught_up = False
        root = self._find(event_id)
        if root is None:
            self._catch_up()
            caught_up = True
            root = self._find(event_id)
            if root is None:
                return None
        truncated = False
        missing: dict[str, None] = {}

        def parents(frontier: list[Event], seen: set[str], room: int) -> list[Event]:
            nonlocal caught_up, truncated
            refs = [r for r in dict.fromkeys(r.lower() for ev in frontier for r in ev.caused_by) if r not in seen]
            out: list[Event] = []
            unknown: list[str] = []
            for ref in refs:
                if len(out) >= room:
                    return out
                parent = self._find(ref)
                if parent is None:
                    unknown.append(ref)
                else:
                    out.append(parent)
            if unknown and not caught_up:  # once per call, for every unknown id at once
                self._catch_up()
                caught_up = True
                still = []
                for ref in unknown:
                    if len(out) >= room:
                        return out  # truncated: what is left is neither found nor known missing
                    parent = self._find(ref)
                    if parent is None:
                        still.append(ref)
                    else:
                        out.append(parent)
                unknown = still
            for ref in unknown:
                if len(missing) >= max_events:
                    truncated = True
                    break
                missing.setdefault(ref)
            return out

        def children(frontier: list[Event], seen: set[str], room: int) -> list[Event]:
            out: dict[str, Event] = {}
            for ev in frontier:
                for place in self._index.children(ev.id):
                    if len(out) >= room:
                        return list(out.values())
                    if place in places_seen:
                        continue
                    places_seen.add(place)
                    for child in self._verified([place], _caused_by(ev.id)):
                        if child.id not in seen:
                            out.setdefault(child.id, child)
            return list(out.values())

        places_seen: set[tuple[int, int]] = set()

        def walk(step: Callable[[list[Event], set[str], int], list[Event]]) -> list[Event]:
            """Each step returns up to ``room`` new events: one more than fits means truncated."""
            nonlocal truncated
            seen = {root.id}
            found: list[Event] = []
            frontier = [root]
            for _ in range(max_depth):
                room = max_events - len(found)
                nxt = step(frontier, seen, room + 1)
                if len(nxt) > room:
                    truncated = True
                    nxt = nxt[:room]
                seen.update(e.id for e in nxt)
                found.extend(nxt)
                if not nxt:
                    return found
                frontier = nxt
            truncated = truncated or bool(step(frontier, seen, 1))
            return found

        upstream = sorted(walk(parents), key=_order)
        places_seen.clear()
        downstream = sorted(walk(children), key=_order)
        return Causality(
            event=root, upstream=upstream, downstream=downstream, missing=list(missing), truncated=truncated
        )

    def delete_conversation(self, conversation_id: str, *, then: Callable[[], object] | None = None) -> int:
        """Delete every log file of a conversation (the right to be forgotten): a conversation
        of that id written later starts again at seq 1. Returns the last seq it had (0: it had
        none). Commits wait while the files go, and ``then()`` is called before any commits
        again (so a listener learns of the deletion before any event of the new conversation).
        What else was derived from the log (summaries, group positions, indexes) is the
        caller's to delete."""
        cid = check_conversation_id(conversation_id)
        with self._write_lock:
            last = self._writer.forget(cid)
            if then is not None:
                then()
            return last

    def compare(self, a: str, b: str) -> Order:
        """How event ``a`` stands to event ``b`` of the same conversation, by their clocks:
        ``before``, ``after``, ``concurrent`` or ``equal``. An unknown id raises
        :class:`NotFoundError`; events of two conversations, :class:`InvalidParams`.

        Events written before clocks existed have none: they are ordered by the writer's
        own order and by ``caused_by``, looked up (:meth:`causality`, bounded)."""
        ea, eb = self.get(a), self.get(b)
        for ref, found in ((a, ea), (b, eb)):
            if found is None:
                raise NotFoundError(f"no event with id {ref}", {"event_id": ref})
        assert ea is not None and eb is not None
        if ea.conversation_id != eb.conversation_id:
            raise InvalidParams(
                f"the events are in two conversations ({ea.conversation_id!r} and {eb.conversation_id!r}); "
                "clocks order the events of one",
                {"field": "b", "a_conversation_id": ea.conversation_id, "b_conversation_id": eb.conversation_id},
            )
        if ea.seq == eb.seq:
            return "equal"
        if ea.clock and eb.clock:
            return clocks.compare(ea.clock, eb.clock)
        early, late = (ea, eb) if ea.seq < eb.seq else (eb, ea)
        ordered = early.agent_id == late.agent_id
        if not ordered:
            past = self.causality(late.id, max_depth=256, max_events=10_000)
            ordered = past is not None and any(e.id == early.id for e in past.upstream)
        if not ordered:
            return "concurrent"
        return "before" if early is ea else "after"

    def conversations(self) -> list[ConversationInfo]:
        """Each conversation with its retained events' count, first seq and time span
        (retention may have dropped the oldest; seqs go on all the same).

        One conversation open at a time; one whose files cannot be read is left out (and
        logged), not allowed to fail the whole listing."""
        out = []
        for cid in self.conversation_ids():
            try:
                with self.snapshot(cid) as snap:
                    first, newest = snap.first_line(), snap.newest_lines(1)
            except (OSError, CorruptLogError) as exc:
                skip_unreadable(cid, exc)
                continue
            dropped = self._listing.dropped_through(cid)
            if first is None or not newest:
                if dropped:  # every event retention has kept is gone: the seqs are not
                    out.append(
                        ConversationInfo(
                            conversation_id=cid,
                            event_count=0,
                            first_seq=dropped + 1,
                            first_timestamp=None,
                            last_timestamp=None,
                            last_seq=dropped,
                        )
                    )
                continue
            try:
                head_first, head_last = head_decoder.decode(first), head_decoder.decode(newest[0])
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            out.append(
                ConversationInfo(
                    conversation_id=cid,
                    event_count=head_last.seq - head_first.seq + 1,
                    first_seq=head_first.seq,
                    first_timestamp=head_first.timestamp,
                    last_timestamp=head_last.timestamp,
                    last_seq=head_last.seq,
                )
            )
        return out

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is queued, then release every file."""
        self._committer.stop()
        with self._write_lock:
            self._writer.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _order(event: Event) -> tuple[str, str, int]:
    return event.timestamp, event.conversation_id, event.seq


def _caused_by(parent: str) -> Callable[[Event], bool]:
    """A check for events that name ``parent`` among their causes."""
    return lambda e: parent in e.caused_by


@dataclass
class LookupStats:
    """What misses of the id index cost: catch-up passes, and conversations they re-read."""

    catch_ups: int = 0
    reindexed: int = 0


def _wait_for_writers(path: str) -> None:
    """Wait, holding no lock of ours, until no writer in another process holds ``path``:
    the indexing that follows then takes the file's lock at once, not behind the writer
    lock that every append of this process needs."""
    try:
        fd = files.lock_path(path, exclusive=False, create=False)
    except OSError:
        return  # the indexing that follows reports it
    if fd is not None:
        files.unlock_close(fd)
