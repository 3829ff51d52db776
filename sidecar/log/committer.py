"""The commit thread: the one owner of the writer, which takes every queued append as one
batch (group commit), writes it, and answers each request.

Callers never touch log files: they queue :class:`~sidecar.log.request.AppendRequest`s
with :meth:`Committer.append` and are answered when the batch they joined is durable.
"""

from __future__ import annotations

import threading

import structlog

from sidecar.batcher import Batcher
from sidecar.errors import SidecarError
from sidecar.log.request import AppendRequest, Sink
from sidecar.log.writer import LogWriter

log = structlog.get_logger("sidecar.log")


class Committer:
    """Appends go to ``writer`` from one thread, a batch at a time, under ``lock`` (which
    the store also takes for the writer's other work: recovery, loading, checkpoints)."""

    def __init__(self, writer: LogWriter, lock: threading.Lock, name: str) -> None:
        self._writer = writer
        self._lock = lock
        self._batcher: Batcher[AppendRequest] = Batcher(self._commit, name)

    def append(self, reqs: list[AppendRequest]) -> None:
        """Queue requests; they go to disk together (or with others), answered in order."""
        try:
            self._batcher.put(reqs)
        except RuntimeError:  # stopped: say so in the store's words, as callers always heard
            raise RuntimeError("the event store is closed") from None

    def depth(self) -> int:
        return self._batcher.depth()

    def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        self._batcher.stop()

    def _commit(self, batch: list[AppendRequest]) -> None:
        try:
            with self._lock:
                self._writer.append(batch)
        except Exception as exc:  # a bug, not a disk error: still answer every caller
            log.exception("log.commit_crashed")
            for req in batch:
                if req.error is None and not req.results:
                    req.error = SidecarError(f"internal error while writing: {exc!r}")
        _answer(batch)


def _answer(batch: list[AppendRequest]) -> None:
    """Wake each waiting thread, and hand each sink its requests in one call, in order."""
    sinks: dict[int, tuple[Sink, list[AppendRequest]]] = {}
    for req in batch:
        if req.sink is None:
            req.release()
            continue
        entry = sinks.get(id(req.sink))
        if entry is None:
            sinks[id(req.sink)] = (req.sink, [req])
        else:
            entry[1].append(req)
    for sink, reqs in sinks.values():
        try:
            sink.deliver(reqs)
        except Exception:  # its event loop is gone, say: the others are still answered
            log.exception("log.deliver_failed")
