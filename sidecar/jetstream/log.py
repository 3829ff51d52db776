"""The event log on NATS JetStream: one replicated stream, one subject per conversation.

This is the core of the ``jetstream`` backend (contract §16), usable on its own: several
processes on several hosts append to the same conversations and each sees all of them.

- **Seqs stay gapless per conversation across daemons.** A conversation's ``seq`` is ours
  (a stream's sequence counts every subject), so each append names the stream sequence of
  the conversation's last message in ``Nats-Expected-Last-Subject-Sequence``. An append
  that raced another daemon's is refused by the stream leader; this process then waits
  until its feed has taken in what it missed, and tries again with the next seq. The event
  written always follows exactly the one it was computed after.
- **Idempotent ids.** The event id is the message's ``Nats-Msg-Id``. So a retry, or two
  daemons sending the same id at once, is written once within the stream's duplicate
  window. Beyond the window, ids this process has seen (every event, once caught up) are
  answered from its index.
- **One feed, and an index of what this process uses.** One ordered consumer over every
  conversation's subject (the *feed*) passes each message on once, in stream order
  (``on_event``, ``on_deleted``), from the beginning or from where the caller's copy of the
  stream already is (:meth:`JetStreamLog.start`). A conversation is indexed when this
  process first uses it, by reading its subject's history once: its last seq and stream
  sequence, the writers' clocks, its ids, and where each event is; the feed keeps it
  current from then on. A process so holds the conversations it uses, not the whole
  stream. Reads go straight to the stream by sequence (direct get); the newest events of
  a conversation come from memory.
- **All or none.** Several events of one call go out as one atomic batch publish; the first
  of each conversation in it carries the expectation (:meth:`JetStreamLog.append_batch`).
- **Deletion** is a tombstone on the conversation's subject (header ``Sidecar-Deleted``),
  checked against its last message, and everything older purged; every process's feed meets
  it in order and starts the conversation over (:meth:`JetStreamLog.delete`).
- **Retries.** Appends are retried with the same id and the same expectation while the
  cluster elects a leader or has a write in flight (no responders, a timeout, NATS errors
  10158, 10163 and 10164), within a deadline. The id makes a retry of a write that landed
  come back as that write.

Durability is the cluster's: a publish is acknowledged once a majority of the stream's
replicas have it, and with ``sync_interval: always`` each of them has written it to disk
first (docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from array import array
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.errors import ConflictError, InvalidParams, StorageError
from sidecar.jetstream.config import JetStreamConfig
from sidecar.log.clocks import DEFAULT_WRITER, ClockState
from sidecar.log.events import AppendResult, Event, NewEvent, as_new_event, decode_event, encode_within, placed
from sidecar.log.ids import new_event_id
from sidecar.log.index import id_key
from sidecar.log.segments import DECODE_ERRORS
from sidecar.log.store import DEFAULT_MAX_EVENT_BYTES
from sidecar.log.timestamps import format_timestamp

log = structlog.get_logger("sidecar.jetstream")
T = TypeVar("T")

RETRY_S = 30.0  # an append keeps retrying (leader changes, writes in flight) this long
DUPLICATE_WINDOW_S = 600.0  # the stream's: a retried or repeated id within it is written once
RECENT_BYTES = 4096  # each conversation's newest events kept in memory, as sent (up to twice that)
# The index holds at most this many conversations, and events of them (ids and places), beyond
# those being appended to: the least recently used are forgotten, and read again on next use.
MAX_CONVERSATIONS = 4096
MAX_INDEXED = 1_000_000  # about 112 MiB (ids and places: 112 bytes an event, measured)
_RETRY_CODES = {10158, 10163, 10164}  # id or expectation of a write still in flight; not ready
_WRONG_LAST = 10071
DELETED_HEADER = "Sidecar-Deleted"  # a conversation's tombstone; its value: the last seq it had
_WRONG_LAST_IN_FLIGHT = 10164  # in an atomic batch: an expectation that failed
_DUPLICATE_IN_BATCH = 10201  # an atomic batch holding an id the stream has
MAX_BATCH = 1000  # events of one atomic batch (the server's limit)
_BATCH_TIMEOUT_S = 5.0


def subject_of(stream: str, cid: str) -> str:
    """A conversation's subject: ``{stream}.log.{cid}``, the stream's name keeping streams of
    several deployments on one cluster apart. A ``.`` of the id would split NATS tokens, so it
    becomes ``~``, which no conversation id holds."""
    return f"{stream}.log.{cid.replace('.', '~')}"


def cid_of(stream: str, subject: str) -> str:
    return subject[len(stream) + 5 :].replace("~", ".")


@dataclass
class _Conversation:
    """What this process knows of one conversation: its history, then its feed and appends."""

    last_seq: int = 0
    last_stream_seq: int = 0  # the stream sequence of its newest message (0: none)
    last_ts: str = ""
    clocks: ClockState = field(default_factory=ClockState)
    where: array[int] = field(default_factory=lambda: array("Q"))  # the stream sequence of each seq
    where_first: int = 1  # the seq of where[0]
    ids: dict[int, int] = field(default_factory=dict)  # id_key(event id) -> seq: a hint, checked
    recent: list[bytes] = field(default_factory=list)  # the newest events as sent, oldest first
    recent_first: int = 1  # the seq of recent[0]
    recent_bytes: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # this process's appends, one at a time
    gone: bool = False  # deleted: a fresh _Conversation stands for it now
    moved: asyncio.Event = field(default_factory=asyncio.Event)  # set whenever the feed moves it on
    # While its history is read: what the feed brought meanwhile, (stream seq, event or None
    # for a tombstone), taken in after it. None once the history is in.
    early: list[tuple[int, Event | None, bytes]] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # its history is in (or failed)

    def restart(self, stream_seq: int) -> None:
        """A tombstone at ``stream_seq`` in its history: what came before is gone."""
        self.last_seq, self.last_stream_seq, self.last_ts = 0, stream_seq, ""
        self.clocks, self.where, self.where_first, self.ids = ClockState(), array("Q"), 1, {}
        self.recent, self.recent_first, self.recent_bytes = [], 1, 0

    def place(self, seq: int) -> int | None:
        """The stream sequence of ``seq``, if indexed."""
        i = seq - self.where_first
        return self.where[i] if 0 <= i < len(self.where) else None


class JetStreamLog:
    """The log of every conversation on one JetStream stream, for one process."""

    def __init__(
        self,
        config: JetStreamConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        on_event: Callable[[Event, int], None] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.max_event_bytes = max_event_bytes
        # Every event after the start, in stream order, once, with its stream sequence.
        self.on_event = on_event
        self.on_deleted: Callable[[str, int], None] | None = None  # a tombstone (any process's), likewise
        # Awaited before each message of the feed: the caller's consumer of what it passes on
        # (the daemon's copy) holds it back while full. The client library then withholds its
        # flow-control answers, so the server stops sending: a start over a long stream never
        # holds more of it in memory than that.
        self.pace: Callable[[], Awaitable[None]] | None = None
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._feed: JetStreamContext.PushSubscription | None = None
        # The conversations this process has used, the least recently used first.
        self._convs: OrderedDict[str, _Conversation] = OrderedDict()
        self._passed_early: set[int] = set()  # our appends, passed on when acknowledged: the feed skips them
        self.applied = 0  # the stream sequence the feed has passed on everything up to
        self.created = ""  # when the stream was made: a stream made again is another stream
        self.resumed_from = 0  # the stream sequence the feed started after
        self._catch_up_target = 0  # the stream's last sequence at start: caught up once the feed is there
        self.caught_up = asyncio.Event()

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self, resume: Callable[[str], int] | None = None) -> None:
        """Connect, make sure the stream exists, and pass on every message up to its end.

        ``resume(created)`` names the stream sequence the caller has everything up to, for
        the stream made at ``created``; the feed starts after it (else at the beginning).
        """
        self._nc = await nats.connect(self.config.servers, max_reconnect_attempts=-1, name="sidecar")
        self._js = self._nc.jetstream()
        js, stream = self._js, self.config.stream
        await self._ensure_stream()
        # A stream another process has just made may have no leader for a moment: retried.
        info = await retrying(lambda: js.stream_info(stream))
        self.created = info.created.isoformat() if info.created is not None else ""
        target = info.state.last_seq
        after = resume(self.created) if resume is not None else 0
        if not 0 <= after <= target:
            log.warning("jetstream.resume_refused", stream_seq=after, stream_last_seq=target)
            after = 0
        self.applied = self.resumed_from = after
        start = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
        self._feed = await retrying(
            lambda: js.subscribe(f"{stream}.log.>", stream=stream, ordered_consumer=True, cb=self._on_msg, config=start)
        )
        if target <= after:
            self.caught_up.set()
        else:
            self._catch_up_target = target
        await self.caught_up.wait()

    async def _ensure_stream(self) -> None:
        assert self._js is not None
        cfg = api.StreamConfig(
            name=self.config.stream,
            subjects=[f"{self.config.stream}.log.>"],
            num_replicas=self.config.replicas,
            storage=api.StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_S,
            allow_direct=True,
            allow_atomic=True,  # log.append_many: all or none (nats-server 2.12 and later)
            max_msg_size=self.max_event_bytes + 4096,
        )
        js = self._js
        try:
            info = await retrying(lambda: js.stream_info(cfg.name or ""))
        except nats.js.errors.NotFoundError:
            await retrying(lambda: self._js_add(cfg))
            return
        if not info.config.allow_atomic:  # made by an earlier version: atomic batches are needed now
            await retrying(lambda: js.update_stream(dataclasses.replace(info.config, allow_atomic=True)))

    async def _js_add(self, cfg: api.StreamConfig) -> None:
        assert self._js is not None
        try:
            await self._js.add_stream(cfg)
        except nats.js.errors.BadRequestError as exc:
            if "already in use" not in str(exc.description):
                raise

    async def close(self) -> None:
        if self._feed is not None:
            await self._feed.unsubscribe()
        if self._nc is not None:
            await self._nc.drain()

    @property
    def client(self) -> NatsClient:
        """The connection (started): the control plane's KV buckets and heartbeats share it."""
        assert self._nc is not None, "start() first"
        return self._nc

    # --- the feed --------------------------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        if self.pace is not None:
            await self.pace()
        meta = msg.metadata
        stream_seq = meta.sequence.stream
        cid, event = self._message(msg, stream_seq)
        if cid is not None:
            conv = self._convs.get(cid)
            if conv is not None and conv.early is not None:
                conv.early.append((stream_seq, event, msg.data))  # its history is being read: after it
            elif conv is not None:
                self._take_in(cid, conv, stream_seq, event, msg.data)
            self._pass_on(cid, stream_seq, event)
        self.applied = stream_seq
        if not self.caught_up.is_set() and (stream_seq >= self._catch_up_target or meta.num_pending == 0):
            self.caught_up.set()

    def _message(self, msg: Msg, stream_seq: int) -> tuple[str | None, Event | None]:
        """``(conversation, event)`` of a message, the event None for a tombstone; the
        conversation None for a message that is not ours (written by hand?): never trusted."""
        cid = cid_of(self.config.stream, msg.subject)
        if msg.headers and msg.headers.get(DELETED_HEADER):
            return cid, None
        try:
            event = decode_event(msg.data)
        except DECODE_ERRORS as exc:
            log.warning("jetstream.bad_message", subject=msg.subject, stream_seq=stream_seq, error=str(exc))
            return None, None
        return (cid, event) if event.conversation_id == cid else (None, None)

    def _take_in(self, cid: str, conv: _Conversation, stream_seq: int, event: Event | None, data: bytes) -> None:
        if event is None:
            self._deleted(cid, conv, stream_seq)
        else:
            self._index(conv, event, stream_seq, data)

    def _pass_on(self, cid: str, stream_seq: int, event: Event | None) -> None:
        if stream_seq in self._passed_early:
            self._passed_early.discard(stream_seq)
            return
        try:
            if event is None:
                if self.on_deleted is not None:
                    self.on_deleted(cid, stream_seq)
            elif self.on_event is not None:
                self.on_event(event, stream_seq)
        except Exception:
            log.exception("jetstream.pass_on_failed", conversation_id=cid, stream_seq=stream_seq)

    def _deleted(self, cid: str, old: _Conversation, stream_seq: int) -> None:
        """A conversation's tombstone (:meth:`delete`, by any process): everything before it is
        gone, and the conversation starts again at seq 1 after it."""
        if stream_seq <= old.last_stream_seq:
            return  # seen already
        fresh = _Conversation(last_stream_seq=stream_seq)
        fresh.ready.set()
        self._convs[cid] = fresh
        old.gone = True  # an append waiting on it starts again on the fresh one
        old.moved.set()
        fresh.moved.set()

    def _index(self, conv: _Conversation, event: Event, stream_seq: int, data: bytes) -> bool:
        """Take in an event of the stream (ours or another process's; ``data``: as sent),
        once; False if known."""
        if stream_seq <= conv.last_stream_seq:
            return False  # ours, taken in when it was acknowledged
        conv.last_seq, conv.last_stream_seq, conv.last_ts = event.seq, stream_seq, event.timestamp
        conv.clocks.observe(event.agent_id or DEFAULT_WRITER, event.clock)
        if event.seq != conv.where_first + len(conv.where):
            conv.where, conv.where_first = array("Q"), event.seq
        conv.where.append(stream_seq)
        conv.ids[id_key(event.id)] = event.seq
        if event.seq != conv.recent_first + len(conv.recent):
            conv.recent, conv.recent_first, conv.recent_bytes = [], event.seq, 0
        conv.recent.append(data)
        conv.recent_bytes += len(data)
        if conv.recent_bytes > 2 * RECENT_BYTES:  # amortized: trimmed down to RECENT_BYTES
            drop = 0
            while conv.recent_bytes > RECENT_BYTES and drop < len(conv.recent) - 1:
                conv.recent_bytes -= len(conv.recent[drop])
                drop += 1
            del conv.recent[:drop]
            conv.recent_first += drop
        conv.moved.set()
        conv.moved = asyncio.Event()
        return True

    # --- a conversation's history --------------------------------------------------------------------

    async def _conversation(self, cid: str) -> _Conversation:
        """``cid`` as this process knows it, its history read from the stream on first use."""
        while True:
            conv = self._convs.get(cid)
            if conv is None:
                conv = _Conversation(early=[])
                self._convs[cid] = conv
                try:
                    await self._read_history(cid, conv)
                finally:
                    if conv.early is not None:  # failed (or cancelled): the next use reads it again
                        self._convs.pop(cid, None)
                    conv.ready.set()
                self._trim(cid)
            elif conv.early is not None:
                await conv.ready.wait()
            else:
                self._convs.move_to_end(cid)
                return conv

    def _trim(self, keep: str) -> None:
        """Forget the least recently used conversations past :data:`MAX_CONVERSATIONS` and
        :data:`MAX_INDEXED`, but none being read or appended to. One that an append is
        about to take up is marked gone, like a deleted one, so that it reads it again."""
        indexed = sum(len(conv.where) for conv in self._convs.values())
        for cid, conv in list(self._convs.items()):
            if len(self._convs) <= MAX_CONVERSATIONS and indexed <= MAX_INDEXED:
                return
            if cid == keep or conv.early is not None or conv.lock.locked():
                continue
            del self._convs[cid]
            indexed -= len(conv.where)
            conv.gone = True
            conv.moved.set()

    async def _read_history(self, cid: str, conv: _Conversation) -> None:
        """Every message of ``cid`` up to its last now, then what the feed brought meanwhile."""
        js, stream, subject = self._js, self.config.stream, subject_of(self.config.stream, cid)
        assert js is not None
        try:
            last = await retrying(lambda: js.get_last_msg(stream, subject))
        except nats.js.errors.NotFoundError:
            last = None
        if last is not None and last.seq is not None:
            sub = await retrying(lambda: js.subscribe(subject, stream=stream, ordered_consumer=True))
            try:
                while True:
                    msg = await sub.next_msg(timeout=RETRY_S)
                    stream_seq = msg.metadata.sequence.stream
                    msg_cid, event = self._message(msg, stream_seq)
                    if event is None and msg_cid is not None:
                        conv.restart(stream_seq)
                    elif event is not None:
                        self._index(conv, event, stream_seq, msg.data)
                    if stream_seq >= last.seq:
                        break
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        early, conv.early = conv.early or [], None
        for stream_seq, event, data in early:
            self._take_in(cid, self._convs[cid], stream_seq, event, data)

    # --- appending -------------------------------------------------------------------------------

    async def append(self, event: NewEvent | dict[str, object]) -> AppendResult:
        """Append one event durably (a majority of the replicas have it on disk)."""
        return await self.append_valid(as_new_event(event if isinstance(event, NewEvent) else dict(event)))

    async def append_valid(self, new: NewEvent) -> AppendResult:
        """:meth:`append` for an event already validated (decoded from a request, or built
        by the daemon itself)."""
        while True:
            conv = await self._conversation(new.conversation_id)
            async with conv.lock:
                try:
                    return await self._append_locked(conv, new)
                except _Gone:
                    continue  # deleted meanwhile: append to the conversation that starts over

    async def delete(self, cid: str) -> int:
        """Delete a conversation for every process: a tombstone on its subject (after its last
        message, checked), then every older message purged. Returns the last seq it had."""
        assert self._js is not None
        subject = subject_of(self.config.stream, cid)
        deadline = time.monotonic() + RETRY_S
        while True:
            conv = await self._conversation(cid)
            async with conv.lock:
                if conv.gone:
                    continue
                last, moved = conv.last_seq, conv.moved
                headers = {DELETED_HEADER: str(last), "Nats-Expected-Last-Subject-Sequence": str(conv.last_stream_seq)}
                try:
                    await self._js.publish(subject, b"", stream=self.config.stream, headers=headers)
                except nats.js.errors.APIError as exc:
                    if exc.err_code != _WRONG_LAST and exc.err_code not in _RETRY_CODES and exc.code not in (409, 503):
                        raise StorageError(f"the stream refused the deletion: {exc.description}") from None
                    await (self._wait(moved, deadline) if exc.err_code == _WRONG_LAST else self._pause(deadline))
                    continue
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
                    await self._pause(deadline)
                    continue
                await retrying(lambda: self._js_purge(subject))
                while self._convs.get(cid) is conv:  # the feed brings the tombstone: then it is gone here
                    await self._wait(conv.moved, deadline)
                return last

    async def _js_purge(self, subject: str) -> None:
        assert self._js is not None
        await self._js.purge_stream(self.config.stream, subject=subject, keep=1)  # the tombstone stays

    async def _append_locked(self, conv: _Conversation, new: NewEvent) -> AppendResult:
        assert self._js is not None
        event_id = new.id or new_event_id(self.clock.now_ns() // 1_000_000)
        deadline = time.monotonic() + RETRY_S
        while True:
            if conv.gone:
                raise _Gone
            known = conv.ids.get(id_key(event_id))
            found = None if known is None else await self._existing(new.conversation_id, known, event_id)
            if found is not None:
                return found
            if new.expected_seq is not None and new.expected_seq != conv.last_seq:
                seen = conv.last_stream_seq
                await self._behind(conv, new.conversation_id, deadline)
                if conv.last_stream_seq != seen:
                    continue  # we had not seen the latest (or it came meanwhile): look again with it
                raise ConflictError(
                    f"conversation {new.conversation_id!r} is at seq {conv.last_seq}, not {new.expected_seq}",
                    {
                        "conversation_id": new.conversation_id,
                        "expected_seq": new.expected_seq,
                        "last_seq": conv.last_seq,
                    },
                )
            staged = conv.clocks.overlay()
            writer = new.agent_id or DEFAULT_WRITER
            if new.clock is not None:
                staged.check_sent(writer, new.clock, new.conversation_id)
                clock = dict(new.clock)
            else:
                clock = staged.next_clock(writer, await self._cause_clocks(conv, new.conversation_id, new.caused_by))
            stamp = format_timestamp(self.clock.now_ns())
            built = placed(
                new, event_id=event_id, seq=conv.last_seq + 1, timestamp=max(stamp, conv.last_ts), clock=clock
            )
            line = encode_within(built, self.max_event_bytes)
            headers = {
                "Nats-Msg-Id": event_id,
                "Nats-Expected-Last-Subject-Sequence": str(conv.last_stream_seq),
            }
            moved = conv.moved
            try:
                ack = await self._js.publish(
                    subject_of(self.config.stream, new.conversation_id),
                    line[:-1],
                    stream=self.config.stream,
                    headers=headers,
                )
            except nats.js.errors.APIError as exc:
                if exc.err_code == _WRONG_LAST:  # another process wrote first: take it in, then again
                    await self._wait(moved, deadline)
                elif exc.err_code in _RETRY_CODES or exc.code in (409, 503):  # a write still in flight
                    await self._pause(deadline)
                else:
                    raise StorageError(f"the stream refused the event: {exc.description}") from None
                continue
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
                await self._pause(deadline)  # an election, or the outcome unknown: the id settles it
                continue
            if ack.duplicate:  # written before (a retry whose first try landed, or the same id elsewhere)
                return _result(await self._read(ack.seq), duplicate=True)
            if self._index(conv, built, ack.seq, line[:-1]):  # else the feed was first: passed on already
                self._pass_on(new.conversation_id, ack.seq, built)
                self._passed_early.add(ack.seq)  # the feed brings it later: not passed on again
            return _result(built)

    async def append_batch(self, news: list[NewEvent]) -> list[AppendResult]:
        """Append events of any conversations, all or none (an atomic batch publish; at most
        :data:`MAX_BATCH` events). Events whose ids are known are answered as duplicates."""
        if len(news) > MAX_BATCH:
            raise InvalidParams(
                f"{len(news)} events in one call; the jetstream backend writes at most {MAX_BATCH} all or none",
                {"field": "events", "events": len(news), "max_events": MAX_BATCH},
            )
        cids = sorted({new.conversation_id for new in news})
        while True:
            convs = {cid: await self._conversation(cid) for cid in cids}
            async with contextlib.AsyncExitStack() as held:
                for cid in cids:  # in one order everywhere: two batches never wait on each other
                    await held.enter_async_context(convs[cid].lock)
                try:
                    return await self._batch_locked(convs, news)
                except _Gone:
                    continue

    async def _batch_locked(self, convs: dict[str, _Conversation], news: list[NewEvent]) -> list[AppendResult]:
        assert self._nc is not None
        now_ms = self.clock.now_ns() // 1_000_000
        ids = [new.id or new_event_id(now_ms) for new in news]
        deadline = time.monotonic() + RETRY_S
        while True:
            if any(conv.gone for conv in convs.values()):
                raise _Gone
            results: list[AppendResult | None] = [None] * len(news)
            for i, (new, event_id) in enumerate(zip(news, ids)):
                known = convs[new.conversation_id].ids.get(id_key(event_id))
                if known is not None:
                    results[i] = await self._existing(new.conversation_id, known, event_id)
            built, lines = await self._build_batch(convs, news, ids, results, deadline)
            if built is None:
                continue  # the conversation moved under an expected_seq: looked again
            if not lines:
                return [r for r in results if r is not None]
            error = await self._publish_batch(convs, built, lines)
            if error is None:
                for cid in {e.conversation_id for e in built}:
                    last = max(e.seq for e in built if e.conversation_id == cid)
                    while convs[cid].last_seq < last:  # the feed brings them: then they are ours
                        await self._wait(convs[cid].moved, deadline)
                by_id = {e.id: e for e in built}
                return [
                    r if r is not None else _result(by_id[event_id]) for r, event_id in zip(results, ids, strict=True)
                ]
            if error in (_WRONG_LAST, _WRONG_LAST_IN_FLIGHT, _DUPLICATE_IN_BATCH):
                for cid, conv in convs.items():  # another process wrote first: take it in, then again
                    await self._behind(conv, cid, deadline)
            else:
                await self._pause(deadline)

    async def _build_batch(
        self,
        convs: dict[str, _Conversation],
        news: list[NewEvent],
        ids: list[str],
        results: list[AppendResult | None],
        deadline: float,
    ) -> tuple[list[Event] | None, list[tuple[str, bytes, dict[str, str]]]]:
        """The batch's events at their places, and its messages: ``(None, [])`` when an
        ``expected_seq`` failed against what this process had seen and it has now looked again."""
        staged = {cid: conv.clocks.overlay() for cid, conv in convs.items()}
        next_seq = {cid: conv.last_seq + 1 for cid, conv in convs.items()}
        last_ts = {cid: conv.last_ts for cid, conv in convs.items()}
        stamp = format_timestamp(self.clock.now_ns())
        built: list[Event] = []
        lines: list[tuple[str, bytes, dict[str, str]]] = []
        in_batch: dict[str, Event] = {}
        for new, event_id, done in zip(news, ids, results):
            if done is not None:
                continue
            cid = new.conversation_id
            conv = convs[cid]
            if new.expected_seq is not None and new.expected_seq != next_seq[cid] - 1:
                seen = conv.last_stream_seq
                await self._behind(conv, cid, deadline)
                if conv.last_stream_seq != seen:
                    return None, []
                raise ConflictError(
                    f"conversation {cid!r} is at seq {next_seq[cid] - 1}, not {new.expected_seq}",
                    {"conversation_id": cid, "expected_seq": new.expected_seq, "last_seq": next_seq[cid] - 1},
                )
            writer = new.agent_id or DEFAULT_WRITER
            if new.clock is not None:
                staged[cid].check_sent(writer, new.clock, cid)
                clock = dict(new.clock)
                staged[cid].observe(writer, clock)
            else:
                causes = [in_batch[ref].clock for ref in new.caused_by or () if ref in in_batch]
                causes += await self._cause_clocks(
                    conv, cid, [ref for ref in new.caused_by or () if ref not in in_batch]
                )
                clock = staged[cid].next_clock(writer, causes)
            event = placed(new, event_id=event_id, seq=next_seq[cid], timestamp=max(stamp, last_ts[cid]), clock=clock)
            line = encode_within(event, self.max_event_bytes)
            headers = {"Nats-Msg-Id": event_id}
            if next_seq[cid] == conv.last_seq + 1:  # the first of its conversation in the batch
                headers["Nats-Expected-Last-Subject-Sequence"] = str(conv.last_stream_seq)
            next_seq[cid] += 1
            last_ts[cid] = event.timestamp
            built.append(event)
            in_batch[event_id] = event
            lines.append((subject_of(self.config.stream, cid), line[:-1], headers))
        return built, lines

    async def _publish_batch(
        self, convs: dict[str, _Conversation], built: list[Event], lines: list[tuple[str, bytes, dict[str, str]]]
    ) -> int | None:
        """Publish ``lines`` as one atomic batch; None once committed, else the error code
        (0: no answer, which a retry settles: the ids make a batch that landed a duplicate)."""
        assert self._nc is not None
        batch = uuid.uuid4().hex
        try:
            for i, (subject, data, headers) in enumerate(lines, 1):
                headers = {**headers, "Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(i)}
                if i < len(lines):
                    await self._nc.publish(subject, data, headers=headers)
                    continue
                headers["Nats-Batch-Commit"] = "1"
                reply = await self._nc.request(subject, data, headers=headers, timeout=_BATCH_TIMEOUT_S)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return 0
        try:
            answer = json.loads(reply.data)
        except ValueError:
            return 0
        error = answer.get("error") if isinstance(answer, dict) else None
        if error is None:
            return None
        code = int(error.get("err_code") or 0)
        if code not in (_WRONG_LAST, _WRONG_LAST_IN_FLIGHT, _DUPLICATE_IN_BATCH, *_RETRY_CODES) and error.get(
            "code"
        ) not in (409, 503):
            raise StorageError(f"the stream refused the events: {error.get('description')}")
        return code

    async def _cause_clocks(self, conv: _Conversation, cid: str, caused_by: list[str] | None) -> list[dict[str, int]]:
        """The clocks of the events in ``caused_by`` that are in this conversation (as the file
        backend's writer merges them): from memory, else read from the stream."""
        clocks = []
        for ref in caused_by or ():
            seq = conv.ids.get(id_key(ref))
            if seq is not None:
                event = await self.event_at(cid, seq)
                if event is not None and event.id == ref:
                    clocks.append(event.clock)
        return clocks

    async def _behind(self, conv: _Conversation, cid: str, deadline: float) -> None:
        """Wait (within ``deadline``) until the feed has brought every message of ``cid`` the
        stream has now."""
        assert self._js is not None
        try:
            # From the leader: a replica answering a direct get may not have the newest yet.
            last = await self._js.get_last_msg(self.config.stream, subject_of(self.config.stream, cid))
        except nats.js.errors.NotFoundError:
            return
        while last.seq is not None and conv.last_stream_seq < last.seq:
            await self._wait(conv.moved, deadline)

    async def _wait(self, moved: asyncio.Event, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise StorageError("could not append: the conversation kept moving under us; nothing was acknowledged")
        try:
            await asyncio.wait_for(moved.wait(), min(left, 2.0))
        except TimeoutError:
            pass  # the feed may be reconnecting: try again, the stream says where it stands

    async def _pause(self, deadline: float) -> None:
        if time.monotonic() >= deadline:
            raise StorageError("could not append: the NATS cluster did not answer in time; nothing was acknowledged")
        await asyncio.sleep(0.05)

    async def _existing(self, cid: str, seq: int, event_id: str) -> AppendResult | None:
        """The answer for ``event_id``, written before at ``seq`` (None: another id hashed alike)."""
        event = await self.event_at(cid, seq)
        if event is None:
            raise StorageError(f"event {cid}#{seq} is indexed but not in the stream")
        return _result(event, duplicate=True) if event.id == event_id else None

    # --- reading -----------------------------------------------------------------------------------

    async def event_at(self, cid: str, seq: int) -> Event | None:
        conv = await self._conversation(cid)
        if 0 <= seq - conv.recent_first < len(conv.recent):
            event = decode_event(conv.recent[seq - conv.recent_first])
            if event.seq == seq:
                return event
        stream_seq = conv.place(seq)
        if stream_seq is None:
            return None
        return await self._read(stream_seq)

    async def _read(self, stream_seq: int) -> Event:
        """The event at ``stream_seq``: from any replica (a direct get), else from the leader,
        for a replica that has not caught up with a message the leader acknowledged."""
        assert self._js is not None
        try:
            msg = await self._js.get_msg(self.config.stream, stream_seq, direct=True)
        except nats.js.errors.NotFoundError:
            msg = await self._js.get_msg(self.config.stream, stream_seq)
        return decode_event(msg.data or b"")

    async def get(self, cid: str, event_id: str) -> Event | None:
        """The event ``event_id`` of conversation ``cid``."""
        event_id = event_id.lower()
        seq = (await self._conversation(cid)).ids.get(id_key(event_id))
        event = None if seq is None else await self.event_at(cid, seq)
        return event if event is not None and event.id == event_id else None

    async def tail(self, cid: str, limit: int = 20) -> list[Event]:
        conv = await self._conversation(cid)
        if limit <= 0:
            return []
        first = max(1, conv.last_seq - limit + 1)
        events = [await self.event_at(cid, seq) for seq in range(first, conv.last_seq + 1)]
        return [e for e in events if e is not None]

    async def last_seq(self, cid: str) -> int:
        return (await self._conversation(cid)).last_seq


class _Gone(Exception):
    """The conversation was deleted while an append waited: it starts again on the new one."""


def _result(event: Event, *, duplicate: bool = False) -> AppendResult:
    return AppendResult(id=event.id, seq=event.seq, timestamp=event.timestamp, clock=event.clock, duplicate=duplicate)


async def retrying(call: Callable[[], Awaitable[T]]) -> T:
    """``await call()`` until the cluster answers it: a stream or bucket another daemon has
    just made has no leader yet, an election is on (no responders, no stream response,
    timeouts, 503)."""
    deadline = time.monotonic() + RETRY_S
    while True:
        try:
            return await call()
        except (
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.NoStreamResponseError,
            nats.js.errors.ServiceUnavailableError,
        ):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
