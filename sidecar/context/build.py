"""Budgeted prompt context: layers filled by priority, presented in reading order.

Priority decides what survives a tight budget: the system prompt and the newest event
first, then the task state (or, with a focus task, the tasks around it), then the older
events that match the query (``related``, best first), then the summary of older events,
then as many recent events as fit (newest kept first). Reading order is what the model
sees: system prompt, tasks, related events, summary, recent events, newest event. Every
layer says what it covers (seqs, task ids, ``summary_ref``, the query), so the same prompt
can be rebuilt later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from sidecar.log.events import Event
from sidecar.summary.state import RING, SummaryState, event_line
from sidecar.tasks.model import Task
from sidecar.tokens import DEFAULT_COUNTER, TokenCounter, fit

RECENT_WINDOW = 20


# What ``context.build`` answers (no docstrings: they would show in rpc.discover).
class Layer(msgspec.Struct, kw_only=True):
    name: str
    text: str
    tokens: int
    covers: dict[str, Any]


class Context(msgspec.Struct, kw_only=True):
    conversation_id: str
    layers: list[Layer]
    total_tokens: int
    budget_tokens: int
    summary_ref: str | None


@dataclass(frozen=True)
class Focus:
    """The tasks around one: it first, then those within two dependency hops either way
    (nearest first), and each one's newest event, if any."""

    task_id: str
    tasks: Sequence[Task]
    newest: Mapping[str, Event | Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Related:
    """Older events that match ``query``, best first."""

    query: str
    events: Sequence[Event | Mapping[str, Any]]


def _event_dict(event: Event | Mapping[str, Any]) -> dict[str, Any]:
    return msgspec.to_builtins(event) if isinstance(event, Event) else dict(event)


def _task_lines(tasks: Sequence[Task], ready: Sequence[Task]) -> list[str]:
    ready_ids = {t.id for t in ready}
    lines = []
    for t in tasks:
        deps = f" after {', '.join(t.dependency_ids)}" if t.dependency_ids else ""
        owner = f" [{t.owner}]" if t.owner else ""
        mark = " (ready)" if t.id in ready_ids else ""
        lines.append(f"- {t.id} {t.type}{owner}: {t.status}, priority {t.priority}{deps}{mark}")
    return lines


def _add_focus(focus: Focus, ready: Sequence[Task], left: int, counter: TokenCounter, add: Any) -> None:
    """The ``tasks`` layer around a focus task: each task's line and its newest event, the
    farthest dropped first while over budget."""
    ready_ids = {t.id for t in ready}
    entries: list[tuple[Task, str]] = []
    for t in focus.tasks:
        (line,) = _task_lines([t], [t] if t.id in ready_ids else [])
        newest = focus.newest.get(t.id)
        if newest is not None:
            line += "\n  newest: " + event_line(_event_dict(newest))
        entries.append((t, line))
    head = f"Tasks around {focus.task_id}:"
    while entries and counter.count("\n".join([head, *(line for _, line in entries)])) > left:
        entries.pop()
    if entries:
        newest = {t.id: _event_dict(focus.newest[t.id])["id"] for t, _ in entries if t.id in focus.newest}
        add(
            "tasks",
            "\n".join([head, *(line for _, line in entries)]),
            {"task_ids": [t.id for t, _ in entries], "focus_task_id": focus.task_id, "newest_event_ids": newest},
        )


def build_context(
    conversation_id: str,
    events: Sequence[Event | Mapping[str, Any]] = (),
    *,
    budget_tokens: int,
    system_prompt: str = "",
    tasks: Sequence[Task] = (),
    ready: Sequence[Task] = (),
    counter: TokenCounter = DEFAULT_COUNTER,
    recent_window: int = RECENT_WINDOW,
    state: SummaryState | None = None,
    focus: Focus | None = None,
    related: Related | None = None,
) -> Context:
    """The context for one conversation, never over ``budget_tokens``.

    Give the conversation's ``events``, or its incremental ``state`` (the daemon's, which
    makes this O(ring) however long the log is); both give the same context. ``focus``
    replaces the conversation's task list with the tasks around one task; ``related`` adds
    the matching older events that are not in the recent window."""
    if state is None:
        state = SummaryState(conversation_id, ring=max(RING, recent_window + 1))
        for ev in sorted((_event_dict(e) for e in events), key=lambda e: e["seq"]):
            state.add(ev)
    elif recent_window + 1 > state.ring_size:
        raise ValueError(f"recent_window is at most {state.ring_size - 1} with an incremental state")
    tail = state.newest(recent_window + 1)  # the recent window, then the newest event
    left = budget_tokens
    layers: dict[str, Layer] = {}

    def add(name: str, text: str, covers: dict[str, Any]) -> None:
        nonlocal left
        tokens = counter.count(text)
        layers[name] = Layer(name=name, text=text, tokens=tokens, covers=covers)
        left -= tokens

    # 1. The system prompt and the newest event: cut only if nothing else fits.
    system = fit(system_prompt, left, counter)
    add("system", system, {"chars": len(system), "truncated": len(system) < len(system_prompt)})
    newest = tail[-1] if tail else None
    if newest is not None:
        line = fit(event_line(newest), left, counter)
        if line:
            add("newest", line, {"seqs": [newest["seq"], newest["seq"]]})
    # 2. Task state: the conversation's tasks, or those around the focus task.
    if focus is not None:
        _add_focus(focus, ready, left, counter, add)
    elif tasks:
        lines = ["Tasks:", *_task_lines(tasks, ready)]
        while len(lines) > 1 and counter.count("\n".join(lines)) > left:
            lines.pop()
        if len(lines) > 1:
            add("tasks", "\n".join(lines), {"task_ids": [t.id for t in tasks][: len(lines) - 1]})
    # 3. Older events that match the query, best first while they fit, shown in seq order.
    if related is not None and left > 0:
        window_start = tail[0]["seq"] if tail else None
        picked: list[dict[str, Any]] = []
        for ev in map(_event_dict, related.events):
            if window_start is not None and ev["seq"] >= window_start:
                continue  # already in the recent window
            lines = [event_line(e) for e in sorted([*picked, ev], key=lambda e: e["seq"])]
            if counter.count("\n".join(lines)) > left:
                break
            picked.append(ev)
        if picked:
            picked.sort(key=lambda e: e["seq"])
            add(
                "related",
                "\n".join(event_line(e) for e in picked),
                {"seqs": [e["seq"] for e in picked], "query": related.query},
            )
    # 4. The summary of what came before the recent window.
    recent_candidates = tail[:-1] if recent_window else []
    has_older = bool(state.settled) or len(state.ring) > len(tail)
    summary_ref = None
    if has_older and left > 0:
        summary = state.render(keep_recent=0, leave_out=len(recent_candidates) + 1, max_tokens=left, counter=counter)
        if summary.markdown and not summary.truncated and summary.token_estimate <= left:
            summary_ref = summary.summary_ref
            add("summary", summary.markdown, {"seqs": [summary.from_seq, summary.to_seq], "summary_ref": summary_ref})
    # 5. Recent events, newest first, while they fit.
    kept: list[str] = []
    kept_seqs: list[int] = []
    for ev in reversed(recent_candidates):
        line = event_line(ev)
        if counter.count("\n".join([line, *kept])) > left:
            break
        kept.insert(0, line)
        kept_seqs.insert(0, ev["seq"])
    if kept:
        add("recent", "\n".join(kept), {"seqs": [kept_seqs[0], kept_seqs[-1]]})
    order = [n for n in ("system", "tasks", "related", "summary", "recent", "newest") if n in layers]
    ordered = [layers[n] for n in order]
    return Context(
        conversation_id=conversation_id,
        layers=ordered,
        total_tokens=sum(layer.tokens for layer in ordered),
        budget_tokens=budget_tokens,
        summary_ref=summary_ref,
    )
