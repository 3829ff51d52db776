"""The daemon's side of the indexer process (:mod:`sidecar.daemon.search_worker`).

Each commit costs the daemon a dictionary update per conversation it touched: what the
worker must read up to is coalesced (``behind CID SEQ``, the highest seq only) and written
to the worker's stdin by one task every 20 ms, so a slow or restarting worker never holds
up the commit path and what waits is bounded by the number of conversations. Deletions and retention go
through the same ordered channel. A worker that dies is started again (it catches up from
what its index records); until it reports ``caught-up``, searches say ``indexing``.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

import anyio
import anyio.abc
from anyio.streams.text import TextReceiveStream

from sidecar.log.events import Event

STOP_S = 5.0  # on stop: how long the worker may take to finish what it was told
# How often what was committed is told to the worker: a wake-up per commit would cost the
# event loop more than the indexing it asks for (see docs/performance.md, section 11).
TELL_EVERY_S = 0.02


class IndexerProcess:
    """Starts, feeds and restarts the indexer's process; its status for the daemon."""

    def __init__(self, data_dir: str, *, enabled: bool = True, log_format: str = "json") -> None:
        self.data_dir = data_dir
        self.enabled = enabled
        self.log_format = log_format
        self.caught_up = threading.Event()
        self.indexed = 0  # events the worker reports it has taken in since it started
        # Commands not yet written, in order; a behind line is kept once per conversation
        # (the highest seq), unless a forget or a drop of it came after.
        self._queue: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._serial = 0
        if not enabled:
            self.caught_up.set()

    # --- from the commit path (the event loop) -------------------------------------------------

    def offer(self, events: list[Event]) -> None:
        if not self.enabled:
            return
        last: dict[str, int] = {}
        for event in events:
            last[event.conversation_id] = max(last.get(event.conversation_id, 0), event.seq)
        for cid, seq in last.items():
            key = ("behind", cid)
            self._queue.pop(key, None)  # the newer one says it all
            self._queue[key] = f"behind {cid} {seq}\n"

    def forget(self, cid: str) -> None:
        self._ordered(f"forget {cid}\n", cid)

    def dropped(self, cid: str, through_seq: int) -> None:
        """Retention dropped ``cid`` up to ``through_seq`` (call it in the event loop)."""
        self._ordered(f"dropped {cid} {through_seq}\n", cid)

    def _ordered(self, line: str, cid: str) -> None:
        if not self.enabled:
            return
        self._serial += 1
        behind = self._queue.pop(("behind", cid), None)
        if behind is not None:  # what was committed before it stays before it
            self._queue[(f"before-{self._serial}", cid)] = behind
        self._queue[(f"cmd-{self._serial}", cid)] = line

    def depth(self) -> int:
        return len(self._queue)

    # --- the worker -----------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """One worker's life (supervised by the daemon: started again when it dies)."""
        if not self.enabled:
            task_status.started()
            await anyio.sleep_forever()
        command = [sys.executable, "-m", "sidecar.daemon.search_worker", "--data-dir", self.data_dir]
        command += ["--log-format", self.log_format]
        # Its own session: a signal to the daemon's process group (Ctrl-C, honcho) is the
        # daemon's to act on; the worker ends when the daemon closes its stdin.
        async with await anyio.open_process(command, stderr=None, start_new_session=True) as proc:
            self.caught_up.clear()
            assert proc.stdin is not None and proc.stdout is not None
            task_status.started()
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._listen, proc.stdout, tg.cancel_scope)
                    await self._feed(proc.stdin)
            finally:
                with anyio.CancelScope(shield=True):
                    await proc.stdin.aclose()  # end of stdin: it finishes and exits
                    with anyio.move_on_after(STOP_S):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()
            raise RuntimeError(f"the search indexer process exited ({proc.returncode})")

    async def _feed(self, stdin: anyio.abc.ByteSendStream) -> None:
        while True:
            await anyio.sleep(TELL_EVERY_S)
            if self._queue:
                lines, self._queue = "".join(self._queue.values()), OrderedDict()
                try:
                    await stdin.send(lines.encode())
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return  # it exited; run() says so, and the new worker catches up from the log

    async def _listen(self, stdout: anyio.abc.ByteReceiveStream, scope: anyio.CancelScope) -> None:
        buffer = ""
        async for chunk in TextReceiveStream(stdout):
            buffer += chunk
            *lines, buffer = buffer.split("\n")
            for line in lines:
                if line == "caught-up":
                    self.caught_up.set()
                elif line.startswith("indexed "):
                    self.indexed = int(line.split()[1])
        scope.cancel()  # its stdout closed: it exited
