"""The agent runtime: claim tasks from the daemon, run a handler on each, report how it ended.

::

    def fix(task: Task, ctx: TaskContext) -> dict[str, Any]:
        ctx.progress({"msg": "reading the failing test"})
        return {"patch": "..."}

    Agent("coder-1", fix, types=["code"]).run()  # until SIGTERM or Ctrl-C

What it does, and why it does it that way:

- **One event loop, one connection.** Everything the runtime says to the daemon goes over one
  :class:`~sidecar_client.AsyncClient` (it multiplexes calls), made again with back-off
  (50 ms doubling to 2 s) whenever it is lost: the agent waits for a daemon that is not up yet
  or restarts, and carries on. A task whose lease ran out meanwhile is simply lost to it.
- **Handlers.** A coroutine function runs in the loop and gets an :class:`AsyncTaskContext`
  (``await ctx.progress(...)``). A plain function runs in a thread of its own and gets a
  :class:`TaskContext` whose calls block while the loop makes them (through a blocking portal).
  The thread is a daemon thread, started per task rather than taken from a pool, so a handler
  that never returns cannot keep the process alive once the agent has stopped and given its
  task back. What a handler returns (a mapping, or None for ``{}``) becomes the task's
  ``outputs`` with status ``done``; what it raises fails the task with ``outputs.error`` (its
  message) and ``outputs.error_type`` (the exception's class name).
- **Claiming is polling.** ``tasks.claim``; when nothing is ready, ask again after 50 ms,
  doubling to 1 s (jittered), and back to 50 ms after each claim. An idle agent costs the
  daemon at most about one claim a second whatever else happens there, and a new task waits
  at most about a second. (A subscription to task events would wake every idle agent on every
  task change in the daemon: a load that grows with agents times events.)
- **Leases.** While a task is held (its handler running, then its result being delivered) the
  runtime renews the lease every ``lease_s / 3`` with ``tasks.renew``. The handler need not do
  anything for that; :meth:`TaskContext.heartbeat` is for telling the controller's idle
  watchdog that the work is moving.
- **A lost lease** (a renewal answered -32001 or -32002: the lease ran out while the daemon
  was out of reach, or someone cancelled or took the task) ends the agent's claim on it: it
  is logged, the task is never finished by this agent, and the handler's result is dropped. A
  coroutine handler is cancelled; a thread cannot be, so a plain handler runs on (its context
  calls raise :class:`LeaseLost`, so one that reports progress stops at its next report) and
  keeps its slot until it returns. ``ctx.held`` says whether the task is still this agent's.
- **Delivering a result** is fenced twice: ``tasks.update`` carries the agent's id (the
  daemon refuses a status change from anyone but the holder) and the version the claim gave
  (renewals do not change it), so a late result never lands on a task that was given to
  someone else or went back to pending in the meantime. When the version moved for another
  reason (someone changed the priority), the task is read again and, if still held, the
  update is made at the new version. An answer lost with the connection is settled the same
  way: by reading the task.
- **Stopping** (:meth:`Agent.stop`, SIGTERM or Ctrl-C under :meth:`Agent.run`, or cancelling
  :meth:`Agent.run_async`): no more claims; running handlers are cancelled (coroutines) or
  abandoned (threads); results already computed get up to 3 s to be delivered; every task
  still held is given back with ``tasks.release`` (pending again at once, the attempt
  refunded), within another 3 s; then the call returns. A second signal skips the waiting.
  Tasks the daemon could not be told about (it was down) go back to pending when their
  leases run out.
- **Clocks.** So that ``log.compare`` orders what the agent writes after everything it had
  read (contract section 14), the runtime keeps, per conversation, the clock it knows: the
  merge of the clocks of every event it has read there (in the results of ``log.*`` calls made
  through ``ctx.call``, in the answers to its own appends, and given to ``ctx.observe`` when
  read some other way: another client, a subscription). Each ``agent.progress`` carries that
  clock with the agent's own counter one up, and so does each event of the agent's own that a
  handler appends through ``ctx.call`` without a ``clock`` or ``caused_by`` of its own (with
  ``caused_by``, the daemon merges the causes' clocks instead). The daemon records a claim and
  a result under the agent's id too, so the runtime counts those. When the daemon refuses a
  clock (-32001 naming the agent's previous clock: the runtime restarted, or something else
  wrote as the agent), the runtime takes in what the refusal says and sends the append again,
  at most ``MAX_CLOCK_REFUSALS`` times. A runtime's appends in one conversation go one at a
  time, so its own counters never race each other.

An agent's id names one runtime: two runtimes must not share one, since the daemon tells
holders apart by it alone.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import random
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError as FutureCancelled
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.from_thread import BlockingPortal

from sidecar_client.aio import AsyncClient
from sidecar_client.errors import ConnectionLost, DaemonUnavailable, RpcError
from sidecar_client.methods import AppendResult, Task

__all__ = ["Agent", "AsyncHandler", "AsyncTaskContext", "Handler", "LeaseLost", "SyncHandler", "TaskContext"]

log = logging.getLogger("sidecar_client.agent")

CONFLICT, NOT_FOUND, INVALID_PARAMS = -32001, -32002, -32602
SYSTEM = "system"  # where a task without a conversation reports its progress
POLL_MIN_S, POLL_MAX_S = 0.05, 1.0  # nothing to claim: ask again after this, doubling
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.05, 2.0  # no daemon: try again after this, doubling
RETRY_MIN_S, RETRY_MAX_S = 0.1, 2.0  # a result refused for a passing reason (-32005, -32006)
DRAIN_S = 3.0  # on stop: how long results already computed may take to be delivered
RELEASE_S = 3.0  # on stop: how long giving the held tasks back may take
MAX_LOSSES = 3  # the same call losing the connection this often in a row: it is the call (too big)
MAX_CLOCK_REFUSALS = 3  # an append whose clock the daemon refused: sent again at most this often
APPEND_LOCKS = 64  # appends in one conversation go one at a time: under one of this many locks
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

Level = Literal["milestone", "decision", "action", "state", "detail"]
Outputs = Mapping[str, Any]
SyncHandler = Callable[[Task, "TaskContext"], "Outputs | None"]
AsyncHandler = Callable[[Task, "AsyncTaskContext"], Awaitable["Outputs | None"]]
Handler = SyncHandler | AsyncHandler
State = Literal["running", "finishing", "finished", "lost", "released"]
Clock = dict[str, int]


class LeaseLost(Exception):
    """Raised by a context's calls once the task is no longer this agent's: its lease was lost,
    or the agent stopped and gave it back. Whatever the handler returns now is dropped."""


# --- the connection ----------------------------------------------------------------------------


class _Link:
    """The agent's one connection, made again (with back-off) whenever it is lost.

    :meth:`call` waits for a connection as long as it takes; a call that loses the connection
    raises :class:`ConnectionLost` (its answer is unknown) and the next one reconnects."""

    def __init__(self, socket_path: str | None, agent_id: str) -> None:
        self.socket_path = socket_path
        self.agent_id = agent_id
        self._client: AsyncClient | None = None
        self._lock = anyio.Lock()
        self._lost_once = False

    async def client(self) -> AsyncClient:
        if self._client is not None:
            return self._client
        async with self._lock:
            delay = RECONNECT_MIN_S
            tries = 0
            while self._client is None:
                try:
                    self._client = await AsyncClient.connect(self.socket_path)
                except DaemonUnavailable as exc:
                    if tries == 0:
                        log.warning("agent %s: %s; trying again", self.agent_id, exc)
                    tries += 1
                    await anyio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, RECONNECT_MAX_S)
            if self._lost_once or tries:
                log.info("agent %s: connected to %s", self.agent_id, self._client.socket_path)
            return self._client

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        client = await self.client()
        try:
            return await client.call(method, params)
        except ConnectionError:
            await self._drop(client)
            raise

    async def _drop(self, client: AsyncClient, *, lost: bool = True) -> None:
        if self._client is client:
            self._client = None
            self._lost_once = True
            if lost:
                log.warning("agent %s: lost the connection to %s; reconnecting", self.agent_id, client.socket_path)
        with anyio.CancelScope(shield=True):
            try:
                await client.close()
            except Exception:  # noqa: BLE001 - it is gone either way
                pass

    async def aclose(self) -> None:
        if self._client is not None:
            await self._drop(self._client, lost=False)


# --- clocks ----------------------------------------------------------------------------------------


def _is_event(value: object) -> TypeGuard[Mapping[str, Any]]:
    """An event as the daemon gives it: a mapping with ``conversation_id`` and ``clock``."""
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("conversation_id"), str)
        and isinstance(value.get("clock"), Mapping)
    )


def _events_in(result: object) -> Iterator[Mapping[str, Any]]:
    """The events in the result of a ``log.*`` call: the result itself (``log.get``), its
    ``events`` (``log.tail``, ``log.query``...), and ``event``, ``upstream`` and ``downstream``
    (``log.causality``)."""
    if not isinstance(result, Mapping):
        return
    if _is_event(result):
        yield result
        return
    for key in ("event", "events", "upstream", "downstream"):
        value = result.get(key)
        for item in value if isinstance(value, list) else [value]:
            if _is_event(item):
                yield item


class _Clocks:
    """The clock the runtime knows, per conversation: the merge of the clock of every event it
    has read there, and its own entry (how far its own counter has gone). Used from the loop
    and from handler threads (``observe``): every change is made under a lock."""

    def __init__(self, writer: str) -> None:
        self.writer = writer
        self._known: dict[str, Clock] = {}
        self._lock = threading.Lock()

    def known(self, conversation_id: str) -> Clock:
        with self._lock:
            return dict(self._known.get(conversation_id, {}))

    def merge(self, conversation_id: str, clock: Mapping[Any, Any]) -> None:
        with self._lock:
            known = self._known.setdefault(conversation_id, {})
            for writer, n in clock.items():
                if isinstance(writer, str) and type(n) is int and n > known.get(writer, 0):
                    known[writer] = n

    def observe(self, event: object) -> bool:
        """Take in the clock of an event read (whether it was one)."""
        if not _is_event(event):
            return False
        self.merge(event["conversation_id"], event["clock"])
        return True

    def count_own(self, conversation_id: str) -> None:
        """The daemon wrote an event under our id that we do not read (a claim's ``task.claimed``,
        a result's ``task.updated``): our next own counter is one further on. (Counting one too
        many is harmless, a counter may skip; one too few costs a refused append.)"""
        with self._lock:
            known = self._known.setdefault(conversation_id, {})
            known[self.writer] = known.get(self.writer, 0) + 1

    def refused(self, data: object, conversation_ids: Collection[str]) -> bool:
        """A -32001 about a clock we sent (in one of ``conversation_ids``): take in the writer's
        previous clock and counter it names, so the next try is past them. False when it was
        some other conflict (``expected_seq``...), or about a clock that was not ours."""
        if not isinstance(data, Mapping) or data.get("writer") != self.writer:
            return False
        conversation_id, previous, floor = data.get("conversation_id"), data.get("previous"), data.get("floor")
        if conversation_id not in conversation_ids or not isinstance(previous, Mapping) or type(floor) is not int:
            return False
        assert isinstance(conversation_id, str)
        self.merge(conversation_id, previous)
        with self._lock:
            known = self._known.setdefault(conversation_id, {})
            own = previous.get(self.writer, 0)
            known[self.writer] = max(known.get(self.writer, 0), floor, own if type(own) is int else 0)
        return True


# --- what the runtime knows of a task it holds ---------------------------------------------------


class _Held:
    """A claimed task, from its claim until it is finished, released or lost."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.id: str = task["id"]
        self.version: int = task.get("version", 1)
        self.conversation_id: str = task.get("conversation_id") or SYSTEM
        self.state: State = "running"  # read by handler threads: one attribute, atomic
        self.scope = anyio.CancelScope()  # around the handler: cancelled on a stop (and a lost lease)

    @property
    def held(self) -> bool:
        return self.state in ("running", "finishing")


