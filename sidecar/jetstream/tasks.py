"""The task graph of the ``jetstream`` backend: one KV bucket, ``{stream}_tasks``, one key per task.

The rules, the claim queue and the audit trail are the file backend's
(:class:`~sidecar.tasks.service.TaskService`); only where a change becomes durable differs.
Each daemon keeps the whole graph in memory, fed by a watch on the bucket. A change is
applied to a copy of it, written with a compare-and-set on the revision this daemon last saw
of that task (``create`` for a new one), and shown to readers only once written. When
another daemon wrote first, the write is refused; this daemon then takes in everything the
bucket has (waiting for its watch to reach the bucket's last revision) and applies the
request again on the fresh graph: so ``expected_version``, claims and leases stay exclusive
across daemons, and a conflict or a "no such task" is only answered once this daemon is
known to be up to date.

A task's ``version`` stays the graph's own count of its changes (the same on both backends);
the KV revision is the compare-and-set token behind it.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import anyio
import anyio.abc
import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.errors import ConflictError, NotFoundError, StorageError
from sidecar.jetstream.log import retrying
from sidecar.log.store import DEFAULT_MAX_EVENT_BYTES
from sidecar.tasks.model import Claim, Renew, Task
from sidecar.tasks.service import DEFAULT_MAX_PENDING, AuditSink, Change, Sweep, TaskService

log = structlog.get_logger("sidecar.jetstream")

CATCH_UP_S = 30.0  # the watch bringing what the bucket has, before a request is applied again
ATTEMPTS = 8  # a request applied again at most this often when other daemons keep writing first
# A claim that lost its task to another daemon tries the next for this long, past ATTEMPTS: each
# loss is another daemon's claim (progress), and the winner, never needing to catch up, can
# otherwise win eight times running while its agents claim in a loop.
CLAIM_RETRY_S = 10.0
_decode_task = msgspec.json.Decoder(Task).decode
_encode = msgspec.json.Encoder().encode


def task_key(task_id: str) -> str:
    """A task's key (task ids may hold characters KV keys may not): its UTF-8 bytes in hex."""
    return "t" + task_id.encode().hex()


