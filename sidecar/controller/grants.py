"""Speak grants: single use, short lived, bound to one conversation, one at a time."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sidecar.clock import Clock
from sidecar.errors import GateClosedError
from sidecar.log.timestamps import format_timestamp


@dataclass
class Grant:
    grant_id: str
    conversation_id: str
    reason: str
    issued_at: float  # monotonic
    expires_mono: float
    expires_at: str  # RFC 3339, for people and clients
    used: bool = False


class GrantBook:
    """Issues and redeems grants; all time comes from the injected clock."""

    def __init__(self, clock: Clock, ttl_s: float) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self._by_id: dict[str, Grant] = {}
        self._current: dict[str, Grant] = {}  # conversation -> its newest grant

    def outstanding(self, cid: str) -> Grant | None:
        """The conversation's grant if it is still good (unused and unexpired)."""
        grant = self._current.get(cid)
        if grant is None or grant.used or self.clock.monotonic() >= grant.expires_mono:
            return None
        return grant

    def issue(self, cid: str, reason: str) -> Grant | None:
        """A new grant, or ``None`` while one is outstanding (never two at once)."""
        if self.outstanding(cid) is not None:
            return None
        now = self.clock.monotonic()
        grant = Grant(
            grant_id=str(uuid.uuid4()),
            conversation_id=cid,
            reason=reason,
            issued_at=now,
            expires_mono=now + self.ttl_s,
            expires_at=format_timestamp(self.clock.now_ns() + int(self.ttl_s * 1e9)),
        )
        self._by_id[grant.grant_id] = grant
        self._current[cid] = grant
        if len(self._by_id) > 10_000:  # forget long-dead grants
            for old in [g for g in self._by_id.values() if g.used or now >= g.expires_mono][:5_000]:
                self._by_id.pop(old.grant_id, None)
        return grant

    def redeem(self, cid: str, grant_id: str) -> Grant:
        """Use a grant once; -32004 says why not (unknown, used, expired, other conversation)."""
        grant = self._by_id.get(grant_id)
        reason = None
        if grant is None:
            reason = "unknown"
        elif grant.conversation_id != cid:
            reason = "other conversation"
        elif grant.used:
            reason = "used"
        elif self.clock.monotonic() >= grant.expires_mono:
            reason = "expired"
        if reason is not None:
            raise GateClosedError(
                f"no valid speak grant for {cid!r}: grant is {reason}",
                {"reason": reason, "grant_id": grant_id, "conversation_id": cid},
            )
        assert grant is not None
        grant.used = True
        return grant

    def unredeem(self, grant: Grant) -> None:
        """Give a grant back when what it allowed could not be written."""
        grant.used = False
