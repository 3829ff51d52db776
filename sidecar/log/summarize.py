"""Rolling summaries (S24): older events collapse into markdown bullets, the newest stay whole.

Deterministic: the same events give the same bytes (no "now" anywhere), so ``summary_ref``,
the SHA-256 of the markdown, names one immutable snapshot a prompt can cite and rebuild.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import msgspec
import structlog

from sidecar.datadir import UnsafePathError, ensure_layout, private_dir, read_regular, resolve_data_dir
from sidecar.errors import InvalidParams, StorageError
from sidecar.fs import atomic_write, flock, fsync_dir
from sidecar.log.events import Event
from sidecar.log.segments import DECODE_ERRORS
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


# --- persisting ------------------------------------------------------------------------------


# The layout of ``summaries/``: for conversation ``c``, ``c.md`` and ``c.json`` (the latest),
# and ``_snapshots/c/{summary_ref}.md`` (each summary ever persisted, for good). No conversation
# id can collide with another's files: ``c.md`` and ``c.json`` end differently, and ids start
# with a letter or digit, so no id is ``_snapshots`` and no id's file starts with ``.``, as
# temp files do. (Older versions kept snapshots in ``c/``, where conversation ``a.md``'s
# directory took the name of conversation ``a``'s file; that layout is still read.)
SNAPSHOTS = "_snapshots"
MAX_SUMMARY_BYTES = 64 * 1024 * 1024  # a file bigger than this in summaries/ is not ours

log = structlog.get_logger("sidecar.summaries")


def persist_summary(
    conversation_id: str, summary: Summary | Mapping[str, Any], *, data_dir: str | os.PathLike[str] | None = None
) -> str:
    """Write ``summaries/{cid}.md`` (and ``{cid}.json`` with the rest) atomically, and keep the
    snapshot at ``summaries/_snapshots/{cid}/{summary_ref}.md`` for good; returns the ``.md`` path.

    Writers of one conversation take turns (an exclusive flock on its snapshot directory;
    readers take a shared one), so the ``.md`` and ``.json`` always describe one summary.
    A file that is in the way (a symlink, a directory) is a storage error for this
    conversation only."""
    check_conversation_id(conversation_id)
    if isinstance(summary, Summary):
        summary = as_dict(summary)
    markdown = summary["markdown"]
    ref = summary_ref(markdown)
    if summary.get("summary_ref") not in (None, ref):
        raise InvalidParams("summary_ref does not match the markdown", {"summary_ref": ref})
    meta = {k: v for k, v in summary.items() if k != "markdown"} | {"summary_ref": ref}
    with _storage(conversation_id, "persist the summary of"):
        root = os.path.join(ensure_layout(resolve_data_dir(data_dir)), "summaries")
        path = os.path.join(root, f"{conversation_id}.md")
        private_dir(os.path.join(root, SNAPSHOTS), what="summary snapshots directory")
        snapshots = os.path.join(root, SNAPSHOTS, conversation_id)
        private_dir(snapshots, what="summary snapshots directory")
        with _locked(snapshots, exclusive=True):
            for name in (f"{conversation_id}.md", f"{conversation_id}.json"):
                _move_old_snapshots(root, name)
            snapshot = os.path.join(snapshots, f"{ref}.md")
            if not os.path.lexists(snapshot):
                atomic_write(snapshot, markdown.encode())
            atomic_write(os.path.join(root, f"{conversation_id}.json"), json.dumps(meta, sort_keys=True).encode())
            atomic_write(path, markdown.encode())
    return path


def load_summary(conversation_id: str, *, data_dir: str | os.PathLike[str] | None = None) -> Summary | None:
    """The last persisted summary of a conversation, or ``None``."""
    check_conversation_id(conversation_id)
    root = os.path.join(resolve_data_dir(data_dir), "summaries")
    md_path = os.path.join(root, f"{conversation_id}.md")
    json_path = os.path.join(root, f"{conversation_id}.json")
    with _storage(conversation_id, "read the summary of"), _locked(_snapshots(root, conversation_id)):
        try:
            if stat.S_ISDIR(os.lstat(md_path).st_mode):
                return None  # the old layout's snapshots of conversation "{cid}.md", not ours
            markdown = read_regular(md_path, MAX_SUMMARY_BYTES).decode()
            raw_meta = read_regular(json_path, MAX_SUMMARY_BYTES)
        except FileNotFoundError:
            return None
        try:
            meta = msgspec.json.decode(raw_meta)
        except DECODE_ERRORS as exc:
            raise UnsafePathError(f"{json_path} is not a summary's JSON: {exc}", errno.EINVAL) from None
        if not isinstance(meta, dict):
            raise UnsafePathError(f"{json_path} is not a summary's JSON: not an object", errno.EINVAL)
        ref = summary_ref(markdown)
        try:  # what the disk says, checked: any other writer may have put it there
            found = msgspec.convert({**meta, "markdown": markdown, "summary_ref": ref}, Summary)
        except msgspec.ValidationError as exc:
            raise UnsafePathError(f"{json_path} is not a summary's JSON: {exc}", errno.EINVAL) from None
    if meta.get("summary_ref") != ref:
        log.warning("summary.files_disagree", conversation_id=conversation_id, md=ref, json=meta.get("summary_ref"))
    return found


def load_snapshot(conversation_id: str, ref: str, *, data_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The markdown a ``summary_ref`` names, as it was when persisted."""
    check_conversation_id(conversation_id)
    if not (len(ref) == 64 and all(c in "0123456789abcdef" for c in ref)):
        raise InvalidParams("a summary_ref is 64 lowercase hex digits")
    root = os.path.join(resolve_data_dir(data_dir), "summaries")
    with _storage(conversation_id, "read a summary snapshot of"):
        for directory in (_snapshots(root, conversation_id), os.path.join(root, conversation_id)):
            try:
                if not stat.S_ISDIR(os.lstat(directory).st_mode):
                    continue  # in the old layout, "{cid}" may be a symlink or a file: never followed
                return read_regular(os.path.join(directory, f"{ref}.md"), MAX_SUMMARY_BYTES).decode()
            except FileNotFoundError:
                continue
    return None