@dataclass(frozen=True)
class _Outcome:
    status: Literal["done", "failed"]
    outputs: dict[str, Any]


def _failure(exc: BaseException) -> _Outcome:
    return _Outcome("failed", {"error": str(exc) or type(exc).__name__, "error_type": type(exc).__name__})


def _outcome(result: object) -> _Outcome:
    """What a handler returned, as the task's outputs: a mapping, or None for ``{}``."""
    if result is None:
        return _Outcome("done", {})
    if isinstance(result, Mapping):
        return _Outcome("done", dict(result))
    if inspect.isawaitable(result):
        error = "the handler returned an awaitable: declare it with async def"
    else:
        error = f"the handler returned {type(result).__name__}, not a mapping (or None)"
    return _Outcome("failed", {"error": error, "error_type": "TypeError"})


# --- what a handler gets -------------------------------------------------------------------------


class _ContextBase:
    def __init__(self, agent: Agent, held: _Held) -> None:
        self._agent = agent
        self._held = held

    @property
    def task(self) -> Task:
        """The task as claimed (status running, this agent's lease)."""
        return self._held.task

    @property
    def task_id(self) -> str:
        return self._held.id

    @property
    def agent_id(self) -> str:
        return self._agent.agent_id

    @property
    def conversation_id(self) -> str:
        """Where progress goes: the task's conversation, or ``system`` when it has none."""
        return self._held.conversation_id

    @property
    def held(self) -> bool:
        """Whether the task is still this agent's (False once its lease was lost, or the agent
        stopped and gave it back): a long handler may check it and give up early."""
        return self._held.held


