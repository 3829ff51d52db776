"""Rolling summaries (S24): older events collapse into markdown bullets, the newest stay whole.

Deterministic: the same events give the same bytes (no "now" anywhere), so ``summary_ref``,
the SHA-256 of the markdown, names one immutable snapshot a prompt can cite and rebuild.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from sidecar.errors import InvalidParams
from sidecar.log.events import Event
from sidecar.log.store import check_conversation_id
from sidecar.tokens import DEFAULT_COUNTER, TokenCounter, fit

LEVEL_WEIGHT = {"milestone": 50, "decision": 40, "action": 20, "state": 10, "detail": 0}
_TEXT_KEYS = ("text", "message", "msg", "summary", "error", "reason", "status")


def _as_dict(event: Event | Mapping[str, Any]) -> dict[str, Any]:
    return msgspec.to_builtins(event) if isinstance(event, Event) else dict(event)


def is_error(ev: Mapping[str, Any]) -> bool:
    return "error" in ev["type"] or "fail" in ev["type"] or "error" in (ev.get("data") or {})


def is_decision(ev: Mapping[str, Any]) -> bool:
    return ev.get("level") == "decision" or "decision" in ev["type"]


def importance(ev: Mapping[str, Any]) -> int:
    """How much a line is worth keeping: errors and decisions most, details least."""
    score = LEVEL_WEIGHT.get(ev.get("level", "action"), 20)
    if is_error(ev):
        score += 100
    if is_decision(ev):
        score += 60
    if ev.get("visibility") == "user":
        score += 30
    return score


def telling_text(ev: Mapping[str, Any], width: int = 160) -> str:
    """The most human part of an event's data, on one line."""
    data = ev.get("data") or {}
    for key in _TEXT_KEYS:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            text = " ".join(value.split())
            break
    else:
        text = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":")) if data else ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _bullet(ev: Mapping[str, Any]) -> str:
    agent = f" [{ev['agent_id']}]" if ev.get("agent_id") else ""
    task = f" (task {ev['task_id']})" if ev.get("task_id") else ""
    text = telling_text(ev)
    return f"- #{ev['seq']} {ev['timestamp'][11:19]}{agent}{task} {ev['type']}: {text}".rstrip(": ")


