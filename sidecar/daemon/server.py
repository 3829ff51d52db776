"""The daemon: wires the event log, the JSON-RPC registry and the socket together.

Nothing here parses JSON-RPC or touches log files itself: ``sidecar.rpc`` does the protocol,
``sidecar.log`` the storage. This module owns the lifecycle (start-up, signals, systemd,
graceful drain) and the connections.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from sidecar import __version__
from sidecar.api import registry
from sidecar.api.session import Services
from sidecar.api.sys import Health, Stats
from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.context.service import ContextService
from sidecar.controller import Controller, GrantBook, RulePolicy
from sidecar.controller.grants import Grant
from sidecar.daemon import unix
from sidecar.daemon.config import Config, ConfigError, load_config
from sidecar.daemon.connection import Connection
from sidecar.daemon.subscriptions import Hub
from sidecar.daemon.supervisor import supervise
from sidecar.daemon.systemd import Notifier
from sidecar.datadir import claim_backend, ensure_layout
from sidecar.errors import ForbiddenError, OverloadedError, SidecarError
from sidecar.log.aio import Appender, AsyncAppender
from sidecar.log.events import Event
from sidecar.log.groups import Positions
from sidecar.log.keeper import ArchiveKeeper, RetentionPolicy
from sidecar.log.store import EventStore
from sidecar.narrator.health import LLMWatch
from sidecar.narrator.llm import api_key_from_env
from sidecar.narrator.service import Narrator, chat_client
from sidecar.narrator.templates import PromptLibrary
from sidecar.playbooks.library import PlaybookLibrary
from sidecar.rpc.protocol import (
    Limits,
    encode,
    error_response,
)
from sidecar.search.index import SearchIndex
from sidecar.search.process import IndexerProcess
from sidecar.search.service import SearchService
from sidecar.summary.cache import SummaryCache
from sidecar.summary.files import delete_summaries
from sidecar.tasks.history import rebuild_missing
from sidecar.tasks.retention import carry_forward
from sidecar.tasks.service import TaskService
from sidecar.tokens import DEFAULT_COUNTER, LlamaCppTokenizer, TokenCounter

if TYPE_CHECKING:  # the jetstream extra is optional: imported when the backend is chosen
    from sidecar.jetstream.backend import SharedBackend

log = structlog.get_logger("sidecar.daemon")

DRAIN_SECONDS = 4.0
KEEPER_EVERY_S = 60.0  # a retention pass at least this often (and soon after each sealed segment)
GROUPS_FLUSH_S = 0.5  # consumer groups' acks reach the disk at least this often (contract: within 1 s)


_OUT_OF_FDS = encode(error_response(None, OverloadedError.code, "out of file descriptors; try again later"))


class Daemon:
    """The sidecar daemon for one data directory and one socket."""

    def __init__(self, config: Config, *, clock: Clock = SYSTEM_CLOCK, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path  # re-read on SIGHUP
        self.clock = clock
        self.pid = os.getpid()
        self.hub = Hub()
        self.connections: dict[int, Connection] = {}
        self.connections_total = 0
        self._refusing = 0  # refused connections still being told why
        self.requests = 0
        self.stopping = False
        self._started = time.monotonic()
        self._locks: list[int] = []
        self._rate = (time.monotonic(), 0)
        self._inherited = False
        self.debug = config.server.log_level == "debug"
        self.limits = _limits(config)
        self.faults: dict[str, int] = {}  # failures contained, by where they happened
        self._consumers: dict[str, Callable[[list[Event]], None]] = {}  # of every commit
        self.store: EventStore
        self.appender: Appender
        self._forgotten: list[str] = []  # conversations deleted before the indexer was made
        self.services: Services

    def uptime(self) -> float:
        return time.monotonic() - self._started

    def fault(self, where: str) -> None:
        """Count a failure that was contained (the caller logs it, with its traceback)."""
        self.faults[where] = self.faults.get(where, 0) + 1

    def health(self) -> Health:
        llm = self.llm_watch.status()
        return Health(
            status="degraded" if llm.reachable is False else "ok",
            version=__version__,
            uptime_s=round(self.uptime(), 3),
            data_dir=self.store.data_dir,
            socket=self.config.socket_path,
            pid=self.pid,
            llm=llm,
        )

    def stats(self) -> Stats:
        w = self.store.writer_stats
        k = self.keeper.stats
        now = time.monotonic()
        then, events_then = self._rate
        rate = (w.events - events_then) / (now - then) if now > then else 0.0
        self._rate = (now, w.events)
        return Stats(
            uptime_s=round(self.uptime(), 3),
            connections=len(self.connections),
            connections_total=self.connections_total,
            refusing=self._refusing,
            subscriptions=len(self.hub.subscriptions),
            requests=self.requests,
            appends=w.events,
            appends_per_s=round(rate, 1),
            batches=w.batches,
            mean_batch=round(w.events / w.batches, 2) if w.batches else 0.0,
            fsyncs=w.fsyncs,
            checkpoints=w.checkpoints,
            append_queue=self.appender.depth(),
            commit_queue=self.store.commit_queue_depth(),
            task_graph_writes=self.tasks.writes,
            tasks_pending=self.tasks.pending,
            tasks_claims=self.tasks.claims,
            claim_ms_mean=round(1000 * self.tasks.claim_seconds / self.tasks.claims, 3) if self.tasks.claims else 0.0,
            summary_full_reads=self.summaries.full_reads,
            retention_dropped_segments=k.dropped_segments,
            compressed_segments=k.compressed_segments,
            compression_ratio=round(k.plain_bytes / k.compressed_bytes, 2) if k.compressed_bytes else 0.0,
            search_indexed=self.indexer.indexed,
            search_queue=self.indexer.depth(),
            internal_errors=registry.internal_errors,
            faults=self._faults(),
        )

    def _faults(self) -> dict[str, int]:
        """Failures contained so far, by where; the controller counts its own."""
        faults = dict(self.faults)
        if self.controller.faults.count:
            faults["controller"] = faults.get("controller", 0) + self.controller.faults.count
        return faults

    # --- start-up ------------------------------------------------------------------------------

    def _open(self) -> socket.socket:
        cfg = self.config
        data_dir = ensure_layout(cfg.data_dir)
        path = cfg.socket_path
        inherited = unix.inherited_listener()
        self._inherited = inherited is not None
        if inherited is None:
            unix.check_path_length(path)
            unix.prepare_directory(os.path.dirname(path))
            self._locks.append(unix.acquire_lock(path + ".lock", "socket"))
        self._locks.append(unix.acquire_lock(os.path.join(data_dir, "sidecar.lock"), "data directory"))
        backend = "file" if cfg.log.backend == "file" else f"jetstream {cfg.jetstream.stream}"
        refusal = claim_backend(data_dir, backend)
        if refusal is not None:
            raise ConfigError(refusal)
        return inherited if inherited is not None else unix.bind_listener(path)

    def _load_store(self) -> EventStore:
        lc = self.config.log
        store = EventStore(
            self.config.data_dir,
            rotate_bytes=lc.rotate_bytes,
            max_event_bytes=lc.max_event_bytes,
            journal=lc.journal,
            journal_bytes=lc.journal_bytes,
            clock=self.clock,
        )
        started = time.monotonic()
        last = [started]

        def progress(done: int, total: int) -> None:
            if time.monotonic() - last[0] > 1.0 or done == total:
                last[0] = time.monotonic()
                log.info("daemon.loading", conversations_done=done, conversations=total)

        store.max_read_bytes = _read_bytes(self.config)
        store.load(progress)
        for cid, reason in store.damaged().items():
            log.error("daemon.conversation_damaged", conversation_id=cid, reason=reason)
        log.info("daemon.loaded", seconds=round(time.monotonic() - started, 3), data_dir=store.data_dir)
        return store

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._accepting = anyio.CancelScope()  # cancelled by SIGTERM/SIGINT
        self._all_closed = anyio.Event()
        notifier = Notifier()
        listener = self._open()
        listener.setblocking(False)
        try:
            self.store = await anyio.to_thread.run_sync(self._load_store)
            writer = AsyncAppender(self.store, on_commit=self._fan_out, on_forget=self._forget)
            shared = None if self.config.log.backend == "file" else await self._jetstream(writer)
            self.appender = writer if shared is None else shared.opened
            self.counter = await anyio.to_thread.run_sync(self._token_counter)
            self.prompts = PromptLibrary(os.path.join(self.store.data_dir, "prompts"))
            self.playbooks = await anyio.to_thread.run_sync(
                PlaybookLibrary, os.path.join(self.store.data_dir, "playbooks")
            )
            service: dict[str, Any] = {
                "audit": self.appender.append_valid,
                "clock": self.clock,
                "max_pending": self.config.tasks.max_pending,
                "max_event_bytes": self.config.log.max_event_bytes,
            }
            if shared is None:
                self.groups = Positions(self.store.data_dir)
                await anyio.to_thread.run_sync(self.groups.load)
                self.tasks = TaskService(self.store.data_dir, **service)
                await anyio.to_thread.run_sync(rebuild_missing, self.store, self.tasks.path)  # the log knows them
                await anyio.to_thread.run_sync(self.tasks.load)
            else:
                self.tasks = await shared.tasks(self.store.data_dir, **service)
            self.search_index = SearchIndex(self.store.data_dir)  # read here; written by the indexer process
            self.indexer = IndexerProcess(
                self.store.data_dir, enabled=self.config.search.enabled, log_format=self.config.server.log_format
            )
            self.keeper = ArchiveKeeper(
                self.store.paths,
                _retention(self.config),
                clock=self.clock,
                before_drop=functools.partial(carry_forward, self.store),
                after_drop=lambda cid, seq: anyio.from_thread.run_sync(self.indexer.dropped, cid, seq),
            )

            self.summaries = SummaryCache(self.store)
            for cid in self._forgotten:  # deleted through another daemon while this one was away
                self.indexer.forget(cid)
            self.search = SearchService(self.store, self.search_index, self.indexer, enabled=self.config.search.enabled)
            self.context = ContextService(self.tasks, self.summaries, self.counter, self.search)

            cc, lc = self.config.controller, self.config.llm
            self.chat = chat_client(lc, self.clock)
            self.llm_watch = LLMWatch(self.chat, lc.health_every_s)
            grants = GrantBook(self.clock, cc.grant_ttl_s)
            self.narrator = Narrator(
                llm=lc,
                chat=self.chat,
                append=self.appender.append_valid,
                grants=grants,
                context=self.context.build,
                last_reason=self._last_reason,
                last_playbook=self._last_playbook,
                counter=self.counter,
                prompts=self.prompts,
                notify=self.hub.notify,
                fault=self.fault,
            )
            self.controller = Controller(
                RulePolicy(min_gap_s=cc.min_gap_s, idle_timeout_s=cc.idle_timeout_s),
                grants,
                self.clock,
                emit=self.appender.append_valid,
                summary_ref=self._summary_ref,
                advisor=self.narrator.advise if self.chat is not None else None,
                on_grant=self._on_grant if self.chat is not None and lc.narrator else None,
                playbooks=self.playbooks,
            )

            if shared is not None:
                leases = await shared.control(self.controller)
                log.info("daemon.controller_leases", daemon=leases.name, lease_s=leases.lease_s)
                self.groups = await shared.groups(self.store.data_dir)

            self.services = Services(
                store=self.store,
                appender=self.appender,
                tasks=self.tasks,
                summaries=self.summaries,
                context=self.context,
                counter=self.counter,
                controller=self.controller,
                narrator=self.narrator,
                playbooks=self.playbooks,
                groups=self.groups,
                search=self.search,
                health=self.health,
                stats=self.stats,
            )

            now = self.clock.monotonic()
            for task in self.tasks.graph.list_active():  # open work survives a restart
                if task.conversation_id is not None:
                    self.controller.policy.seed_task(task.conversation_id, task.id, task.owner, now)

            self._consumers = {  # from now on, every commit reaches them (see _fan_out)
                "hub": self.hub.publish,
                "summaries": self.summaries.publish,
                "controller": self.controller.observe,
                "search": self.indexer.offer,
            }
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await tg.start(supervise, "tasks", self.tasks.run, self.fault)
                await tg.start(supervise, "controller", self.controller.run, self.fault)
                for name, run in shared.background().items() if shared is not None else ():
                    await tg.start(supervise, name, _started(run), self.fault)
                await tg.start(supervise, "prompts", self.prompts.watch, self.fault)
                await tg.start(supervise, "playbooks", self.playbooks.watch, self.fault)
                await tg.start(supervise, "llm-watch", self.llm_watch.run, self.fault)
                await tg.start(supervise, "groups", self._flush_groups, self.fault)
                await tg.start(supervise, "archive", self._keep_archive, self.fault)
                await tg.start(supervise, "search-indexer", self.indexer.run, self.fault)
                await tg.start(self._signals)  # handlers in place before READY=1
                if notifier.watchdog_interval:
                    tg.start_soon(self._watchdog, notifier)
                async with anyio.create_task_group() as conns:
                    with self._accepting:
                        notifier.send(f"READY=1\nMAINPID={self.pid}")
                        log.info("daemon.ready", socket=self.config.socket_path, pid=self.pid)
                        task_status.started()
                        await self._accept(listener, conns)
                    # Stopping: no new connections; readers stop; in-flight requests finish,
                    # for DRAIN_SECONDS at most.
                    self.stopping = True
                    notifier.send("STOPPING=1")
                    for conn in list(self.connections.values()):
                        conn.stop_reading()
                    with anyio.move_on_after(DRAIN_SECONDS):
                        if self.connections:
                            await self._all_closed.wait()
                    conns.cancel_scope.cancel()
                await (self.appender.aclose() if shared is None else shared.close())
                tg.cancel_scope.cancel()
        finally:
            listener.close()
            if self.connections:
                log.warning("daemon.connections_left", count=len(self.connections))
            chat = getattr(self, "chat", None)
            if chat is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await chat.aclose()  # its pooled connections to the LLM server
            groups = getattr(self, "groups", None)
            if groups is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await anyio.to_thread.run_sync(groups.flush)  # the last acks, on disk
                    except OSError as exc:
                        log.error("daemon.groups_flush_failed", error=str(exc))
            index = getattr(self, "search_index", None)
            if index is not None:
                index.close()
            if hasattr(self, "store"):
                await anyio.to_thread.run_sync(self.store.close)
            self._cleanup()
            log.info("daemon.stopped")

    async def _jetstream(self, writer: AsyncAppender) -> SharedBackend:
        """The ``jetstream`` backend: appends to the shared stream, this data directory a copy
        of it (read everything from; fed to subscriptions, the controller and search)."""
        try:
            from sidecar.jetstream.backend import CannotStart, SharedBackend
        except ImportError as exc:
            raise ConfigError(
                f"[log] backend = 'jetstream' needs the jetstream extra (pip install 'sidecar[jetstream]'): {exc}"
            ) from None
        jc = self.config.jetstream
        shared = SharedBackend(jc, clock=self.clock, max_event_bytes=self.config.log.max_event_bytes)
        known = self.store.last_seqs()  # loaded already: nothing read again
        log.info("daemon.jetstream_connecting", servers=jc.servers, stream=jc.stream, replicas=jc.replicas)
        try:
            await shared.open(writer, known, self.fault, self.store.data_dir)
        except CannotStart as exc:
            raise ConfigError(str(exc)) from None
        log.info("daemon.jetstream_ready", stream=jc.stream, conversations=len(known))
        return shared

    async def _flush_groups(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Consumer groups' acks on disk within a second, batched: never an fsync per ack."""
        task_status.started()
        while True:
            await anyio.sleep(GROUPS_FLUSH_S)
            try:
                await self.groups.save()
            except (OSError, SidecarError) as exc:  # the disk or cluster refuses: kept, tried again next time
                log.error("daemon.groups_flush_failed", error=str(exc))

    async def _keep_archive(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Retention and compression in a thread of their own, never on the append path: a
        pass soon after each sealed segment, and every minute (segments age)."""
        loop = asyncio.get_running_loop()
        sealed = asyncio.Event()
        self.store.on_rotate(lambda: loop.call_soon_threadsafe(sealed.set))
        task_status.started()
        try:
            while True:
                if self.keeper.policy.active:
                    await anyio.to_thread.run_sync(self.keeper.run_once)
                with anyio.move_on_after(KEEPER_EVERY_S):
                    await sealed.wait()
                sealed.clear()
        finally:
            self.store.on_rotate(None)

    def _forget(self, cid: str) -> None:
        """A conversation was deleted: what the daemon holds of it goes too (in commit order,
        before any event of a new conversation of that id). On jetstream, deleted through any
        daemon: its summary files here go too (the daemon that was asked deleted its own)."""
        self.hub.forget(cid)
        if self.config.log.backend == "jetstream":
            try:
                delete_summaries(cid, data_dir=self.store.data_dir)  # a few files: no thread for it
            except SidecarError as exc:
                log.error("daemon.summaries_not_deleted", conversation_id=cid, error=exc.message)
        if not hasattr(self, "indexer"):  # the jetstream copy catching up at start: told once made
            self._forgotten.append(cid)
            return
        self.summaries.forget(cid)
        self.indexer.forget(cid)

    def _fan_out(self, events: list[Event]) -> None:
        """Every durable batch, in the event loop, in commit order, to each consumer on its
        own: one failing skips none."""
        for name, consume in self._consumers.items():
            try:
                consume(events)
            except Exception:
                self.fault(name)
                log.exception("daemon.fan_out_failed", consumer=name)

    # --- the LLM: the built-in narrator (sidecar.narrator) -------------------------------------

    def _on_grant(self, grant: Grant) -> None:
        self._tg.start_soon(self.narrator.narrate, grant)

    def _last_reason(self, cid: str) -> str | None:
        """Why the controller last decided what it did about ``cid``, if it has."""
        last = self.controller.status(cid).last_decision
        return last.reason if last else None

    def _last_playbook(self, cid: str) -> tuple[str, str] | None:
        """The title and text of the playbook the controller's last decision carried."""
        playbook_id = self.controller.last_playbook(cid)
        playbook = self.playbooks.get(playbook_id) if playbook_id is not None else None
        return (playbook.title, playbook.text) if playbook is not None else None

    async def _summary_ref(self, cid: str) -> str | None:
        """The summary a decision was made on: cheap, from the incremental state."""
        state = await self.summaries.state(cid)
        return state.render(keep_recent=5, counter=self.counter).summary_ref

    def _token_counter(self) -> TokenCounter:
        """Exact counts when the configured LLM server has llama.cpp's /tokenize; the estimate
        otherwise. Nothing is asked here: the tokenizer finds out on first use, in a worker
        thread, so start-up never waits on the LLM server."""
        from sidecar.tokens import TOKENIZE_TIMEOUT_S

        llm = self.config.llm
        if not llm.url:
            return DEFAULT_COUNTER
        try:
            exact = LlamaCppTokenizer(
                llm.url,
                timeout_s=min(llm.timeout_s, TOKENIZE_TIMEOUT_S),
                api_key=api_key_from_env(llm.api_key_env),
                clock=self.clock,
            )
        except ValueError as exc:
            log.warning("daemon.tokenizer", kind="byte estimate", reason=str(exc))
            return DEFAULT_COUNTER
        log.info("daemon.tokenizer", kind="llama.cpp /tokenize", checked="on first use", url=exact.shown)
        return exact

    async def _accept(self, listener: socket.socket, conns: TaskGroup) -> None:
        spare = unix.SpareDescriptor()
        try:
            while True:
                await anyio.wait_readable(listener)
                try:
                    raw, _ = listener.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE):
                        log.warning("daemon.out_of_descriptors", connections=len(self.connections))
                        if spare.refuse_one(listener, _OUT_OF_FDS):
                            continue
                    else:  # ENOBUFS, ENOMEM, EPROTO...: passing, or at least not ours to fix
                        self.fault("accept")
                        log.warning("daemon.accept_failed", error=str(exc))
                    await anyio.sleep(0.05)  # let some close
                    continue
                try:
                    await self._admit(raw, conns)
                except OSError as exc:  # the peer left before we could look at it
                    raw.close()
                    log.info("daemon.admit_failed", error=str(exc))
        finally:
            spare.close()

    async def _admit(self, raw: socket.socket, conns: TaskGroup) -> None:
        """Serve a new connection, or tell it why not (not allowed, or too many already)."""
        limit, lingering = unix.descriptor_budget(self.config.server.max_connections)
        peer = unix.peer_credentials(raw)
        refusal = None
        if not self._allowed(peer):
            log.warning("daemon.peer_refused", pid=peer[0], uid=peer[1], gid=peer[2])
            refusal = error_response(None, ForbiddenError.code, f"uid {peer[1]} may not use this socket")
        elif len(self.connections) >= limit:
            log.warning("daemon.too_many_connections", limit=limit)
            refusal = error_response(None, OverloadedError.code, "too many connections; try again later")
        raw.setblocking(False)
        if refusal is not None:
            if self._refusing < lingering:
                conns.start_soon(self._refuse, raw, encode(refusal))
            else:  # a flood: no descriptor may linger
                unix.hang_up(raw, encode(refusal))
            return
        self.connections_total += 1
        conn = Connection(self, raw, peer, self.connections_total)
        self.connections[conn.number] = conn
        conns.start_soon(self._serve, conn)

    async def _refuse(self, raw: socket.socket, reply: bytes) -> None:
        """Answer with the reason, then hang up once the peer has had its say (at most 1 s).

        Closing at once could discard the peer's request unread, which makes the kernel
        reset the connection before our reply can be read."""
        self._refusing += 1
        stream = await anyio.abc.SocketStream.from_socket(raw)
        try:
            await stream.send(reply)
            await stream.send_eof()
            with anyio.move_on_after(1.0):
                while await stream.receive():
                    pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass
        finally:
            try:
                await stream.aclose()
            finally:
                self._refusing -= 1  # its descriptor is closed: another refusal may linger

    async def _serve(self, conn: Connection) -> None:
        try:
            await conn.serve()
        except Exception:  # contained: this client is dropped, everyone else is served
            self.fault("connection")
            log.exception("daemon.connection_failed", connection=conn.number)
        finally:
            self.connections.pop(conn.number, None)
            if self.stopping and not self.connections:
                self._all_closed.set()

    def _allowed(self, peer: tuple[int, int, int]) -> bool:
        _, uid, gid = peer
        server = self.config.server
        return uid in (0, os.getuid()) or uid in server.allow_uids or gid in server.allow_gids

    async def _signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """SIGTERM/SIGINT drain and stop, SIGHUP reloads. Reports started once the handlers
        are installed, so a supervisor's SIGTERM right after READY=1 is a graceful stop."""
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self._reload()
                    continue
                log.info("daemon.stopping", signal=signal.Signals(signum).name)
                self._accepting.cancel()
                return

    def _reload(self) -> None:
        try:
            fresh = load_config(self.config_path, data_dir=self.config.data_dir, socket=self.config.socket)
        except ConfigError as exc:
            log.error("daemon.reload_failed", error=str(exc))
            return
        self.config.server = fresh.server
        self.limits = _limits(fresh)
        self.store.max_read_bytes = _read_bytes(fresh)
        self.config.log.retain_days = fresh.log.retain_days
        self.config.log.retain_bytes = fresh.log.retain_bytes
        self.config.log.compress_archive = fresh.log.compress_archive
        self.keeper.policy = _retention(fresh)
        self.config.controller = fresh.controller
        policy = self.controller.policy
        policy.min_gap_s, policy.idle_timeout_s = fresh.controller.min_gap_s, fresh.controller.idle_timeout_s
        self.controller.grants.ttl_s = fresh.controller.grant_ttl_s
        log.info("daemon.reloaded", config=self.config_path)

    async def _watchdog(self, notifier: Notifier) -> None:
        assert notifier.watchdog_interval is not None
        while True:
            notifier.send("WATCHDOG=1")
            await anyio.sleep(notifier.watchdog_interval)

    def _cleanup(self) -> None:
        path = self.config.socket_path
        if not self._inherited:  # a socket systemd passed us is systemd's to remove
            try:
                os.unlink(path)
            except OSError:
                pass
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()