def _snapshots(root: str, conversation_id: str) -> str:
    """The conversation's snapshot directory, once ``_snapshots`` is known to be no link."""
    private_dir(os.path.join(root, SNAPSHOTS), create=False, what="summary snapshots directory")
    return os.path.join(root, SNAPSHOTS, conversation_id)


@contextlib.contextmanager
def _storage(conversation_id: str, doing: str) -> Iterator[None]:
    """Any OS error (a symlink or a directory in the way, a full disk) or undecodable file
    becomes a storage error naming the conversation: only this conversation's summary fails."""
    try:
        yield
    except (OSError, UnicodeDecodeError) as exc:
        reason = str(exc) if isinstance(exc, UnsafePathError) else f"{type(exc).__name__}: {exc}"
        raise StorageError(
            f"could not {doing} {conversation_id!r}: {reason}", {"conversation_id": conversation_id}
        ) from None


@contextlib.contextmanager
def _locked(snapshots: str, *, exclusive: bool = False) -> Iterator[None]:
    """Hold a conversation's summary lock: a flock on its snapshot directory (none yet, no
    summary written in this layout yet: nothing to wait for)."""
    try:
        fd = os.open(snapshots, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if exclusive:
            raise
        yield
        return
    try:
        flock(fd, exclusive=exclusive)
        yield
    finally:
        os.close(fd)


def _move_old_snapshots(root: str, name: str) -> None:
    """An old-layout snapshot directory named like one of our files (conversation ``a.md``'s
    in the way of conversation ``a``): move its snapshots to the new place first."""
    old = os.path.join(root, name)
    try:
        if not stat.S_ISDIR(os.lstat(old).st_mode):
            return
    except FileNotFoundError:
        return
    target = os.path.join(root, SNAPSHOTS, name)
    private_dir(target, what="summary snapshots directory")
    with os.scandir(old) as entries:
        for entry in entries:
            if entry.name.endswith(".md") and entry.is_file(follow_symlinks=False):
                moved = os.path.join(target, entry.name)
                if os.path.lexists(moved):
                    os.unlink(entry.path)  # the same summary_ref: the same bytes
                else:
                    os.rename(entry.path, moved)
    os.rmdir(old)  # anything else left in it: OSError, and this conversation's persist fails
    fsync_dir(target)
    fsync_dir(root)
    log.warning("summary.snapshots_moved", source=old, target=target)
