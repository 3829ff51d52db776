"""How appends reach the single writer: the request a caller queues, and the commit thread.

Callers never touch log files: they queue an :class:`AppendRequest` and are answered when
the batch it joined is durable. :class:`CommitThread` is the one thread that takes
everything queued as a batch and hands it to the writer (flush-when-idle, as EventStoreDB).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from sidecar.errors import SidecarError
from sidecar.log.events import AppendResult, NewEvent


class AppendRequest:
    """One caller's events, and the outcome the writer fills in.

    A thread waits in :meth:`wait` (``blocking=True``). Async callers use
    ``blocking=False`` and set ``on_done``, which runs in the commit thread once the outcome
    is known.
    """

    __slots__ = ("events", "results", "error", "_pending", "on_done")

    def __init__(self, events: list[NewEvent], *, blocking: bool = True) -> None:
        self.events = events
        self.results: list[AppendResult] = []
        self.error: SidecarError | None = None
        self._pending: threading.Lock | None = None
        if blocking:  # held until finished: a raw lock is the cheapest wakeup for a thread
            self._pending = threading.Lock()
            self._pending.acquire()
        self.on_done: Callable[[], None] | None = None

    def finish(self) -> None:
        if self._pending is not None:
            self._pending.release()
        if self.on_done is not None:
            self.on_done()

    def wait(self) -> list[AppendResult]:
        assert self._pending is not None, "made with blocking=False: use on_done"
        self._pending.acquire()
        self._pending.release()
        return self.outcome()

    def outcome(self) -> list[AppendResult]:
        if self.error is not None:
            raise self.error
        return self.results


class CommitThread:
    """The one thread that drives a :class:`LogWriter`: it takes every queued request as a
    batch, commits it, answers, and repeats (flush-when-idle; no timers, no added latency)."""

    _STOP = None

    def __init__(self, commit: Callable[[list[AppendRequest]], None], name: str) -> None:
        self._commit = commit
        self._name = name
        self._queue: queue.SimpleQueue[list[AppendRequest] | None] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def submit(self, reqs: list[AppendRequest]) -> None:
        """Queue requests; they go to disk together (or with others), answered in order."""
        with self._start_lock:
            if self._stopping:
                raise RuntimeError("the event store is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._queue.put(reqs)

    def depth(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            item = get()
            stop = item is None
            batch = [] if item is None else list(item)
            try:
                while True:
                    item = get_nowait()
                    if item is None:
                        stop = True
                    else:
                        batch.extend(item)
            except queue.Empty:
                pass
            if batch:
                self._commit(batch)
            if stop:
                return

    def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        with self._start_lock:
            self._stopping = True
            thread = self._thread
        if thread is not None:
            self._queue.put(self._STOP)
            thread.join()
