"""The indexer's own process: ``python -m sidecar.daemon.search_worker --data-dir DIR``.

The daemon starts it and tells it, on its stdin, one line per commit and conversation:
``behind CID SEQ`` (events up to SEQ are durable: read them from the log), ``forget CID``
(the conversation was deleted) and ``dropped CID SEQ`` (retention dropped them). It answers
on stdout: ``caught-up`` once the index has caught up with the logs at start, then
``indexed N`` (events taken in so far) after each batch. End of stdin: it finishes what it
was told and exits. It ignores SIGINT and SIGTERM: a Ctrl-C, honcho or systemd signals the
whole group at once, and the daemon, draining, still has lines to tell it; the daemon ends it
by closing its stdin (and a daemon that dies closes it too).

Why a process: SQLite's tokenizing is most of indexing's cost, and in the daemon's process
even a thread of the lowest priority holds the interpreter's lock at moments the event loop
then waits for. Here it has its own, runs at the lowest CPU priority, and reads the events
back from the log, the source of truth, instead of being handed them.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import structlog

from sidecar.daemon.logging import configure
from sidecar.log.store import EventStore
from sidecar.search.index import SearchIndex
from sidecar.search.indexer import Indexer

log = structlog.get_logger("sidecar.search")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sidecar-search-worker", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    args = parser.parse_args(argv)
    configure("info", args.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _idle_priority()
    store = EventStore(args.data_dir, journal=False)  # a reader: it never appends
    indexer = Indexer(store, SearchIndex(store.data_dir))
    out_lock = threading.Lock()

    def say(line: str) -> None:
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    indexer.on_batch = lambda: say(f"indexed {indexer.stats.indexed}")
    indexer.start()

    def report_caught_up() -> None:
        indexer.caught_up.wait()
        say("caught-up")

    threading.Thread(target=report_caught_up, daemon=True).start()
    try:
        for line in sys.stdin:
            _command(indexer, line.split())
    except BrokenPipeError:
        pass
    finally:
        indexer.stop()
        store.close()
    return 0


def _idle_priority() -> None:
    """Run only on CPU time nothing else wants (Linux's SCHED_IDLE, else the lowest nice):
    indexing takes the time appends leave, never theirs. When every core is busy the index
    falls behind, and catches up as soon as there is room."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):
        pass
    try:
        os.nice(19)
    except OSError:
        pass


def _command(indexer: Indexer, words: list[str]) -> None:
    """One line from the daemon; anything else is logged and left alone."""
    try:
        if len(words) == 3 and words[0] == "behind":
            indexer.behind(words[1], int(words[2]))
        elif len(words) == 2 and words[0] == "forget":
            indexer.forget(words[1])
        elif len(words) == 3 and words[0] == "dropped":
            indexer.dropped(words[1], int(words[2]))
        else:
            raise ValueError("unknown command")
    except ValueError as exc:
        log.error("search.bad_command", line=" ".join(words)[:200], error=str(exc))


if __name__ == "__main__":
    sys.exit(main())
