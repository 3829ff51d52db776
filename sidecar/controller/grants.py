"""Speak grants: single use, short lived, bound to one conversation, one at a time."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass

from sidecar.clock import Clock
from sidecar.errors import GateClosedError
from sidecar.log.events import Event
from sidecar.log.timestamps import format_timestamp, timestamp_ns


@dataclass
class Grant:
    grant_id: str
    conversation_id: str
    reason: str
    expires_mono: float
    expires_at: str  # RFC 3339, for people and clients
    used: bool = False


class GrantBook:
    """Issues and redeems grants; all time comes from the injected clock."""

    def __init__(self, clock: Clock, ttl_s: float, max_kept: int = 10_000) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self.max_kept = max_kept  # expired grants kept beyond this are forgotten early
        self._by_id: OrderedDict[str, Grant] = OrderedDict()  # in the order issued
        self._current: dict[str, Grant] = {}  # conversation -> its newest grant, while kept

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
            expires_mono=now + self.ttl_s,
            expires_at=format_timestamp(self.clock.now_ns() + int(self.ttl_s * 1e9)),
        )
        self._forget(now)
        self._by_id[grant.grant_id] = grant
        self._current[cid] = grant
        return grant

    def _forget(self, now: float) -> None:
        """Drop grants expired for a whole ttl (a late redeem still hears "expired", not
        "unknown"), sooner beyond ``max_kept``. Oldest first, so amortized O(1) an issue,
        whatever the number of conversations."""
        by_id = self._by_id
        while by_id:
            oldest = next(iter(by_id.values()))
            if now < oldest.expires_mono or (now < oldest.expires_mono + self.ttl_s and len(by_id) < self.max_kept):
                return
            del by_id[oldest.grant_id]
            if self._current.get(oldest.conversation_id) is oldest:
                del self._current[oldest.conversation_id]

    def learn(self, event: Event) -> None:
        """Take in a grant another daemon's controller issued, or the use of one, from the log
        (the jetstream backend: any daemon honours any grant). A grant issued here is known
        already; expiry is the issuer's ``expires_at`` on this host's clock."""
        data = event.data
        if not isinstance(data, dict) or not isinstance(data.get("grant_id"), str):
            return
        grant_id = data["grant_id"]
        known = self._by_id.get(grant_id)
        if event.type == "narrator.message":
            if known is not None:
                known.used = True
            return
        if known is not None or event.type != "controller.decision" or data.get("speak_now") is not True:
            return
        try:
            expires_at = str(data["expires_at"])
            left_s = (timestamp_ns(expires_at) - self.clock.now_ns()) / 1e9
        except (KeyError, ValueError, OverflowError):
            return  # not a grant this controller could have written: never honoured
        now = self.clock.monotonic()
        grant = Grant(
            grant_id=grant_id,
            conversation_id=event.conversation_id,
            reason=str(data.get("reason", "")),
            expires_mono=now + min(left_s, self.ttl_s),
            expires_at=expires_at,
        )
        self._forget(now)
        self._by_id[grant_id] = grant
        current = self._current.get(event.conversation_id)
        if current is None or current.expires_mono <= grant.expires_mono:
            self._current[event.conversation_id] = grant

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
