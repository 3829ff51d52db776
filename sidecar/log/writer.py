"""The log's single writer: group commit, one write per file and one fdatasync per batch.

A batch is every append request that queued while the previous batch was on its way to
disk (flush-when-idle, as EventStoreDB does). With a :class:`~sidecar.log.journal.Journal`
the batch costs one fdatasync of the journal however many conversations it touched; without
one, each touched file is fdatasync'd (in parallel). Each request is all-or-nothing against
validation and preconditions. An I/O failure fails the whole batch, cuts every file back to
where it was, and is never retried: after a failed fsync the page cache cannot be trusted.

Only one thread at a time may call into a :class:`LogWriter`: the store's commit thread, or a
caller holding the store's write lock (recovery, loading, checkpoints).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog

from sidecar.datadir import UnsafePathError, open_regular
from sidecar.errors import ConflictError, InvalidParams, SidecarError, StorageError
from sidecar.log import files
from sidecar.log.clocks import DEFAULT_WRITER, Clock, ClockState, writer_of
from sidecar.log.conversation import Conversation, LogPaths
from sidecar.log.events import AppendResult, Event, NewEvent, decode_event, encode_event, encode_within, placed
from sidecar.log.ids import new_event_id
from sidecar.log.index import IdIndex
from sidecar.log.journal import Journal
from sidecar.log.recent import Views, fresh
from sidecar.log.request import AppendRequest
from sidecar.log.segments import (
    DECODE_ERRORS,
    ArchivedSegment,
    ArchiveListing,
    active_path,
    close_source,
    line_with_seq,
    open_segment,
    rotate,
    scan_head_decoder,
)
from sidecar.log.timestamps import format_timestamp

log = structlog.get_logger("sidecar.log")


@dataclass
class _Pending:
    """Tentative appends to one conversation within the batch being built."""

    conv: Conversation
    fd: int
    next_seq: int
    last_ts: str
    lines: list[bytes] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    fresh: dict[str, Event] = field(default_factory=dict)
    clocks: ClockState = field(init=False)  # the conversation's, with this batch's events on top

    def __post_init__(self) -> None:
        self.clocks = self.conv.clocks.overlay()

    def mark(self) -> tuple[int, str, int]:
        return self.next_seq, self.last_ts, len(self.lines)

    def rollback(self, mark: tuple[int, str, int]) -> None:
        self.next_seq, self.last_ts, n = mark
        for event in self.events[n:]:
            self.fresh.pop(event.id, None)
        del self.lines[n:], self.events[n:]
        self.clocks = self.conv.clocks.overlay()  # rare: rebuilt from the events that stay
        for event in self.events:
            self.clocks.observe(writer_of(event.agent_id), event.clock)


class LogWriter:
    """Owns every write to the log files of one data directory, for this process."""

    def __init__(
        self,
        paths: LogPaths,
        listing: ArchiveListing,
        index: IdIndex,
        *,
        now_ns: Callable[[], int],
        max_event_bytes: int,
        rotate_bytes: int,
        journal: Journal | None,
    ) -> None:
        self.paths = paths
        self.journal = journal
        self._dirty: set[str] = set()  # files with bytes only the journal has made durable
        self.stats = WriterStats()
        self.listing = listing
        self.index = index
        self.now_ns = now_ns
        self.max_event_bytes = max_event_bytes
        self.rotate_bytes = rotate_bytes
        self.conversations: dict[str, Conversation] = {}
        self.views = Views()  # which conversations keep their newest events in memory
        self.by_no: list[Conversation] = []
        self._fds: OrderedDict[str, int] = OrderedDict()
        self.max_open_files = files.open_files_budget()  # also the most one commit holds
        self._pool: ThreadPoolExecutor | None = None
        self.on_commit: Callable[[list[Event]], None] | None = None  # new events, once durable
        self.on_rotate: Callable[[], object] | None = None  # a segment was sealed (the keeper's cue)
        self.clocks = True  # False only in bench/bench_clocks.py: the baseline without clocks
        # Clocks of causes read back from disk (older than the newest events in memory), so a
        # cause named again and again is read once: (conversation number, id) -> clock.
        self._read_clocks: OrderedDict[tuple[int, str], dict[str, int]] = OrderedDict()

    # --- conversations and their files -----------------------------------------------------

    def conversation(self, cid: str) -> Conversation:
        conv = self.conversations.get(cid)
        if conv is None:
            conv = Conversation(cid, len(self.by_no), self.paths, self.index, self.listing)
            self.conversations[cid] = conv
            self.by_no.append(conv)
        return conv

    def _acquire(self, cid: str, want_index: bool) -> tuple[Conversation, int]:
        """The conversation, caught up with the disk, and its active segment locked ``LOCK_EX``."""
        conv = self.conversation(cid)
        fd = self._fds.pop(cid, None)
        st = None
        if fd is not None:  # the usual case: our cached fd, if the path still names its file
            files.flock_exclusive(fd)
            st = os.fstat(fd)
            # A writer rotates only right after its own append, so a file still the size we
            # left it cannot have been rotated: skip the stat of the path then.
            unchanged = (st.st_dev, st.st_ino) == conv.active_ident and st.st_size == conv.active_size
            if not unchanged and not files.names(conv.path, st):
                files.unlock_close(fd)
                fd = st = None
        if fd is None:
            fd = files.lock_path(conv.path, exclusive=True, create=True)
            assert fd is not None
        self._fds[cid] = fd
        before = (conv.active_ident, conv.active_size, conv.loaded)
        try:
            conv.catch_up(fd, want_index=want_index, st=st)
            if self.journal is not None and (conv.active_ident, conv.active_size, conv.loaded) != before:
                self._cover_foreign(conv, fd, *before)
        except BaseException:
            self._release(cid, broken=True)
            raise
        return conv, fd

    def _cover_foreign(
        self, conv: Conversation, fd: int, ident: tuple[int, int] | None, size: int, loaded: bool
    ) -> None:
        """Make lines we did not write durable before we build on them.

        They may be in the page cache only: another process's batch that it was killed
        before journaling (never acknowledged, but our seqs will follow it). Lines appended
        after those we knew are copied into our journal, made durable by our batch's one
        fdatasync (a power cut then replays them from ours); anything else (a file we load,
        or one rotated meanwhile) is fdatasync'd whole.
        """
        assert self.journal is not None
        grown = conv.active_size - size
        if loaded and conv.loaded and conv.corrupt is None and ident == conv.active_ident and 0 < grown <= _COPY_BYTES:
            self.journal.write(files.pread_exact(fd, grown, size))
            self._dirty.add(conv.cid)  # a checkpoint must sync the file before retiring the copy
        else:
            files.fdatasync(fd)

    def _release(self, cid: str, *, broken: bool = False) -> None:
        fd = self._fds.get(cid)
        if fd is None:
            return
        if broken:
            del self._fds[cid]
            files.unlock_close(fd)
        else:
            files.unlock(fd)

    def close(self) -> None:
        """Checkpoint, remove the journal, release every file."""
        if self.journal is not None:
            try:
                self.checkpoint()
            except OSError as exc:
                log.error("log.checkpoint_failed", error=str(exc))
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # --- the journal -------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """fdatasync every file the journal covers, then delete the journal."""
        if self.journal is None:
            return
        cached = [self._fds[cid] for cid in sorted(self._dirty) if cid in self._fds]
        others = [cid for cid in sorted(self._dirty) if cid not in self._fds]
        try:
            self._sync_all(cached)
            for i in range(0, len(others), self.max_open_files):  # never more open than our share
                self._sync_paths(others[i : i + self.max_open_files])
        except OSError as exc:
            log.error("log.checkpoint_failed", error=str(exc), files=len(self._dirty))
            self.journal.detach()  # the only durable copy now: kept for replay, never reused
            raise
        self._dirty.clear()
        self.journal.retire()
        self.stats.checkpoints += 1

    def _sync_paths(self, cids: list[str]) -> None:
        fds = []
        try:
            for cid in cids:
                try:
                    fds.append(open_regular(active_path(self.paths.logs_dir, cid), os.O_RDONLY))
                except FileNotFoundError:
                    continue  # rotated, and fdatasync'd when it was
                except UnsafePathError as exc:  # replaced by a link or a directory: not ours to sync
                    log.error("log.checkpoint_skipped", conversation_id=cid, error=str(exc))
            self._sync_all(fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _abandon_journal(self) -> None:
        """After a failed journal fsync: make the files durable on their own, start a new journal."""
        try:
            self.checkpoint()
        except OSError:
            pass  # logged; the old journal was kept for replay

    def restore(self, cid: str, lines: list[tuple[int, bytes]]) -> None:
        """Put back journal lines a conversation file lost (a power cut before a checkpoint)."""
        conv, fd = self._acquire(cid, False)
        try:
            missing = [(seq, line) for seq, line in lines if seq > conv.last_seq]
            expected = conv.last_seq + 1
            good = []
            for seq, line in missing:
                if seq != expected:
                    log.error("log.replay_gap", conversation_id=cid, expected=expected, found=seq)
                    break
                good.append(line + b"\n")
                expected += 1
            if good:
                files.write_all(fd, b"".join(good))
                files.fdatasync(fd)
                log.warning("log.replayed", conversation_id=cid, events=len(good), last_seq=expected - 1)
            conv.loaded = False  # re-read it, ids and all, next time
        finally:
            self._release(cid)
            self._trim_fds()  # a journal may name more conversations than we may hold open

    def forget(self, cid: str) -> int:
        """Delete every file of conversation ``cid`` (its active segment under the
        exclusive lock, its archive and drop markers) and start it over at seq 1; returns
        the last seq it had. The journal is checkpointed first, so a crash can never replay
        a deleted event back."""
        self.checkpoint()
        conv, fd = self._acquire(cid, False)
        last = conv.last_seq
        try:
            archive = self.paths.archive_dir
            with os.scandir(archive) as entries:
                doomed = [e.path for e in entries if _names_conversation(e.name, cid)]
            for path in doomed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            os.unlink(conv.path)  # while we hold its lock: no writer is between write and fsync
            files.fsync_dir(archive)
            files.fsync_dir(self.paths.logs_dir)
        finally:
            self._release(cid, broken=True)
        self._read_clocks.clear()  # what was read of it is gone (and its ids may come again)
        fresh = Conversation(cid, conv.no, self.paths, self.index, self.listing)
        self.conversations[cid] = self.by_no[conv.no] = fresh
        self.views.drop(cid)
        return last

    # --- reading back, for idempotence --------------------------------------------------------

    def find_existing(self, conv: Conversation, event_id: str, fd: int) -> Event | None:
        """The event ``event_id`` already in ``conv``, checked against the bytes on disk."""
        for no, seq in self.index.locate(event_id):
            if no != conv.no or seq > conv.last_seq:
                continue
            line = self._line_at(conv, seq, fd)
            if line is not None:
                event = decode_event(line)
                if event.id == event_id:
                    return event
        return None

    def _line_at(self, conv: Conversation, seq: int, fd: int) -> bytes | None:
        """The line of ``seq`` (None when it is not there: dropped by retention, or damaged)."""
        if seq >= conv.active_first_seq:
            return line_with_seq(fd, conv.active_size, seq)
        try:
            return _archived_line(conv.archived, seq)
        except FileNotFoundError:  # compressed or dropped since we listed: look again, once
            try:
                return _archived_line(self.listing.get(conv.cid, refresh=True), seq)
            except FileNotFoundError:
                return None

    def index_conversations(self, cids: Iterable[str]) -> int:
        """Load and index ``cids`` (repairing torn tails, flagging damage); returns how many
        had to be read. Holds no more files open than between two batches."""
        done = 0
        for cid in cids:
            conv = self.conversations.get(cid)
            if conv is not None and conv.indexed and not self._changed_on_disk(conv):
                continue
            try:
                self._acquire(cid, True)
            except OSError as exc:
                log.error("log.index_failed", conversation_id=cid, error=str(exc))
                continue
            self._release(cid)
            self._trim_fds()
            done += 1
        return done

    def stale(self, cids: Iterable[str]) -> list[str]:
        """Those of ``cids`` not indexed, or whose file changed on disk since: a stat each.

        Safe without the writer lock (a hint: :meth:`index_conversations` checks again)."""
        out = []
        for cid in cids:
            conv = self.conversations.get(cid)
            if conv is None or not conv.indexed or self._changed_on_disk(conv):
                out.append(cid)
        return out

    def _changed_on_disk(self, conv: Conversation) -> bool:
        try:
            st = os.stat(active_path(self.paths.logs_dir, conv.cid))
        except FileNotFoundError:
            return conv.active_ident is not None
        return (st.st_dev, st.st_ino) != conv.active_ident or st.st_size != conv.active_size

    # --- appending ------------------------------------------------------------------------

    def append(self, batch: list[AppendRequest]) -> None:
        """Write ``batch`` durably; fills in every request's results or error.

        A batch that names more conversations than we may hold open is committed in parts,
        in order, each request whole inside one part; a single request naming more than
        that is refused, since its all-or-nothing needs every file locked at once.
        """
        limit = self.max_open_files
        part: list[AppendRequest] = []
        wanted: set[str] = set()  # the conversations this part writes to
        for req in batch:
            events: Sequence[NewEvent | Event] = req.events if req.placed is None else req.placed
            if len(events) == 1:  # the usual request: one event, one conversation
                cid = events[0].conversation_id
                if cid not in wanted and len(wanted) >= limit:
                    self._append_part(part, wanted)
                    part, wanted = [], set()
                wanted.add(cid)
                part.append(req)
                continue
            own = {ev.conversation_id for ev in events}
            if len(own) > limit:
                req.error = InvalidParams(
                    f"these events name {len(own)} conversations; one call may name at most {limit} "
                    "here (the files it must hold open at once): split it",
                    {"conversations": len(own), "max_conversations": limit},
                )
                continue
            if len(wanted | own) > limit:
                self._append_part(part, wanted)
                part, wanted = [], set()
            wanted |= own
            part.append(req)
        if part:
            self._append_part(part, wanted)

    def _append_part(self, batch: list[AppendRequest], wanted: set[str]) -> None:
        """Commit requests that together name at most ``max_open_files`` conversations.

        Files are locked in sorted order so writers in several processes never deadlock.
        Each is indexed (read whole once): idempotent ids and clocks need what it holds.
        """
        self._make_room(wanted)
        pendings: dict[str, _Pending] = {}
        unopened: dict[str, SidecarError] = {}
        try:
            for cid in sorted(wanted):
                try:
                    conv, fd = self._acquire(cid, True)
                except OSError as exc:
                    unopened[cid] = _storage_error(exc, f"open the log of {cid!r}")
                    continue
                pendings[cid] = _Pending(conv, fd, conv.last_seq + 1, conv.last_ts)

            now = self.now_ns()
            stamp = format_timestamp(now)
            for req in batch:
                self._stage(req, pendings, unopened, stamp, now // 1_000_000)

            written = [p for p in pendings.values() if p.lines]
            try:
                self._write_and_sync(written)
            except OSError as exc:
                error = _storage_error(exc, "write the log")
                log.error("log.write_failed", error=str(exc), conversations=[p.conv.cid for p in written])
                for p in written:
                    _truncate_back(p)
                    self._release(p.conv.cid, broken=True)
                if self.journal is not None:
                    self._abandon_journal()  # never fsync a journal again after its fsync failed
                for req in batch:
                    req.error, req.results = req.error or error, []
                return
            for p in written:
                self._apply(p)
                if p.conv.active_size > self.rotate_bytes:
                    self._rotate(p.conv, p.fd)
            if self.on_commit is not None and written:
                try:
                    self.on_commit([event for p in written for event in p.events])
                except Exception:
                    log.exception("log.on_commit_failed")
        finally:
            for cid in pendings:
                self._release(cid)
            self._trim_fds()
        if self.journal is not None and self.journal.full:
            try:
                self.checkpoint()
            except OSError:
                pass  # logged; the journal keeps everything durable meanwhile

    def _trim_fds(self) -> None:
        """Close the coldest files past the limit (all are unlocked between batches)."""
        excess = len(self._fds) - self.max_open_files
        if excess > 0:
            self._evict(list(itertools.islice(self._fds, excess)))

    def _make_room(self, wanted: set[str]) -> None:
        """Close cached files this commit does not need, so that it holds at most the limit."""
        excess = len(self._fds) + len(wanted) - self.max_open_files
        if excess <= 0:
            return
        excess -= sum(cid in self._fds for cid in wanted)
        if excess > 0:
            self._evict(list(itertools.islice((c for c in self._fds if c not in wanted), excess)))

    def _evict(self, cids: list[str]) -> None:
        """Close these cached, unlocked files; those only the journal made durable are
        fdatasync'd first (together), so a checkpoint never has to reopen them."""
        dirty = [cid for cid in cids if cid in self._dirty]
        if dirty:
            try:
                self._sync_all([self._fds[cid] for cid in dirty])
                self._dirty.difference_update(dirty)
            except OSError as exc:
                log.error("log.checkpoint_failed", error=str(exc), conversations=dirty)
                if self.journal is not None:
                    self.journal.detach()
        for cid in cids:
            os.close(self._fds.pop(cid))

    def _stage(
        self,
        req: AppendRequest,
        pendings: dict[str, _Pending],
        unopened: dict[str, SidecarError],
        stamp: str,
        now_ms: int,
    ) -> None:
        marks: dict[str, tuple[int, str, int]] = {}
        try:
            for ev in req.events if req.placed is None else req.placed:
                cid = ev.conversation_id
                if cid in unopened:
                    raise unopened[cid]
                p = pendings[cid]
                if cid not in marks:
                    marks[cid] = p.mark()
                if isinstance(ev, Event):
                    req.results.append(self._stage_placed(p, ev))
                else:
                    req.results.append(self._stage_one(p, ev, stamp, now_ms))
        except SidecarError as exc:
            for cid, mark in marks.items():
                pendings[cid].rollback(mark)
            req.error, req.results = exc, []

    def _stage_one(self, p: _Pending, ev: NewEvent, stamp: str, now_ms: int) -> AppendResult:
        p.conv.refuse_if_corrupt()
        if ev.id is not None:
            seen = p.fresh.get(ev.id) or self.find_existing(p.conv, ev.id, p.fd)
            if seen is not None:
                return AppendResult(
                    id=seen.id, seq=seen.seq, timestamp=seen.timestamp, clock=seen.clock, duplicate=True
                )
        last = p.next_seq - 1
        if ev.expected_seq is not None and ev.expected_seq != last:
            raise ConflictError(
                f"conversation {ev.conversation_id!r} is at seq {last}, not {ev.expected_seq}",
                {"conversation_id": ev.conversation_id, "expected_seq": ev.expected_seq, "last_seq": last},
            )
        writer = ev.agent_id or DEFAULT_WRITER
        if not self.clocks:
            clock: Clock = {}
        elif ev.clock is not None:
            p.clocks.check_sent(writer, ev.clock, ev.conversation_id)
            clock = ev.clock
            p.clocks.observe(writer, clock)
        else:  # taken in as the writer's newest (undone with the request, if it fails)
            clock = p.clocks.next_clock(writer, self._cause_clocks(p, ev.caused_by) if ev.caused_by else ())
        event = placed(
            ev,
            event_id=ev.id or new_event_id(now_ms),
            seq=p.next_seq,
            timestamp=max(stamp, p.last_ts),  # never backwards, even when the wall clock is
            clock=clock,
        )
        line = encode_within(event, self.max_event_bytes)
        p.lines.append(line)
        p.events.append(event)
        p.fresh[event.id] = event
        p.next_seq += 1
        p.last_ts = event.timestamp
        return AppendResult(id=event.id, seq=event.seq, timestamp=event.timestamp, clock=clock)

    def _stage_placed(self, p: _Pending, event: Event) -> AppendResult:
        """A replica's copy of an event the source log placed: written as it is, at its own
        seq. One already here (a feed's redelivery) is answered as a duplicate; any other
        seq, or another event at that seq, means this copy no longer follows its source."""
        p.conv.refuse_if_corrupt()
        next_seq = p.next_seq
        if event.seq < next_seq:
            seen = p.fresh.get(event.id) or self.find_existing(p.conv, event.id, p.fd)
            if seen is not None and seen.seq == event.seq:
                return AppendResult(
                    id=seen.id, seq=seen.seq, timestamp=seen.timestamp, clock=seen.clock, duplicate=True
                )
        if event.seq != next_seq:
            raise ConflictError(
                f"the copy of conversation {event.conversation_id!r} is at seq {next_seq - 1}; "
                f"event {event.id} is at seq {event.seq}",
                {"conversation_id": event.conversation_id, "seq": event.seq, "last_seq": next_seq - 1},
            )
        p.clocks.observe(writer_of(event.agent_id), event.clock)
        p.lines.append(encode_event(event))
        p.events.append(event)
        p.fresh[event.id] = event
        p.next_seq += 1
        p.last_ts = max(p.last_ts, event.timestamp)
        return AppendResult(id=event.id, seq=event.seq, timestamp=event.timestamp, clock=event.clock)

    def _cause_clocks(self, p: _Pending, caused_by: list[str]) -> list[dict[str, int]]:
        """The clocks of the events in ``caused_by`` that are in this conversation: from this
        batch, from the newest events in memory, else read back from the log (one line each,
        remembered)."""
        out = []
        conv = p.conv
        for ref in caused_by:
            staged = p.fresh.get(ref)
            if staged is not None:
                out.append(staged.clock)
                continue
            known = self._read_clocks.get((conv.no, ref))
            if known is not None:
                self._read_clocks.move_to_end((conv.no, ref))
                out.append(known)
                continue
            for no, seq in self.index.locate(ref):
                if no != conv.no or seq > conv.last_seq:
                    continue
                recent = conv.recent  # the file is as it says while we hold the lock and it matches
                current = recent is not None and (recent.ident, recent.size) == (conv.active_ident, conv.active_size)
                event = recent.event_at(seq) if current and recent is not None else None
                if event is not None and event.id == ref:
                    out.append(event.clock)
                    break
                try:
                    line = self._line_at(conv, seq, p.fd)
                    head = scan_head_decoder.decode(line) if line is not None else None
                except (OSError, *DECODE_ERRORS):
                    continue  # gone (retention) or damaged: not a cause we can see
                if head is not None and head.id == ref:
                    out.append(head.clock)
                    self._read_clocks[(conv.no, ref)] = head.clock
                    if len(self._read_clocks) > _READ_CLOCKS:
                        self._read_clocks.popitem(last=False)
                    break
        return out

    def _write_and_sync(self, written: list[_Pending]) -> None:
        if not written:
            return
        chunks = [b"".join(p.lines) for p in written]
        for p, chunk in zip(written, chunks):
            files.write_all(p.fd, chunk)
        if self.journal is not None:
            mark = self.journal.size
            self.journal.write(b"".join(chunks))
            try:
                self.journal.sync()
            except OSError:
                self.journal.erase(mark)
                raise
            self._dirty.update(p.conv.cid for p in written)
            self.stats.fsyncs += 1
        else:
            self._sync_all([p.fd for p in written])
        if any(p.conv.new_file for p in written):
            files.fsync_dir(self.paths.logs_dir)  # a new file's directory entry must be durable too
        self.stats.batches += 1
        self.stats.events += sum(len(p.lines) for p in written)

    def _sync_all(self, fds: list[int]) -> None:
        """fdatasync ``fds``, in parallel when several: their waits on the device overlap."""
        self.stats.fsyncs += len(fds)
        if len(fds) == 1:
            files.fdatasync(fds[0])
        elif fds:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sidecar-fsync")
            futures = [self._pool.submit(files.fdatasync, fd) for fd in fds]
            failure = next((e for e in (f.exception() for f in futures) if e is not None), None)
            if failure is not None:
                raise failure

    def _apply(self, p: _Pending) -> None:
        conv = p.conv
        conv.new_file = False
        lengths = list(map(len, p.lines))
        old_size = conv.active_size
        conv.active_size += sum(lengths)
        if conv.active_ident is not None:  # what the readers of recent events are served
            view = conv.recent
            if view is None:
                view = fresh(conv.active_ident, old_size, conv.active_size, p.events, lengths)
            else:
                view = view.extended(conv.active_ident, old_size, conv.active_size, p.events, lengths)
            self.views.keep(conv, view)
        conv.last_seq = p.next_seq - 1
        conv.last_ts = p.last_ts
        conv.clocks.take(p.clocks)
        if conv.indexed:
            for event in p.events:
                self.index.add(event.id, conv.no, event.seq, event.caused_by)

    def _rotate(self, conv: Conversation, fd: int) -> None:
        """Seal the active segment into the archive while we still hold its lock."""
        try:
            if conv.cid in self._dirty:
                files.fdatasync(fd)  # an archived segment is durable on its own
                self._dirty.discard(conv.cid)
            seg = rotate(
                active_path(self.paths.logs_dir, conv.cid),
                self.paths.archive_dir,
                conv.cid,
                conv.active_first_seq,
                conv.last_seq,
            )
        except OSError as exc:
            log.error("log.rotate_failed", conversation_id=conv.cid, error=str(exc))
            return
        conv.archived.append(seg)
        conv.active_first_seq = conv.last_seq + 1
        conv.active_ident, conv.active_size = None, 0
        log.info("log.rotated", conversation_id=conv.cid, segment=seg.path, last_seq=seg.last_seq)
        if self.on_rotate is not None:
            try:
                self.on_rotate()
            except Exception:
                log.exception("log.on_rotate_failed")


