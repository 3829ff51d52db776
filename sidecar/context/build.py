"""Budgeted prompt context: layers filled by priority, presented in reading order.

Priority decides what survives a tight budget: the system prompt and the newest event
first, then the task state, then the summary of older events, then as many recent events
as fit (newest kept first). Reading order is what the model sees: system prompt, task
state, summary, recent events, newest event. Every layer says what it covers (seqs,
``summary_ref``), so the same prompt can be rebuilt later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
) -> Context:
    """The context for one conversation, never over ``budget_tokens``.

    Give the conversation's ``events``, or its incremental ``state`` (the daemon's, which
    makes this O(ring) however long the log is); both give the same context."""
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
    # 2. Task state.
    if tasks:
        lines = ["Tasks:", *_task_lines(tasks, ready)]
        while len(lines) > 1 and counter.count("\n".join(lines)) > left:
            lines.pop()
        if len(lines) > 1:
            add("tasks", "\n".join(lines), {"task_ids": [t.id for t in tasks][: len(lines) - 1]})
    # 3. The summary of what came before the recent window.
    recent_candidates = tail[:-1] if recent_window else []
    has_older = bool(state.settled) or len(state.ring) > len(tail)
    summary_ref = None
    if has_older and left > 0:
        summary = state.render(keep_recent=0, leave_out=len(recent_candidates) + 1, max_tokens=left, counter=counter)
        if summary.markdown and not summary.truncated and summary.token_estimate <= left:
            summary_ref = summary.summary_ref
            add("summary", summary.markdown, {"seqs": [summary.from_seq, summary.to_seq], "summary_ref": summary_ref})
    # 4. Recent events, newest first, while they fit.
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
    order = [n for n in ("system", "tasks", "summary", "recent", "newest") if n in layers]
    ordered = [layers[n] for n in order]
    return Context(
        conversation_id=conversation_id,
        layers=ordered,
        total_tokens=sum(layer.tokens for layer in ordered),
        budget_tokens=budget_tokens,
        summary_ref=summary_ref,
    )
