"""Rolling summaries (S24): older events collapse into markdown bullets, the newest stay whole.

Deterministic: the same events give the same bytes (no "now" anywhere), so ``summary_ref``,
the SHA-256 of the markdown, names one immutable snapshot a prompt can cite and rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from sidecar.context.tokens import DEFAULT_COUNTER, TokenCounter
from sidecar.datadir import ensure_layout, resolve_data_dir
from sidecar.errors import InvalidParams
from sidecar.log.events import Event
from sidecar.log.files import fsync_dir, write_all
from sidecar.log.store import check_conversation_id

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


def rolling_summary(
    conversation_id: str,
    events: Iterable[Event | Mapping[str, Any]],
    *,
    keep_recent: int = 5,
    max_tokens: int | None = None,
    bullets_per_group: int = 5,
    counter: TokenCounter = DEFAULT_COUNTER,
) -> dict[str, Any]:
    """Summarize ``events`` (in seq order): groups of older events, then the newest in full.

    ``max_tokens`` is a hard cap, met by dropping the least important bullets first and then,
    if it must, keeping fewer recent events whole.
    """
    check_conversation_id(conversation_id)
    if keep_recent < 0:
        raise InvalidParams("keep_recent must be >= 0")
    evs = sorted((_as_dict(e) for e in events), key=lambda e: e["seq"])
    keep = min(keep_recent, len(evs))
    cut = False
    while True:
        older, recent = evs[: len(evs) - keep], evs[len(evs) - keep :]
        groups, bullets = _groups(older, bullets_per_group)
        markdown = _render(conversation_id, evs, groups, bullets, recent)
        if max_tokens is None or counter.count(markdown) <= max_tokens:
            break
        # Over the cap: drop the least important bullet; when none is left, fewer recent events.
        droppable = sorted((b for g in bullets.values() for b in g), key=lambda b: (b[0], b[1]))
        while droppable and counter.count(markdown) > max_tokens:
            score, seq, _ = droppable.pop(0)
            for group in bullets.values():
                group[:] = [b for b in group if b[1] != seq]
            markdown = _render(conversation_id, evs, groups, bullets, recent)
        if counter.count(markdown) <= max_tokens:
            break
        if keep == 0:
            markdown, cut = _fit(markdown, max_tokens, counter), True
            break
        keep -= 1
        bullets_per_group = 0  # from here on, groups speak in counts only
    return {
        "conversation_id": conversation_id,
        "markdown": markdown,
        "summary_ref": summary_ref(markdown),
        "from_seq": evs[0]["seq"] if evs else 0,
        "to_seq": evs[-1]["seq"] if evs else 0,
        "groups": [{k: v for k, v in g.items() if k != "order"} for g in groups],
        "token_estimate": counter.count(markdown),
        "recent": keep,
        "truncated": cut,  # even bare counts did not fit: the text itself was cut
    }


def summary_ref(markdown: str) -> str:
    return hashlib.sha256(markdown.encode()).hexdigest()


def _groups(older: list[dict[str, Any]], per_group: int) -> tuple[list[dict[str, Any]], dict[str, list[tuple]]]:
    by_type: dict[str, dict[str, Any]] = {}
    members: dict[str, list[dict[str, Any]]] = {}
    for ev in older:
        g = by_type.get(ev["type"])
        if g is None:
            g = by_type[ev["type"]] = {
                "type": ev["type"],
                "count": 0,
                "first_timestamp": ev["timestamp"],
                "last_timestamp": ev["timestamp"],
                "agents": set(),
                "task_ids": set(),
                "errors": 0,
                "order": ev["seq"],
            }
            members[ev["type"]] = []
        g["count"] += 1
        g["last_timestamp"] = ev["timestamp"]
        if ev.get("agent_id"):
            g["agents"].add(ev["agent_id"])
        if ev.get("task_id"):
            g["task_ids"].add(ev["task_id"])
        g["errors"] += is_error(ev)
        members[ev["type"]].append(ev)
    bullets: dict[str, list[tuple]] = {}
    for type_, evs in members.items():
        # Errors and decisions always get a line; the rest compete on importance, then recency.
        must = [e for e in evs if is_error(e) or is_decision(e)]
        rest = sorted(
            (e for e in evs if not (is_error(e) or is_decision(e))), key=lambda e: (-importance(e), -e["seq"])
        )
        chosen = must + rest[: max(0, per_group - len(must))]
        bullets[type_] = sorted(((importance(e), e["seq"], _bullet(e)) for e in chosen), key=lambda b: b[1])
    groups = sorted(by_type.values(), key=lambda g: g["order"])
    for g in groups:
        g["agents"] = sorted(g["agents"])
        g["task_ids"] = sorted(g["task_ids"])
    return groups, bullets


def _render(cid: str, evs: list[dict], groups: list[dict], bullets: dict[str, list[tuple]], recent: list[dict]) -> str:
    if not evs:
        return f"# {cid}\n\nNo events yet.\n"
    lines = [f"# {cid}: seq {evs[0]['seq']}-{evs[-1]['seq']}", ""]
    if groups:
        older_n = sum(g["count"] for g in groups)
        lines += [f"## Earlier: {older_n} events, {groups[0]['first_timestamp']} to {_last(groups)}", ""]
        for g in groups:
            meta = [f"{g['first_timestamp'][11:19]}-{g['last_timestamp'][11:19]}"]
            if g["agents"]:
                meta.append("agents " + ", ".join(g["agents"]))
            if g["task_ids"]:
                meta.append("tasks " + ", ".join(g["task_ids"]))
            if g["errors"]:
                meta.append(f"{g['errors']} errors")
            lines.append(f"### {g['type']} x{g['count']} ({'; '.join(meta)})")
            lines += [b[2] for b in bullets.get(g["type"], [])]
            lines.append("")
    if recent:
        lines += [f"## Latest {len(recent)} events, in full", ""]
        lines += [event_line(e) for e in recent]
        lines.append("")
    return "\n".join(lines)


def _last(groups: list[dict]) -> str:
    return max(g["last_timestamp"] for g in groups)


def _fit(markdown: str, max_tokens: int, counter: TokenCounter) -> str:
    """The last resort: cut the text itself until it fits."""
    while markdown and counter.count(markdown) > max_tokens:
        markdown = markdown[: max(0, int(len(markdown) * 0.9) - 1)]
    return markdown


# --- persisting ------------------------------------------------------------------------------


def persist_summary(
    conversation_id: str, summary: Mapping[str, Any], *, data_dir: str | os.PathLike[str] | None = None
) -> str:
    """Write ``summaries/{cid}.md`` (and ``{cid}.json`` with the rest) atomically, and keep the
    snapshot at ``summaries/{cid}/{summary_ref}.md`` for good; returns the ``.md`` path."""
    check_conversation_id(conversation_id)
    root = os.path.join(ensure_layout(resolve_data_dir(data_dir)), "summaries")
    markdown = summary["markdown"]
    ref = summary_ref(markdown)
    if summary.get("summary_ref") not in (None, ref):
        raise InvalidParams("summary_ref does not match the markdown", {"summary_ref": ref})
    snapshots = os.path.join(root, conversation_id)
    os.makedirs(snapshots, exist_ok=True)
    snapshot = os.path.join(snapshots, f"{ref}.md")
    if not os.path.exists(snapshot):
        _atomic_write(snapshot, markdown.encode())
    meta = {k: v for k, v in summary.items() if k != "markdown"} | {"summary_ref": ref}
    _atomic_write(os.path.join(root, f"{conversation_id}.json"), json.dumps(meta, sort_keys=True).encode())
    path = os.path.join(root, f"{conversation_id}.md")
    _atomic_write(path, markdown.encode())
    return path


def load_summary(conversation_id: str, *, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The last persisted summary of a conversation, or ``None``."""
    check_conversation_id(conversation_id)
    root = os.path.join(resolve_data_dir(data_dir), "summaries")
    try:
        with open(os.path.join(root, f"{conversation_id}.md"), "rb") as f:
            markdown = f.read().decode()
        with open(os.path.join(root, f"{conversation_id}.json"), "rb") as f:
            meta = json.loads(f.read())
    except FileNotFoundError:
        return None
    return {**meta, "markdown": markdown, "summary_ref": summary_ref(markdown)}


def load_snapshot(conversation_id: str, ref: str, *, data_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The markdown a ``summary_ref`` names, as it was when persisted."""
    check_conversation_id(conversation_id)
    if not (len(ref) == 64 and all(c in "0123456789abcdef" for c in ref)):
        raise InvalidParams("a summary_ref is 64 lowercase hex digits")
    try:
        with open(os.path.join(resolve_data_dir(data_dir), "summaries", conversation_id, f"{ref}.md"), "rb") as f:
            return f.read().decode()
    except FileNotFoundError:
        return None


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(path))