class SharedTaskService(TaskService):
    """The task graph in a KV bucket, shared by every daemon of the stream."""

    def __init__(
        self,
        nc: NatsClient,
        stream: str,
        *,
        data_dir: str,
        replicas: int,
        audit: AuditSink | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        super().__init__(data_dir, audit=audit, clock=clock, max_pending=max_pending, max_event_bytes=max_event_bytes)
        self.path = f"the KV bucket {stream}_tasks"  # named in errors and logs
        self.nc = nc
        self.bucket = f"{stream}_tasks"
        self.replicas = replicas
        self._kv: KeyValue
        self._watcher: KeyValue.KeyWatcher | None = None
        self._revisions: dict[str, int] = {}  # task id -> the revision this daemon's graph has
        self._seen = 0  # the highest revision the watch has brought
        self._moved = asyncio.Event()  # set (and replaced) whenever the watch brings something
        self._lock = asyncio.Lock()  # this daemon's changes, one at a time
        # The tasks of the change being written, and what the watch brought of them meanwhile.
        self._writing: dict[str, list[KeyValue.Entry]] = {}

    async def start(self) -> None:
        """Make or open the bucket and take in every task, before serving."""
        js = self.nc.jetstream()
        self._kv = await retrying(lambda: js.create_key_value(bucket=self.bucket, history=1, replicas=self.replicas))
        self._watcher = await retrying(self._kv.watchall)
        while True:  # what the bucket holds now, then a None
            entry = await self._watcher.updates(timeout=30.0)
            if entry is None:
                break
            self._take(entry)
        self._index()  # no grace for held leases, as a restart of the file backend gives: the
        # other daemons kept counting while this one was down

    def load(self) -> None:
        """Nothing to read from disk: :meth:`start` takes the graph in from the bucket."""

    # --- the watch ----------------------------------------------------------------------------------

    def _take(self, entry: KeyValue.Entry) -> None:
        """A task as the bucket has it (another daemon's write, or our own coming back)."""
        revision = entry.revision or 0
        self._seen = max(self._seen, revision)
        if entry.operation is not None or not entry.value:
            log.warning("jetstream.task_removed_outside", key=entry.key)  # tasks are never deleted by us
            return
        try:
            task = _decode_task(entry.value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("jetstream.task_unreadable", key=entry.key, error=str(exc))  # never trusted
            return
        if entry.key != task_key(task.id) or self._revisions.get(task.id, 0) >= revision:
            return
        waiting = self._writing.get(task.id)
        if waiting is not None:  # this daemon is writing it: taken in once that write settles
            waiting.append(entry)
            return
        self._revisions[task.id] = revision
        before = self.graph.tasks.get(task.id)
        self.graph.tasks[task.id] = task
        self.queue.changed(self.graph, before, task)
        self._note_queue()
        self._deadlines_moved.set()

    async def _follow(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is not None:
                self._take(entry)
            self._moved.set()
            self._moved = asyncio.Event()

    async def _catch_up(self) -> None:
        """Wait until the watch has brought every write the bucket had when asked."""
        try:
            info = await self.nc.jetstream().stream_info(f"KV_{self.bucket}")
            with anyio.fail_after(CATCH_UP_S):
                while self._seen < info.state.last_seq:
                    await self._moved.wait()
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            raise StorageError(f"could not catch up with {self.path}: {exc or 'no answer'}; nothing changed") from None

    # --- changes --------------------------------------------------------------------------------------

    async def _submit(self, change: Change) -> Task | None:
        async with self._lock:
            deadline = time.monotonic() + CLAIM_RETRY_S
            for attempt in itertools.count():
                if attempt >= ATTEMPTS and not (isinstance(change.what, Claim) and time.monotonic() < deadline):
                    change.error = StorageError(
                        f"other daemons kept changing the task first ({attempt} tries); nothing changed, try again"
                    )
                    change.changes, change.events = [], []
                    break
                if attempt:
                    change = Change(change.what)
                # Applied to a copy (it shares the graph until written): readers see a change
                # only once the bucket has it. The claim queue takes it at once, and is put
                # back if it is not kept.
                work = self.graph.copy()
                change.apply(work, self.queue, self.clock.now_ns(), self.max_pending, self.max_event_bytes)
                if isinstance(change.error, (ConflictError, NotFoundError)) and attempt == 0:
                    await self._catch_up()  # maybe a write of another daemon we have not seen yet
                    continue
                if change.error is not None:
                    break
                made = _made(change)
                self._writing = {task.id: [] for task in made}
                try:
                    written = await self._put(change, made)
                except StorageError as exc:  # the cluster did not take it (or did not say)
                    written, change.error, change.changes, change.events = {}, exc, [], []
                self._settle(made, written)
                if change.error is not None:
                    break
                if len(written) == len(made):
                    break
                if isinstance(change.what, Sweep):  # the expiries another daemon made first are its
                    change.changes = [t for t in change.changes if t.id in written]
                    change.events = [e for e in change.events if e.task_id in written]
                    await self._catch_up()  # so that they are not found due again at once
                    break
                await self._catch_up()
        self._note_queue()
        self.writes += change.writes
        await self._audit([change])
        await self._back_pressure()
        self._deadlines_moved.set()
        if change.error is not None:
            raise change.error
        return change.result

    async def _put(self, change: Change, made: list[Task]) -> dict[str, int]:
        """Each task the change made, with a compare-and-set on the revision this daemon has;
        the revisions of those written (another daemon wrote the others first)."""
        written: dict[str, int] = {}
        for task in made:
            last = self._revisions.get(task.id, 0)
            try:
                if last:
                    written[task.id] = await self._kv.update(task_key(task.id), _encode(task), last=last)
                else:
                    written[task.id] = await self._kv.create(task_key(task.id), _encode(task))
            except nats.js.errors.KeyWrongLastSequenceError:
                if not isinstance(change.what, Sweep):
                    break
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                raise StorageError(f"could not write task {task.id!r} to {self.path}: {exc}") from None
        return written

    def _settle(self, made: list[Task], written: dict[str, int]) -> None:
        """Publish what was written to the graph readers see; put the claim queue back for
        the rest; then take in what the watch brought for these tasks meanwhile."""
        deferred, self._writing = self._writing, {}
        for task in made:
            live = self.graph.tasks.get(task.id)
            revision = written.get(task.id)
            if revision is not None:
                self.graph.tasks[task.id] = task
                self._revisions[task.id] = max(self._revisions.get(task.id, 0), revision)
            elif live is not None:
                self.queue.changed(self.graph, task, live)
            else:
                self.queue.removed(task)
        for entries in deferred.values():
            for entry in entries:
                self._take(entry)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the bucket and expire leases as they run out (every daemon may: the first
        write wins, the others see it)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._follow)
            tg.start_soon(self._expire)
            task_status.started()


def _made(change: Change) -> list[Task]:
    """The tasks a change made, to write: a renewal's too (no event, no version bump, but the
    other daemons must not expire the lease it renewed)."""
    if change.changes:
        return change.changes
    return [change.result] if isinstance(change.what, Renew) and change.result is not None else []