class AsyncTaskContext(_ContextBase):
    """What a coroutine handler gets besides its task."""

    async def progress(self, data: Mapping[str, Any] | str, *, level: Level | None = None) -> AppendResult:
        """Append an ``agent.progress`` event (visibility ``status``, with this agent's and the
        task's ids) to the task's conversation. A string stands for ``{"msg": text}``. Raises
        :class:`LeaseLost` once the task is no longer this agent's."""
        return await self._agent._progress(self._held, data, level)

    async def heartbeat(self) -> None:
        """``controller.heartbeat``: the work is moving (the idle watchdog stays quiet). The
        lease is renewed without it."""
        await self._agent._heartbeat(self._held)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Any other call to the daemon (read a dependency's outputs, create a subtask...) over
        the agent's connection. The clocks of the events a ``log.*`` call answers with are taken
        in, and an event of this agent's own appended without ``clock`` (nor ``caused_by``) is
        given one (see the module's docstring)."""
        return await self._agent._call(method, params or {})

    def observe(self, event: Mapping[str, Any]) -> None:
        """Take in the clock of an event the handler read other than through :meth:`call` (a
        subscription, another client): what this agent writes next is ordered after it."""
        self._agent._clocks.observe(event)


class TaskContext(_ContextBase):
    """What a plain (threaded) handler gets: the same as :class:`AsyncTaskContext`, blocking."""

    def __init__(self, agent: Agent, held: _Held, portal: BlockingPortal) -> None:
        super().__init__(agent, held)
        self._portal = portal

    def progress(self, data: Mapping[str, Any] | str, *, level: Level | None = None) -> AppendResult:
        """As :meth:`AsyncTaskContext.progress`, blocking."""
        result: AppendResult = self._in_loop(self._agent._progress, self._held, data, level)
        return result

    def heartbeat(self) -> None:
        """As :meth:`AsyncTaskContext.heartbeat`, blocking."""
        self._in_loop(self._agent._heartbeat, self._held)

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """As :meth:`AsyncTaskContext.call`, blocking."""
        return self._in_loop(self._agent._call, method, params or {})

    def observe(self, event: Mapping[str, Any]) -> None:
        """As :meth:`AsyncTaskContext.observe` (it does not block)."""
        self._agent._clocks.observe(event)

    def _in_loop(self, func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        if not self._held.held:
            raise LeaseLost(f"task {self.task_id} is no longer held by {self.agent_id}")
        try:
            return self._portal.call(func, *args)
        except (RuntimeError, FutureCancelled) as exc:  # the portal stopped: the agent stopped
            if self._held.held:
                raise
            raise LeaseLost(f"task {self.task_id} is no longer held by {self.agent_id}") from exc


# --- the runtime ---------------------------------------------------------------------------------


def _is_coroutine_function(fn: object) -> bool:
    """An ``async def`` function, a partial of one, or an object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(fn):
        return True
    return callable(fn) and not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__)


class Agent:
    """Claims tasks (of ``types``, or any) as ``agent_id`` and runs ``handler`` on each, up to
    ``concurrency`` at a time, under leases of ``lease_s`` seconds (1 to 3600) that it renews
    while it works. See the module's docstring for the whole behaviour.

    ``counts`` tallies the tasks this runtime has ``done``, ``failed``, ``lost`` and
    ``released``.
    """

    def __init__(
        self,
        agent_id: str,
        handler: Handler,
        *,
        types: Sequence[str] | None = None,
        socket_path: str | None = None,
        lease_s: int = 30,
        concurrency: int = 1,
    ) -> None:
        if not isinstance(agent_id, str) or not agent_id:
            raise ValueError("agent_id must be a non-empty string")
        if isinstance(types, str) or (types is not None and not all(isinstance(t, str) and t for t in types)):
            raise ValueError("types must be a list of non-empty strings (or None for any type)")
        if isinstance(lease_s, bool) or not isinstance(lease_s, int) or not 1 <= lease_s <= 3600:
            raise ValueError("lease_s must be a whole number of seconds from 1 to 3600")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.agent_id = agent_id
        self.handler = handler
        self.types = list(types) if types is not None else None
        self.socket_path = socket_path
        self.lease_s = lease_s
        self.concurrency = concurrency
        self.counts = {"done": 0, "failed": 0, "lost": 0, "released": 0}
        self._clocks = _Clocks(agent_id)  # kept from run to run: what was read stays read
        self._is_async = _is_coroutine_function(handler)
        self._stop_requested = False  # set from any thread, or a signal handler
        self._running = False
        self._fatal: RpcError | None = None
        self._stopping: anyio.Event | None = None  # set: stop (None: not running)
        self._portal: BlockingPortal | None = None
        self._loop_thread: int | None = None
        # Made per run by _reset, in the loop (anyio's primitives need one):
        self._link: _Link
        self._held: dict[str, _Held]
        self._slots: anyio.Semaphore
        self._workers: int
        self._no_workers: anyio.Event
        self._claim_scope: anyio.CancelScope
        self._hurry: set[anyio.CancelScope]
        self._hurried: bool
        self._orphans_possible: bool
        self._append_locks: list[anyio.Lock]

    # --- running and stopping -------------------------------------------------------------------

    def run(self) -> None:
        """Run until :meth:`stop`, SIGTERM or Ctrl-C (SIGINT), then give the held tasks back and
        return. In the main thread the two signals are caught for the run (a second one skips
        the waiting) and the previous handlers put back after."""
        main = threading.current_thread() is threading.main_thread()
        previous: dict[signal.Signals, Any] = {}
        if main:
            for sig in STOP_SIGNALS:
                previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._early_signal)  # until the loop's own handler takes over
        try:
            anyio.run(functools.partial(self.run_async, handle_signals=main))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _early_signal(self, signum: int, frame: object) -> None:
        self._stop_requested = True

    def stop(self) -> None:
        """Stop claiming, give the held tasks back, and make :meth:`run` / :meth:`run_async`
        return. Safe from any thread, from a handler, and before the agent runs (it then
        returns at once)."""
        self._stop_requested = True
        stopping, portal = self._stopping, self._portal
        if stopping is None:
            return
        if threading.get_ident() == self._loop_thread:
            stopping.set()
        elif portal is not None:
            try:
                portal.call(stopping.set)
            except (RuntimeError, FutureCancelled):
                pass  # the portal is closing: the run is ending anyway

    async def run_async(self, *, handle_signals: bool = False) -> None:
        """Run until :meth:`stop` or cancellation, then give the held tasks back and return.
        ``handle_signals``: also stop on SIGTERM and SIGINT (main thread only; :meth:`run`
        sets it). An error that retrying cannot mend (the daemon does not know
        ``tasks.claim``, or refuses the agent's parameters) is raised once the agent stopped."""
        if self._running:
            raise RuntimeError(f"agent {self.agent_id} is running already")
        self._running = True
        self._reset()
        log.info(
            "agent %s: started (types %s, concurrency %d, lease %d s)",
            self.agent_id,
            self.types or "any",
            self.concurrency,
            self.lease_s,
        )
        try:
            async with BlockingPortal() as portal, anyio.create_task_group() as outer:
                self._portal = portal
                try:
                    if handle_signals:
                        await outer.start(self._watch_signals)
                    if self._stop_requested:
                        self._stop_now()
                    await self._serve()
                finally:
                    outer.cancel_scope.cancel()
                    with anyio.CancelScope(shield=True):
                        await portal.stop(cancel_remaining=True)  # calls from abandoned threads
        finally:
            self._portal = self._stopping = None
            self._loop_thread = None
            with anyio.CancelScope(shield=True):
                await self._link.aclose()
            self._running = self._stop_requested = False
            log.info("agent %s: stopped (%s)", self.agent_id, ", ".join(f"{k} {v}" for k, v in self.counts.items()))
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            raise fatal

    def _reset(self) -> None:
        self._link = _Link(self.socket_path, self.agent_id)
        self._stopping = anyio.Event()
        self._loop_thread = threading.get_ident()
        self._held = {}
        self._slots = anyio.Semaphore(self.concurrency)
        self._workers = 0
        self._no_workers = anyio.Event()
        self._no_workers.set()
        self._claim_scope = anyio.CancelScope()
        self._hurry = set()
        self._hurried = False
        self._orphans_possible = False
        self._fatal = None
        self._append_locks = [anyio.Lock() for _ in range(APPEND_LOCKS)]

    def _stop_now(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def _watch_signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        try:
            with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
                task_status.started()
                await self._on_signals(signals)
        finally:
            for sig, handler in previous.items():  # the receiver leaves the defaults behind
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    async def _on_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not self._stopping_set():
                log.info("agent %s: %s: stopping", self.agent_id, name)
                self._stop_requested = True
                self._stop_now()
            else:
                log.warning("agent %s: %s again: not waiting any longer", self.agent_id, name)
                self._hurried = True
                for scope in list(self._hurry):
                    scope.cancel()

    def _stopping_set(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    async def _serve(self) -> None:
        assert self._stopping is not None
        try:
            async with anyio.create_task_group() as work:
                work.start_soon(self._claim_loop, work)
                await self._stopping.wait()
                self._claim_scope.cancel()
                for held in self._held.values():
                    if held.state != "finishing":
                        held.scope.cancel()  # results already computed may still be delivered
                await self._hurrying(DRAIN_S, self._no_workers.wait)
                work.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._release_all()

    async def _hurrying(self, seconds: float, wait: Callable[[], Awaitable[Any]]) -> bool:
        """``await wait()`` for at most ``seconds``, or until a second signal: whether it ended."""
        if self._hurried:
            return False
        with anyio.move_on_after(seconds) as scope:
            self._hurry.add(scope)
            try:
                await wait()
            finally:
                self._hurry.discard(scope)
        return not scope.cancel_called

    async def _release_all(self) -> None:
        """Give back every task still held (pending again at once, the attempt refunded)."""
        left = [h for h in self._held.values() if h.held]
        for held in left:
            held.state = "released"  # its handler's context calls raise LeaseLost from now on

        async def release_each() -> None:
            async with anyio.create_task_group() as tg:
                for held in left:
                    tg.start_soon(self._release, held)

        async def release_all() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(release_each)
                if self._orphans_possible:
                    tg.start_soon(self._release_orphans)

        if (left or self._orphans_possible) and not await self._hurrying(RELEASE_S, release_all):
            log.warning(
                "agent %s: could not give back %s in time: they return to pending when their leases run out",
                self.agent_id,
                ", ".join(h.id for h in left if h.id in self._held),
            )

    async def _release(self, held: _Held) -> None:
        losses = 0
        while True:
            try:
                await self._link.call("tasks.release", {"id": held.id, "agent_id": self.agent_id})
                self.counts["released"] += 1
                log.info("agent %s: gave back task %s", self.agent_id, held.id)
            except ConnectionLost:
                losses += 1
                if losses < MAX_LOSSES:
                    continue
            except RpcError as exc:  # not ours any more (its result landed after all, or its lease ran out)
                log.info("agent %s: task %s was not ours to give back: %s", self.agent_id, held.id, exc.message)
            self._held.pop(held.id, None)
            return

    # --- claiming --------------------------------------------------------------------------------

    async def _claim_loop(self, work: TaskGroup) -> None:
        delay = POLL_MIN_S
        with self._claim_scope:
            while True:
                await self._slots.acquire()
                task: Task | None = None
                try:
                    task = await self._claim()
                finally:
                    if task is None:
                        self._slots.release()
                if task is None:
                    await anyio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, POLL_MAX_S)
                    continue
                delay = POLL_MIN_S
                held = _Held(task)
                self._held[held.id] = held
                self._workers += 1
                self._no_workers = anyio.Event()
                work.start_soon(self._work, held, name=f"agent {self.agent_id}: task {held.id}")

    async def _claim(self) -> Task | None:
        if self._orphans_possible:
            await self._release_orphans()
        params: dict[str, Any] = {"agent_id": self.agent_id, "lease_s": self.lease_s}
        if self.types is not None:
            params["types"] = self.types
        try:
            claimed: Task | None = (await self._link.call("tasks.claim", params))["task"]
        except ConnectionLost:
            self._orphans_possible = True  # it may have been granted, its answer lost
            return None
        except anyio.get_cancelled_exc_class():
            self._orphans_possible = True  # a stop cut the claim short: same
            raise
        except RpcError as exc:
            if exc.code in (-32601, INVALID_PARAMS):  # retrying cannot mend these
                log.error("agent %s: tasks.claim refused: %s", self.agent_id, exc)
                self._fatal = exc
                self._stop_now()
            else:
                log.warning("agent %s: tasks.claim failed: %s", self.agent_id, exc)
            return None
        if claimed is not None:
            log.info("agent %s: claimed task %s (%s)", self.agent_id, claimed["id"], claimed["type"])
            self._clocks.count_own(claimed.get("conversation_id") or SYSTEM)  # its task.claimed
        return claimed

    async def _release_orphans(self) -> None:
        """A claim whose answer was lost may have been granted: give back any running task
        held in this agent's name that it does not know of (it never started on it)."""
        try:
            running: list[Task] = (await self._link.call("tasks.list_active", {"statuses": ["running"]}))["tasks"]
            for task in running:
                if task.get("lease_owner") == self.agent_id and task["id"] not in self._held:
                    try:
                        await self._link.call("tasks.release", {"id": task["id"], "agent_id": self.agent_id})
                        log.info("agent %s: gave back task %s, claimed as a call was cut", self.agent_id, task["id"])
                    except RpcError:
                        pass
        except (ConnectionLost, RpcError):
            return  # next time
        self._orphans_possible = False

    # --- working on one task ---------------------------------------------------------------------

    async def _work(self, held: _Held) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_lease, held)
                outcome = await self._run_handler(held)
                if outcome is not None and held.state == "running":
                    held.state = "finishing"
                    await self._finish(held, outcome)
                tg.cancel_scope.cancel()
        finally:
            if held.state in ("finished", "lost"):
                self._held.pop(held.id, None)
            self._slots.release()
            self._workers -= 1
            if self._workers == 0:
                self._no_workers.set()

    async def _run_handler(self, held: _Held) -> _Outcome | None:
        """The handler's outcome, or None when it was cut short (a stop, a lost lease)."""
        with held.scope:
            try:
                if self._is_async:
                    handler: AsyncHandler = self.handler  # type: ignore[assignment]
                    result = await handler(held.task, AsyncTaskContext(self, held))
                else:
                    return await self._in_thread(held)
            except LeaseLost as exc:
                return None if not held.held else _failure(exc)
            except Exception as exc:  # noqa: BLE001 - any failure of the handler fails the task
                log.warning("agent %s: task %s failed: %r", self.agent_id, held.id, exc, exc_info=exc)
                return _failure(exc)
            return _outcome(result)
        return None  # cancelled

    async def _in_thread(self, held: _Held) -> _Outcome | None:
        portal = self._portal
        assert portal is not None
        done = anyio.Event()
        box: list[_Outcome | None] = []
        handler: SyncHandler = self.handler  # type: ignore[assignment]
        ctx = TaskContext(self, held, portal)

        def target() -> None:
            try:
                box.append(_outcome(handler(held.task, ctx)))
            except LeaseLost:
                box.append(None)
            except BaseException as exc:  # noqa: BLE001 - reported as the task's failure
                log.warning("agent %s: task %s failed: %r", self.agent_id, held.id, exc, exc_info=exc)
                box.append(_failure(exc))
            try:
                portal.call(done.set)
            except Exception:  # noqa: BLE001 - the agent stopped: nobody waits for this result
                pass

        name = f"agent {self.agent_id}: task {held.id}"
        threading.Thread(target=target, name=name, daemon=True).start()
        await done.wait()
        outcome = box[0]
        if outcome is None and held.held:  # LeaseLost raised while the task was still held
            return _failure(LeaseLost("the handler raised LeaseLost"))
        return outcome

    async def _keep_lease(self, held: _Held) -> None:
        """Renew every ``lease_s / 3`` while the task is held; a -32001 or -32002 means it is lost."""
        wait = self.lease_s / 3
        while True:
            await anyio.sleep(wait)
            wait = self.lease_s / 3
            if not held.held:
                return
            try:
                await self._link.call(
                    "tasks.renew", {"id": held.id, "agent_id": self.agent_id, "lease_s": self.lease_s}
                )
            except ConnectionLost:
                wait = 0  # at once, once reconnected (a restarted daemon grants every lease a fresh lease_s)
            except RpcError as exc:
                if exc.code not in (CONFLICT, NOT_FOUND):
                    log.warning("agent %s: renewing task %s failed: %s", self.agent_id, held.id, exc)
                elif held.state == "finishing":
                    return  # maybe our own result just landed: the delivery finds out
                else:
                    self._lose(held, exc.message)
                    return

    def _lose(self, held: _Held, why: str) -> None:
        if held.state != "running":
            return
        held.state = "lost"
        self.counts["lost"] += 1
        log.warning("agent %s: lost task %s (%s); its handler's result will be dropped", self.agent_id, held.id, why)
        if self._is_async:
            held.scope.cancel()

    async def _finish(self, held: _Held, outcome: _Outcome) -> None:
        """Deliver the outcome: ``tasks.update`` as the holder, at the claim's version."""
        status, outputs = outcome.status, outcome.outputs
        version, losses, refused, delay = held.version, 0, 0, RETRY_MIN_S
        while True:
            params = {"id": held.id, "agent_id": self.agent_id, "expected_version": version}
            try:
                await self._link.call("tasks.update", {**params, "status": status, "outputs": outputs})
            except (TypeError, ValueError) as exc:  # not JSON: it never left
                status, outputs = "failed", _refused(outputs, exc)
                continue
            except ConnectionLost:
                losses += 1
                if losses >= MAX_LOSSES:  # the daemon hangs up on this very update: too big
                    status, outputs = "failed", _refused(outputs, "the daemon closed the connection on it")
                    losses = 0
                settled, version = await self._settle(held, version, status, outputs)
                if settled is not None:
                    return self._settled(held, settled, status)
                continue
            except RpcError as exc:
                if exc.code in (CONFLICT, NOT_FOUND):
                    settled, version = await self._settle(held, version, status, outputs, conflict=True)
                    if settled is not None:
                        return self._settled(held, settled, status)
                elif exc.code == INVALID_PARAMS and refused < 2:
                    refused += 1
                    status, outputs = "failed", _refused(outputs, exc.message)
                elif exc.code == INVALID_PARAMS:  # not even a short error: leave it to its lease
                    log.error("agent %s: task %s: the daemon refuses every outcome: %s", self.agent_id, held.id, exc)
                    return self._settled(held, "lost", status)
                else:
                    log.warning("agent %s: delivering task %s failed: %s; retrying", self.agent_id, held.id, exc)
                    await anyio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                continue
            return self._settled(held, "delivered", status)

    async def _settle(
        self, held: _Held, version: int, status: str, outputs: dict[str, Any], conflict: bool = False
    ) -> tuple[str | None, int]:
        """After an update that conflicted, or whose answer was lost: read the task. Still ours:
        (None, its version) to try again; our update landed: ("delivered", _); else ("lost", _)."""
        while True:
            try:
                task: Task = await self._link.call("tasks.get", {"id": held.id})
                break
            except ConnectionLost:
                continue
            except RpcError as exc:
                if exc.code == NOT_FOUND:
                    return "lost", version
                await anyio.sleep(RETRY_MIN_S)
        if task.get("status") == "running" and task.get("lease_owner") == self.agent_id:
            if conflict and task.get("version") == version:
                return "lost", version  # refused at our own version while ours: do not loop on it
            return None, task.get("version", version)
        landed = (task.get("version"), task.get("status"), task.get("owner")) == (version + 1, status, self.agent_id)
        return ("delivered" if landed and task.get("outputs") == _as_json(outputs) else "lost"), version

    def _settled(self, held: _Held, how: str, status: Literal["done", "failed"]) -> None:
        if how == "delivered":
            self._clocks.count_own(held.conversation_id)  # its task.updated
            held.state = "finished"
            self.counts[status] += 1
            log.info("agent %s: task %s %s", self.agent_id, held.id, status)
        else:
            held.state = "lost"
            self.counts["lost"] += 1
            log.warning("agent %s: task %s was no longer ours: its result was dropped", self.agent_id, held.id)

    # --- what contexts call ----------------------------------------------------------------------

    async def _progress(self, held: _Held, data: Mapping[str, Any] | str, level: Level | None) -> AppendResult:
        event: dict[str, Any] = {
            "id": str(uuid.uuid4()),  # a retry after a lost answer is not written twice
            "conversation_id": held.conversation_id,
            "type": "agent.progress",
            "visibility": "status",
            "agent_id": self.agent_id,
            "task_id": held.id,
            "data": {"msg": data} if isinstance(data, str) else dict(data),
        }
        if level is not None:
            event["level"] = level
        result: AppendResult = await self._append("log.append", event, held)
        return result

    async def _call(self, method: str, params: dict[str, Any]) -> Any:
        """A handler's call (``ctx.call``): appends get clocks, reads teach them."""
        if method in ("log.append", "log.append_many"):
            return await self._append(method, params, None)
        result = await self._link.call(method, params)
        if method.startswith("log."):
            for event in _events_in(result):
                self._clocks.observe(event)
        return result

    async def _append(self, method: str, params: dict[str, Any], held: _Held | None) -> Any:
        """``log.append`` (``params`` is the event) or ``log.append_many`` (``params["events"]``),
        each event of this agent's own without ``clock`` or ``caused_by`` given the clock the
        runtime knows in its conversation, its own counter one up. For a task's progress
        (``held``): only while the task is held, and sent again after a lost connection (the
        event's id keeps it from being written twice)."""
        many = method == "log.append_many"
        given = params.get("events") if many else [params]
        events: list[Any] = list(given) if isinstance(given, list) else []
        stamped = self._stamped(events)
        refusals = losses = 0
        async with AsyncExitStack() as stack:
            for n in sorted({hash(c) % APPEND_LOCKS for c in stamped}):  # always in one order
                await stack.enter_async_context(self._append_locks[n])
            while True:
                if held is not None and not held.held:
                    raise LeaseLost(f"task {held.id} is no longer held by {self.agent_id}")
                sent = self._stamp(events, stamped) if stamped else events
                call_params = ({**params, "events": sent} if many else sent[0]) if stamped else params
                try:
                    result = await self._link.call(method, call_params)
                except ConnectionLost:
                    losses += 1
                    if held is None or losses >= MAX_LOSSES:
                        raise
                    continue
                except RpcError as exc:
                    again = exc.code == CONFLICT and refusals < MAX_CLOCK_REFUSALS
                    if again and self._clocks.refused(exc.data, stamped):
                        refusals += 1
                        log.info("agent %s: %s; sending it again with that clock taken in", self.agent_id, exc.message)
                        continue
                    raise
                results = result if many and isinstance(result, list) else [result]
                for event, answer in zip(events, results):
                    if isinstance(event, Mapping) and isinstance(answer, Mapping):
                        clock, conversation_id = answer.get("clock"), event.get("conversation_id")
                        if isinstance(clock, Mapping) and isinstance(conversation_id, str):
                            self._clocks.merge(conversation_id, clock)
                return result

    def _stamped(self, events: list[Any]) -> set[str]:
        """The conversations whose events of ours we give clocks: those where every event of
        ours has neither ``clock`` nor ``caused_by`` (a clock sent is stored as sent: the daemon
        would not merge the causes' clocks into it, so those it computes itself)."""
        ours: dict[str, bool] = {}
        for event in events:
            if not isinstance(event, Mapping) or event.get("agent_id") != self.agent_id:
                continue
            conversation_id = event.get("conversation_id")
            if isinstance(conversation_id, str):
                bare = event.get("clock") is None and not event.get("caused_by")
                ours[conversation_id] = ours.get(conversation_id, True) and bare
        return {c for c, bare in ours.items() if bare}

    def _stamp(self, events: list[Any], stamped: set[str]) -> list[Any]:
        """``events``, ours in ``stamped`` conversations with their clocks, one after another."""
        drafts = {c: self._clocks.known(c) for c in stamped}
        out: list[Any] = []
        for event in events:
            if isinstance(event, Mapping) and event.get("agent_id") == self.agent_id:
                conversation_id = event.get("conversation_id")
                draft = drafts.get(conversation_id) if isinstance(conversation_id, str) else None
                if draft is not None:
                    draft[self.agent_id] = draft.get(self.agent_id, 0) + 1
                    event = {**event, "clock": dict(draft)}
            out.append(event)
        return out

    async def _heartbeat(self, held: _Held) -> None:
        if not held.held:
            raise LeaseLost(f"task {held.id} is no longer held by {self.agent_id}")
        params = {"conversation_id": held.conversation_id, "agent_id": self.agent_id, "task_id": held.id}
        try:
            await self._link.call("controller.heartbeat", params)
        except ConnectionLost:
            pass  # the lease is renewed apart from this, once the daemon is back


def _refused(outputs: Mapping[str, Any], why: object) -> dict[str, Any]:
    """The failure that stands in for outputs the daemon would not take."""
    return {"error": f"the handler's outputs could not be stored: {why}"[:2000], "error_type": "OutputsRefused"}


def _as_json(value: Any) -> Any:
    """``value`` as it comes back from the daemon (tuples become lists...)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return value