def event_line(ev: Mapping[str, Any]) -> str:
    """One event in full, on one line (the summary's "latest" section and the context's)."""
    agent = f" [{ev['agent_id']}]" if ev.get("agent_id") else ""
    task = f" task={ev['task_id']}" if ev.get("task_id") else ""
    turn = f" turn={ev['turn']}" if ev.get("turn") is not None else ""
    data = json.dumps(ev.get("data") or {}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return (
        f"- #{ev['seq']} {ev['timestamp']} {ev['type']}{agent} {ev.get('visibility')}/{ev.get('level')}"
        f"{task}{turn} {data}"
    )


BULLETS_PER_GROUP = 5
RING = 256  # events kept whole in a SummaryState: the most keep_recent it can serve


# A summary, as ``summary.rolling``, ``summary.persist`` and ``summary.get`` answer it (no
# docstrings: they would show in rpc.discover). The embedded API speaks dicts: see as_dict.
class Group(msgspec.Struct, kw_only=True):
    type: str
    count: int
    first_timestamp: str
    last_timestamp: str
    agents: list[str]
    task_ids: list[str]
    errors: int


class Summary(msgspec.Struct, kw_only=True):
    conversation_id: str
    markdown: str
    summary_ref: str
    from_seq: int
    to_seq: int
    groups: list[Group]
    token_estimate: int
    recent: int
    truncated: bool = False
    path: str | None = None  # where summary.persist wrote it


def as_dict(summary: Summary) -> dict[str, Any]:
    """The summary as the embedded API gives it: plain data, ``path`` only once written."""
    out: dict[str, Any] = msgspec.to_builtins(summary)
    if summary.path is None:
        del out["path"]
    return out


class _TypeStats:
    """What the summary says about one event type: counts, span, who, which tasks, and the
    lines worth showing (every error and decision, and the best few of the rest)."""

    __slots__ = ("type", "count", "first_ts", "last_ts", "agents", "tasks", "errors", "order", "must", "top")

    def __init__(self, type_: str, first: Mapping[str, Any]) -> None:
        self.type = type_
        self.count = self.errors = 0
        self.first_ts = self.last_ts = first["timestamp"]
        self.agents: set[str] = set()
        self.tasks: set[str] = set()
        self.order = first["seq"]
        # (importance, seq, event): every error and decision, and the best few of the rest;
        # the text of a line is made only when it is shown
        self.must: list[tuple[int, int, Mapping[str, Any]]] = []
        self.top: list[tuple[int, int, Mapping[str, Any]]] = []

    def add(self, ev: Mapping[str, Any]) -> None:
        self.count += 1
        self.last_ts = max(self.last_ts, ev["timestamp"])
        if ev.get("agent_id"):
            self.agents.add(ev["agent_id"])
        if ev.get("task_id"):
            self.tasks.add(ev["task_id"])
        err = is_error(ev)
        self.errors += err
        bullet = (importance(ev), ev["seq"], ev)
        if err or is_decision(ev):
            self.must.append(bullet)
        else:
            self.top.append(bullet)
            if len(self.top) > BULLETS_PER_GROUP:
                self.top.remove(min(self.top, key=_rank))  # least important, then oldest

    def copy(self) -> _TypeStats:
        twin = _TypeStats.__new__(_TypeStats)
        for name in self.__slots__:
            value = getattr(self, name)
            setattr(twin, name, value.copy() if isinstance(value, set | list) else value)
        return twin

    def bullets(self, per_group: int) -> list[tuple[int, int, str]]:
        rest = sorted(self.top, key=_rank, reverse=True)[: max(0, per_group - len(self.must))]
        return [(score, seq, _bullet(ev)) for score, seq, ev in sorted(self.must + rest, key=_rank_seq)]

    def group(self) -> Group:
        return Group(
            type=self.type,
            count=self.count,
            first_timestamp=self.first_ts,
            last_timestamp=self.last_ts,
            agents=sorted(self.agents),
            task_ids=sorted(self.tasks),
            errors=self.errors,
        )


class SummaryState:
    """A conversation's summary, kept up to date one event at a time.

    The newest ``ring`` events stay whole; older ones are folded into per-type statistics
    as they leave the ring. Adding an event is O(1), and a summary costs O(ring), however
    long the log: the daemon keeps one per conversation instead of re-reading the log.
    """

    def __init__(self, conversation_id: str, ring: int = RING) -> None:
        self.conversation_id = check_conversation_id(conversation_id)
        self.ring: deque[dict[str, Any]] = deque()
        self.ring_size = ring
        self.settled: dict[str, _TypeStats] = {}
        self.settled_seq = 0  # the newest event folded into ``settled``
        self.first_seq = 0
        self.last_seq = 0

    def add(self, event: Event | Mapping[str, Any]) -> None:
        ev = _as_dict(event)
        if ev["seq"] <= self.last_seq:
            return  # already in
        if not self.first_seq:
            self.first_seq = ev["seq"]
        self.last_seq = ev["seq"]
        self.ring.append(ev)
        if len(self.ring) > self.ring_size:
            folded = self.ring.popleft()
            _fold(self.settled, folded)
            self.settled_seq = folded["seq"]

    def copy(self) -> SummaryState:
        """An independent snapshot (O(ring + types)), e.g. to render in a worker thread."""
        twin = SummaryState(self.conversation_id, self.ring_size)
        twin.ring = deque(self.ring)  # the event dicts are never changed once added
        twin.settled = {t: st.copy() for t, st in self.settled.items()}
        twin.first_seq, twin.last_seq, twin.settled_seq = self.first_seq, self.last_seq, self.settled_seq
        return twin

    def newest(self, n: int) -> list[dict[str, Any]]:
        """The newest ``n`` events (at most ``ring``), oldest first."""
        return list(self.ring)[-n:] if n > 0 else []

    def render(
        self,
        *,
        keep_recent: int = 5,
        max_tokens: int | None = None,
        counter: TokenCounter = DEFAULT_COUNTER,
        leave_out: int = 0,
    ) -> Summary:
        """The summary with the newest ``keep_recent`` (at most ``ring``) events whole.

        ``leave_out`` summarizes as if the newest ``leave_out`` events were not there yet
        (the context builder shows those itself); ``keep_recent + leave_out`` is at most ``ring``."""
        if keep_recent < 0 or leave_out < 0:
            raise InvalidParams("keep_recent and leave_out must be >= 0")
        if keep_recent + leave_out > len(self.ring) and self.settled:
            raise InvalidParams(f"keep_recent is at most {self.ring_size}", {"max": self.ring_size})
        cid = self.conversation_id
        ring = list(self.ring)[: max(0, len(self.ring) - leave_out)]
        last_seq = ring[-1]["seq"] if ring else self.settled_seq
        keep = min(keep_recent, len(ring))
        per_group = BULLETS_PER_GROUP
        cut = False
        while True:
            stats = {t: st.copy() for t, st in self.settled.items()}
            for ev in ring[: len(ring) - keep]:
                _fold(stats, ev)
            groups = sorted(stats.values(), key=lambda st: st.order)
            bullets = {st.type: st.bullets(per_group) for st in groups}
            recent = ring[len(ring) - keep :]
            markdown = _render(cid, self.first_seq, last_seq, groups, bullets, recent)
            if max_tokens is None or counter.count(markdown) <= max_tokens:
                break
            # Over the cap: drop the least important bullets; when that is not enough, fewer
            # recent events.
            render = functools.partial(_render, cid, self.first_seq, last_seq, groups, recent=recent)
            markdown = _drop_bullets(bullets, render, lambda text: counter.count(text) <= max_tokens)
            if counter.count(markdown) <= max_tokens:
                break
            if keep == 0:
                markdown, cut = fit(markdown, max_tokens, counter), True
                break
            keep -= 1
            per_group = 0  # from here on, groups speak in counts only
        return Summary(
            conversation_id=cid,
            markdown=markdown,
            summary_ref=summary_ref(markdown),
            from_seq=self.first_seq,
            to_seq=last_seq,
            groups=[st.group() for st in groups],
            token_estimate=counter.count(markdown),
            recent=keep,
            truncated=cut,  # even bare counts did not fit: the text itself was cut
        )


def _drop_bullets(
    bullets: dict[str, list[tuple[int, int, str]]],
    render: Callable[[dict[str, list[tuple[int, int, str]]]], str],
    fits: Callable[[str], bool],
) -> str:
    """The text with the fewest of the least important bullets dropped that ``fits`` (or all
    of them dropped). A binary search: the text only shrinks as bullets go, so this costs
    O(log n) renders where dropping one at a time cost O(n)."""
    droppable = sorted(b for group in bullets.values() for b in group)

    def without(k: int) -> str:
        gone = {seq for _, seq, _ in droppable[:k]}
        return render({t: [b for b in group if b[1] not in gone] for t, group in bullets.items()})

    lo, hi = 1, len(droppable)  # without(0) is over the cap
    if not droppable or not fits(without(hi)):
        return without(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(without(mid)):
            hi = mid
        else:
            lo = mid + 1
    return without(lo)


def _rank(bullet: tuple[int, int, Any]) -> tuple[int, int]:
    return bullet[0], bullet[1]


def _rank_seq(bullet: tuple[int, int, Any]) -> int:
    return bullet[1]


def _fold(stats: dict[str, _TypeStats], ev: Mapping[str, Any]) -> None:
    st = stats.get(ev["type"])
    if st is None:
        st = stats[ev["type"]] = _TypeStats(ev["type"], ev)
    st.add(ev)


def rolling_summary(
    conversation_id: str,
    events: Iterable[Event | Mapping[str, Any]],
    *,
    keep_recent: int = 5,
    max_tokens: int | None = None,
    counter: TokenCounter = DEFAULT_COUNTER,
) -> dict[str, Any]:
    """Summarize ``events``: groups of older events, then the newest ``keep_recent`` in full.

    ``max_tokens`` is a hard cap, met by dropping the least important bullets first and then,
    if it must, keeping fewer recent events whole. The embedded API (a dict); the daemon
    uses :func:`summarize`, which gives the :class:`Summary` itself.
    """
    return as_dict(summarize(conversation_id, events, keep_recent=keep_recent, max_tokens=max_tokens, counter=counter))


def summarize(
    conversation_id: str,
    events: Iterable[Event | Mapping[str, Any]],
    *,
    keep_recent: int = 5,
    max_tokens: int | None = None,
    counter: TokenCounter = DEFAULT_COUNTER,
) -> Summary:
    """:func:`rolling_summary` as a :class:`Summary`."""
    if keep_recent < 0:
        raise InvalidParams("keep_recent must be >= 0")
    state = SummaryState(conversation_id, ring=max(RING, keep_recent))
    for ev in sorted((_as_dict(e) for e in events), key=lambda e: e["seq"]):
        state.add(ev)
    return state.render(keep_recent=keep_recent, max_tokens=max_tokens, counter=counter)


def summary_ref(markdown: str) -> str:
    return hashlib.sha256(markdown.encode()).hexdigest()


def _render(
    cid: str,
    first_seq: int,
    last_seq: int,
    groups: list[_TypeStats],
    bullets: dict[str, list[tuple[int, int, str]]],
    recent: list[dict[str, Any]],
) -> str:
    if not last_seq:
        return f"# {cid}\n\nNo events yet.\n"
    lines = [f"# {cid}: seq {first_seq}-{last_seq}", ""]
    if groups:
        older_n = sum(g.count for g in groups)
        last_ts = max(g.last_ts for g in groups)
        lines += [f"## Earlier: {older_n} events, {groups[0].first_ts} to {last_ts}", ""]
        for g in groups:
            meta = [f"{g.first_ts[11:19]}-{g.last_ts[11:19]}"]
            if g.agents:
                meta.append("agents " + ", ".join(sorted(g.agents)))
            if g.tasks:
                meta.append("tasks " + ", ".join(sorted(g.tasks)))
            if g.errors:
                meta.append(f"{g.errors} errors")
            lines.append(f"### {g.type} x{g.count} ({'; '.join(meta)})")
            lines += [b[2] for b in bullets.get(g.type, [])]
            lines.append("")
    if recent:
        lines += [f"## Latest {len(recent)} events, in full", ""]
        lines += [event_line(e) for e in recent]
        lines.append("")
    return "\n".join(lines)