def _started(run: Callable[[], Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """``run`` as :func:`supervise` starts work: started at once."""

    async def work(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await run()

    return work


def _limits(config: Config) -> Limits:
    server = config.server
    return Limits(max_depth=server.max_depth, max_batch=server.max_batch)


def _retention(config: Config) -> RetentionPolicy:
    lc = config.log  # on jetstream retain_* are 0 (load_config): the copy keeps what the stream keeps
    return RetentionPolicy(retain_days=lc.retain_days, retain_bytes=lc.retain_bytes, compress=lc.compress_archive)


def _read_bytes(config: Config) -> int:
    """What one read may gather: a reply's cap, less room for the reply around the events."""
    return config.server.max_reply_bytes - 1024


def use_uvloop(choice: str) -> bool:
    """Whether to run on uvloop: asked for, or ``auto`` and installed. Asked for and missing
    is an error that says so, not a quiet fall back to the slower loop."""
    if choice == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "[server] event_loop = 'uvloop', but uvloop is not installed (pip install uvloop)"
            ) from None
        return False
    return True


def serve(config: Config, config_path: str | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the exit status."""
    daemon = Daemon(config, config_path=config_path)
    try:
        anyio.run(daemon.run, backend_options={"use_uvloop": use_uvloop(config.server.event_loop)})
    except (unix.SocketSetupError, OSError) as exc:
        log.error("daemon.cannot_start", error=str(exc))
        return 1
    except SidecarError as exc:  # e.g. a task graph file that does not validate
        log.error("daemon.cannot_start", error=exc.message)
        return 1
    except ConfigError as exc:
        log.error("daemon.cannot_start", error=str(exc))
        return 1
    return 0