@dataclass
class WriterStats:
    """Counters for ``sys.stats``: batches, events, fdatasyncs of log files, checkpoints."""

    batches: int = 0
    events: int = 0
    fsyncs: int = 0
    checkpoints: int = 0


_READ_CLOCKS = 16_384  # clocks of causes read from disk, remembered
_COPY_BYTES = 1 << 20  # another writer's new lines copied into our journal, at most; else fdatasync


def _names_conversation(name: str, cid: str) -> bool:
    """Whether an archive file's name is one of ``cid``'s: a segment, a drop marker, a torn
    tail or a compression's temporary file (and not those of ``cid.1``, say)."""
    return re.fullmatch(re.escape(cid) + _OWN_FILE, name) is not None


_OWN_FILE = r"\.\d{12}(-\d{12}\.(jsonl|jsonl\.zst|jsonl\.zst\.tmp|dropped)|\.\d+\.\d+\.torn)"


def _archived_line(segments: list[ArchivedSegment], seq: int) -> bytes | None:
    for seg in segments:
        if seg.first_seq <= seq <= seg.last_seq:
            src, end = open_segment(seg.path)
            try:
                return line_with_seq(src, end, seq, seg.first_seq)
            finally:
                close_source(src)
    return None


def _truncate_back(p: _Pending) -> None:
    try:
        os.ftruncate(p.fd, p.conv.active_size)
    except OSError:
        pass  # the next writer finds the partial line and repairs it as a torn tail
    p.conv.loaded = False  # never trust state after a failed sync: re-read the disk next time


def _storage_error(exc: OSError, doing: str) -> StorageError:
    code = exc.errno or errno.EIO
    name = errno.errorcode.get(code, "EIO")
    full = code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    reason = "the disk is full" if full else os.strerror(code)
    return StorageError(f"could not {doing}: {reason} ({name}); nothing was acknowledged", {"errno": name})
