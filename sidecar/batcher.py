"""Flush-when-idle: one thread takes everything queued since its last pass as one batch.

No timer and no added latency: a lone item goes at once, and items that arrive while a
batch is being written wait together for the next one (as EventStoreDB and the group
commit of databases do). The event log's commit thread and the task graph's writer are
both one of these.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """The one thread that hands ``work`` every batch, in order. ``work`` must answer each
    item itself (and not raise: what it raises is lost with the thread)."""

    def __init__(self, work: Callable[[list[T]], None], name: str) -> None:
        self._work = work
        self._name = name
        self._queue: queue.SimpleQueue[list[T] | None] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def put(self, items: list[T]) -> None:
        """Queue items; they are handed over together (or with others), in order. From any
        thread; after :meth:`stop`, RuntimeError."""
        with self._start_lock:  # uncontended, it costs less than the put itself
            if self._stopping:
                raise RuntimeError(f"{self._name} is stopped")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._queue.put(items)

    @property
    def stopped(self) -> bool:
        return self._stopping

    def depth(self) -> int:
        """Puts not yet taken into a batch."""
        return self._queue.qsize()

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            item = get()
            stop = item is None
            batch: list[T] = [] if item is None else list(item)
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
                self._work(batch)
            if stop:
                return

    def stop(self) -> None:
        """Finish what is queued, then end the thread; later puts raise RuntimeError."""
        with self._start_lock:
            self._stopping = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()
