"""Budgeted context: never over budget, filled by priority, presented in reading order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.context.build import RECENT_WINDOW, Context, Focus, Related, build_context
from sidecar.summary.state import SummaryState, event_line, rolling_summary
from sidecar.tasks import NewTask, TaskGraph
from sidecar.tokens import DEFAULT_COUNTER, ByteEstimate
from tests.support import realistic

SYSTEM = "You are the narrator. Speak briefly, only about what changed."


def graph() -> TaskGraph:
    g = TaskGraph()
    g.create(NewTask(type="search", id="t1", owner="rag", conversation_id="c1"), "2020-05-01T10:00:00.000000Z")
    g.create(NewTask(type="code", id="t2", dependency_ids=["t1"], conversation_id="c1"), "2020-05-01T10:00:01.000000Z")
    return g


def build(budget: int, n: int = 200) -> Context:
    g = graph()
    return build_context(
        "c1", realistic(n), budget_tokens=budget, system_prompt=SYSTEM, tasks=g.list_active(), ready=g.ready()
    )


def test_a_roomy_budget_gets_every_layer_in_reading_order() -> None:
    ctx = build(20_000)
    assert [layer.name for layer in ctx.layers] == ["system", "tasks", "summary", "recent", "newest"]
    newest = ctx.layers[-1]
    assert newest.covers["seqs"] == [200, 200] and "#200 " in newest.text
    summary = ctx.layers[2]
    assert summary.covers["summary_ref"] == ctx.summary_ref and summary.covers["seqs"] == [1, 179]
    assert ctx.layers[3].covers["seqs"] == [180, 199]  # no gap between summary and recent
    assert "t2 code: pending, priority 2 after t1" in ctx.layers[1].text
    assert "(ready)" in ctx.layers[1].text


def test_a_tight_budget_keeps_the_system_prompt_and_the_newest_event() -> None:
    sys_tokens = DEFAULT_COUNTER.count(SYSTEM)
    ctx = build(sys_tokens + 60)
    names = [layer.name for layer in ctx.layers]
    assert names[0] == "system" and names[-1] == "newest" and "summary" not in names
    assert ctx.layers[0].text == SYSTEM


def test_recent_events_drop_oldest_first() -> None:
    roomy = build(20_000)
    recent_tokens = roomy.layers[3].tokens
    used_before = sum(layer.tokens for layer in roomy.layers if layer.name != "recent")
    ctx = build(used_before + recent_tokens // 2)
    recent = next(layer for layer in ctx.layers if layer.name == "recent")
    first, last = recent.covers["seqs"]
    assert last == 199 and first > 180


@settings(max_examples=60, deadline=None)
@given(budget=st.integers(1, 6000), n=st.integers(0, 120), bpt=st.sampled_from([2.5, 4.0]))
def test_never_over_budget(budget: int, n: int, bpt: float) -> None:
    counter = ByteEstimate(bytes_per_token=bpt)
    g = graph()
    ctx = build_context(
        "c1",
        realistic(n),
        budget_tokens=budget,
        system_prompt=SYSTEM * 3,
        tasks=g.list_active(),
        ready=g.ready(),
        counter=counter,
    )
    assert ctx.total_tokens <= budget
    assert ctx.total_tokens == sum(counter.count(layer.text) for layer in ctx.layers)


@settings(max_examples=80, deadline=None)
@given(
    budget=st.integers(1, 6000),
    n=st.integers(0, 120),
    bpt=st.sampled_from([2.5, 4.0]),
    related=st.lists(st.integers(1, 120), max_size=12, unique=True),
    focus=st.booleans(),
)
def test_never_over_budget_with_related_events_and_a_focus_task(
    budget: int, n: int, bpt: float, related: list[int], focus: bool
) -> None:
    counter = ByteEstimate(bytes_per_token=bpt)
    events = realistic(n)
    g = graph()
    ctx = build_context(
        "c1",
        events,
        budget_tokens=budget,
        system_prompt=SYSTEM * 3,
        ready=g.ready(),
        counter=counter,
        focus=Focus("t1", [g.get("t1"), g.get("t2")], {"t2": events[-1]} if events else {}) if focus else None,
        related=Related("q", [events[i - 1] for i in related if i <= n]),
    )
    assert ctx.total_tokens <= budget
    assert ctx.total_tokens == sum(counter.count(layer.text) for layer in ctx.layers)
    names = [layer.name for layer in ctx.layers]
    assert names == [x for x in ("system", "tasks", "related", "summary", "recent", "newest") if x in names]
    for layer in ctx.layers:
        if layer.name == "related":  # older than the recent window, in seq order
            seqs = layer.covers["seqs"]
            assert seqs == sorted(seqs) and max(seqs) < n - RECENT_WINDOW


def test_related_events_go_best_first_into_a_tight_budget() -> None:
    events = realistic(100)
    best, worse = events[10], events[40]
    roomy = build_context("c1", events, budget_tokens=50_000, related=Related("q", [best, worse]))
    related = next(layer for layer in roomy.layers if layer.name == "related")
    assert related.covers["seqs"] == [11, 41]
    newest = next(layer for layer in roomy.layers if layer.name == "newest")
    one = max(DEFAULT_COUNTER.count(event_line(e)) for e in (best, worse))
    assert DEFAULT_COUNTER.count(related.text) > one
    room = newest.tokens + one  # either one fits, not both
    for ranked, expected in (([best, worse], [11]), ([worse, best], [41])):
        tight = build_context("c1", events, budget_tokens=room, related=Related("q", ranked))
        kept = [layer.covers["seqs"] for layer in tight.layers if layer.name == "related"]
        assert kept == [expected]


@settings(max_examples=40, deadline=None)
@given(budget=st.integers(50, 8000), n=st.integers(0, 700), window=st.sampled_from([0, 1, 20, 255]))
def test_the_incremental_state_gives_the_same_context_as_the_events(budget: int, n: int, window: int) -> None:
    """The daemon builds from its SummaryState (O(ring)); a library caller from the events."""
    events = realistic(n)
    state = SummaryState("c1")
    for ev in events:
        state.add(ev)
    kw = {"budget_tokens": budget, "system_prompt": SYSTEM, "recent_window": window}
    assert build_context("c1", state=state, **kw) == build_context("c1", events, **kw)


@pytest.mark.parametrize("window", [RECENT_WINDOW, 255])  # 255: the whole ring is left out of the summary
def test_the_summary_layer_covers_what_precedes_the_recent_window(window: int) -> None:
    events = realistic(600)
    ctx = build_context("c1", events, budget_tokens=100_000, recent_window=window)
    summary = next(layer for layer in ctx.layers if layer.name == "summary")
    older = rolling_summary("c1", events[: -(window + 1)], keep_recent=0)
    assert summary.text == older["markdown"] and ctx.summary_ref == older["summary_ref"]
    assert summary.covers["seqs"] == [1, 600 - window - 1]
