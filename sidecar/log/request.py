"""An append on its way to the disk: the events, and the outcome the writer fills in."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import structlog

from sidecar.errors import SidecarError
from sidecar.log.events import AppendResult, Event, NewEvent

log = structlog.get_logger("sidecar.log")


class Sink(Protocol):
    """Where finished requests of an event loop go: one call per batch, from the commit
    thread, for all of that sink's requests in it (so a batch costs one wakeup of the loop,
    not one per request)."""

    def deliver(self, done: list[AppendRequest]) -> None: ...


class AppendRequest:
    """One caller's events and their outcome (``results``, or ``error``).

    Without a ``sink`` a thread waits in :meth:`wait`. With one, the commit thread gives the
    finished request to ``sink.deliver``, which calls ``answer(request)`` in its loop.

    ``placed`` events are copies of events another log placed (a replica's, see
    :mod:`sidecar.jetstream.mirror`): written as they are, each at exactly its own seq.
    """

    __slots__ = ("events", "placed", "results", "error", "sink", "answer", "_pending")

    def __init__(
        self,
        events: list[NewEvent],
        *,
        placed: list[Event] | None = None,
        sink: Sink | None = None,
        answer: Callable[[AppendRequest], None] | None = None,
    ) -> None:
        self.events = events
        self.placed = placed
        self.results: list[AppendResult] = []
        self.error: SidecarError | None = None
        self.sink = sink
        self.answer = answer
        self._pending: threading.Lock | None = None
        if sink is None:  # held until finished: a raw lock is the cheapest wakeup for a thread
            self._pending = threading.Lock()
            self._pending.acquire()

    def give_answer(self) -> None:
        """Call ``answer(self)``, in the sink's loop; a failure in it is logged, and never
        reaches the other requests answered with it."""
        assert self.answer is not None
        try:
            self.answer(self)
        except Exception:
            log.exception("log.answer_failed")

    def release(self) -> None:
        """Wake the thread waiting in :meth:`wait` (the commit thread's last word)."""
        if self._pending is not None:
            self._pending.release()

    def wait(self) -> list[AppendResult]:
        assert self._pending is not None, "made with a sink: its answer is called instead"
        self._pending.acquire()
        self._pending.release()
        return self.outcome()

    def outcome(self) -> list[AppendResult]:
        if self.error is not None:
            raise self.error
        return self.results
