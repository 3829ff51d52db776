"""Durable consumer groups: where each group has acknowledged each conversation up to.

A consumer that must not miss events subscribes with a ``group`` and acks as it goes; the
daemon keeps the position, so after either side restarts the subscription resumes just
after it (as Redis consumer groups and EventStoreDB persistent subscriptions do).

Positions live in memory and are written to ``data/groups.json`` by :meth:`Positions.flush`,
which the daemon calls every half second when something changed: an ack costs no fsync on
the hot path, and is on disk within a second. The file is in the data directory, so it is
not trusted: one that cannot be read is kept aside in ``archive/`` and the groups start over
(their consumers get events again from the start: repeated, never lost).

Pure but for the file: no clock, no event loop.
"""

from __future__ import annotations

import os
import threading
import time

import anyio
import msgspec
import structlog

from sidecar.datadir import read_regular
from sidecar.errors import OverloadedError
from sidecar.fs import atomic_write
from sidecar.log.segments import DECODE_ERRORS

log = structlog.get_logger("sidecar.log")

GROUPS_FILE = "groups.json"
MAX_GROUPS_BYTES = 64 << 20
MAX_POSITIONS = 100_000  # (group, conversation) pairs kept: a client cannot make us hold more
Key = tuple[str, str]  # group, conversation


class GroupPosition(msgspec.Struct, kw_only=True):
    group: str
    conversation_id: str
    acked_seq: int


class GroupsFile(msgspec.Struct, kw_only=True):
    groups: list[GroupPosition] = []


class Positions:
    """The groups' acknowledged seqs, and which subscription holds each (group, conversation)."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, GROUPS_FILE)
        self.archive_dir = os.path.join(data_dir, "archive")
        self.acked: dict[Key, int] = {}
        self.holders: dict[Key, object] = {}  # the live subscriber of each
        self._dirty = False
        self._lock = threading.Lock()  # acks in the loop, flushes in a thread
        self.flushes = 0

    def load(self) -> None:
        try:
            raw = read_regular(self.path, MAX_GROUPS_BYTES)
            doc = msgspec.json.decode(raw, type=GroupsFile)
        except FileNotFoundError:
            return
        except (OSError, *DECODE_ERRORS) as exc:
            kept = self._keep_aside()
            log.error("groups.file_refused", path=self.path, error=str(exc), kept_in=kept, then="groups start over")
            return
        self.acked = {(p.group, p.conversation_id): p.acked_seq for p in doc.groups if p.acked_seq >= 0}

    def _keep_aside(self) -> str:
        kept = os.path.join(self.archive_dir, f"{GROUPS_FILE}.{time.time_ns()}.invalid")
        try:
            os.replace(self.path, kept)
        except OSError:
            return "(could not be moved)"
        return kept

    # --- positions -----------------------------------------------------------------------------

    def get(self, group: str, cid: str) -> int | None:
        return self.acked.get((group, cid))

    def ack(self, group: str, cid: str, seq: int) -> int:
        """Move the position forward to ``seq`` (never back); the position after."""
        with self._lock:
            key = (group, cid)
            old = self.acked.get(key)
            if old is None and len(self.acked) >= MAX_POSITIONS:
                raise OverloadedError(
                    f"{len(self.acked)} group positions are kept already, the most there may be; reuse a group name",
                    {"max_positions": MAX_POSITIONS},
                )
            if old is None or seq > old:
                self.acked[key] = seq
                self._dirty = True
            return self.acked[key]

    def forget(self, cid: str) -> int:
        """Drop every group's position in ``cid`` (a deleted conversation); how many. The
        caller flushes, so that they are gone from disk too."""
        with self._lock:
            keys = [key for key in self.acked if key[1] == cid]
            for key in keys:
                del self.acked[key]
            self._dirty = self._dirty or bool(keys)
            return len(keys)

    async def save(self) -> None:
        """:meth:`flush`, from the event loop (the daemon's, every half second and at the end)."""
        await anyio.to_thread.run_sync(self.flush)

    async def reserve(self, group: str, cid: str) -> None:
        """Before a group's subscription: here, the daemon's own holders say who is live (see
        :meth:`hold`). Several daemons sharing positions (jetstream) check each other too."""

    def unreserve(self, group: str, cid: str) -> None:
        """A reserved subscription did not start, or its holder let go."""

    def flush(self) -> bool:
        """Write the positions if they changed (call from a thread); whether it wrote."""
        with self._lock:
            if not self._dirty:
                return False
            groups = [GroupPosition(group=g, conversation_id=c, acked_seq=s) for (g, c), s in self.acked.items()]
            doc = GroupsFile(groups=groups)
            self._dirty = False
        try:
            atomic_write(self.path, msgspec.json.encode(doc) + b"\n")
        except OSError:
            with self._lock:
                self._dirty = True  # try again next time
            raise
        self.flushes += 1
        return True

    # --- the one live subscriber of each -----------------------------------------------------------

    def hold(self, group: str, cid: str, holder: object) -> object | None:
        """Make ``holder`` the live subscriber of (group, conversation), unless another one is:
        then that one."""
        current = self.holders.get((group, cid))
        if current is not None and current is not holder:
            return current
        self.holders[(group, cid)] = holder
        return None

    def let_go(self, group: str, cid: str, holder: object) -> None:
        if self.holders.get((group, cid)) is holder:
            del self.holders[(group, cid)]
