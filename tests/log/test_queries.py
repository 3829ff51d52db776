"""Queries: tail, get, since, by_type, query with paging, causality, conversations."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sidecar.clock import ManualClock
from sidecar.errors import InvalidParams
from sidecar.log import EventStore, scan
from sidecar.log.filter import Matcher, as_filter
from sidecar.log.timestamps import format_timestamp


def ev(cid: str = "c1", type_: str = "agent.progress", **kw: object) -> dict:
    return {"conversation_id": cid, "type": type_, **kw}


@pytest.fixture
def busy(store: EventStore, clock: ManualClock) -> EventStore:
    """Three conversations interleaved in time, one event per simulated second."""
    plan = [
        ("a", "agent.progress", "status", "coder", 1),
        ("b", "user.message", "internal", None, 1),
        ("a", "agent.progress", "internal", "search", 2),
        ("c", "task.updated", "status", "coder", None),
        ("b", "agent.error", "internal", "rag", 2),
        ("a", "task.updated", "internal", "coder", 3),
        ("c", "agent.progress", "status", "rag", 1),
        ("b", "agent.progress", "status", "coder", 3),
    ]
    for cid, type_, vis, agent, turn in plan:
        store.append(ev(cid, type_, visibility=vis, agent_id=agent, turn=turn))
        clock.advance(1)
    return store


def keys(events) -> list[tuple[str, int]]:
    return [(e.conversation_id, e.seq) for e in events]


def test_tail(busy: EventStore) -> None:
    assert keys(busy.tail("a", 2)) == [("a", 2), ("a", 3)]
    assert keys(busy.tail("a", 50)) == [("a", 1), ("a", 2), ("a", 3)]
    assert busy.tail("a", 0) == []
    assert busy.tail("nobody") == []
    with pytest.raises(InvalidParams):
        busy.tail("../a")
    with pytest.raises(InvalidParams):
        busy.tail("a", -1)


def test_get(busy: EventStore) -> None:
    target = busy.tail("b", 1)[0]
    assert busy.get(target.id) == target
    assert busy.get(target.id.upper()) == target
    assert busy.get(str(uuid.uuid4())) is None
    with pytest.raises(InvalidParams):
        busy.get("not-an-id")


def test_get_sees_events_written_by_another_store(data_dir: Path, busy: EventStore) -> None:
    busy.get(busy.tail("a", 1)[0].id)  # index everything now
    with EventStore(data_dir) as other:
        ack = other.append(ev("d"))
    assert busy.get(ack.id).conversation_id == "d"


def test_since_spans_conversations_in_time_order(busy: EventStore, clock: ManualClock) -> None:
    start = clock.now_ns() - 8 * 10**9  # the first event's time
    all_events = busy.since(format_timestamp(start)).events
    assert keys(all_events) == [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 2), ("a", 3), ("c", 2), ("b", 3)]
    later = busy.since(format_timestamp(start + 5 * 10**9)).events
    assert keys(later) == [("a", 3), ("c", 2), ("b", 3)]
    assert busy.since("2999-01-01T00:00:00Z").events == []


def test_paging_with_cursor_returns_everything_once(busy: EventStore) -> None:
    seen = []
    cursor = None
    pages = 0
    while True:
        page = busy.since("2000-01-01", limit=3, cursor=cursor)
        seen.extend(keys(page.events))
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3 and len(seen) == 8 and len(set(seen)) == 8
    assert seen == keys(busy.since("2000-01-01").events)


def test_cursor_survives_new_writes(busy: EventStore, clock: ManualClock) -> None:
    page = busy.since("2000-01-01", limit=7)
    busy.append(ev("a"))
    rest = busy.since("2000-01-01", limit=100, cursor=page.next_cursor).events
    assert keys(rest) == [("b", 3), ("a", 4)]


def test_bad_cursor(busy: EventStore) -> None:
    with pytest.raises(InvalidParams, match="cursor"):
        busy.since("2000-01-01", cursor="garbage!")


def test_by_type(busy: EventStore) -> None:
    assert keys(busy.by_type("task.updated").events) == [("c", 1), ("a", 3)]
    assert keys(busy.by_type(["agent.progress"], "status").events) == [("a", 1), ("c", 2), ("b", 3)]
    assert busy.by_type("never.seen").events == []


def test_query_filters(busy: EventStore, clock: ManualClock) -> None:
    assert keys(busy.query(agent_ids=["rag"]).events) == [("b", 2), ("c", 2)]
    assert keys(busy.query(conversation_id="a", turn_start=2).events) == [("a", 2), ("a", 3)]
    assert keys(busy.query(turn_start=2, turn_end=2).events) == [("a", 2), ("b", 2)]
    assert keys(busy.query(visibility=["status"], types=["agent.progress"], agent_ids=["coder"]).events) == [
        ("a", 1),
        ("b", 3),
    ]
    t0 = clock.now_ns() - 8 * 10**9
    window = busy.query(start=format_timestamp(t0 + 2 * 10**9), end=format_timestamp(t0 + 4 * 10**9))
    assert keys(window.events) == [("a", 2), ("c", 1), ("b", 2)]
    assert busy.query(levels=["milestone"]).events == []
    with pytest.raises(InvalidParams):
        busy.query(bogus=1)
    with pytest.raises(InvalidParams):
        busy.query(limit=0)


def test_the_whole_match_agrees_with_query(busy: EventStore, clock: ManualClock) -> None:
    """``Matcher.matches`` (what a live subscription applies to each commit) picks out of
    every event exactly what ``query`` returns for the same filter."""
    everything = busy.query().events
    t0 = clock.now_ns() - 8 * 10**9
    filters: list[dict] = [
        {},
        {"conversation_id": "a"},
        {"conversation_id": "b", "from_seq": 2},
        {"from_seq": 3},
        {"start": format_timestamp(t0 + 2 * 10**9), "end": format_timestamp(t0 + 4 * 10**9)},
        {"conversation_id": "c", "start": format_timestamp(t0 + 4 * 10**9)},
        {"agent_ids": ["rag"], "end": format_timestamp(t0 + 5 * 10**9)},
        {"turn_start": 2, "turn_end": 2},
        {"visibility": "status", "types": ["agent.progress"], "from_seq": 2},
        {"levels": ["milestone"]},
    ]
    for fields in filters:
        match = Matcher(as_filter(fields))
        assert keys(e for e in everything if match.matches(e)) == keys(busy.query(**fields).events), fields


def test_filter_by_agent_with_characters_json_escapes(store: EventStore) -> None:
    odd = 'agent "quoted" \\ ñ'
    store.append(ev(agent_id=odd))
    store.append(ev(agent_id="plain"))
    assert [e.agent_id for e in store.query(agent_ids=[odd]).events] == [odd]


def test_conversations(busy: EventStore) -> None:
    info = {c.conversation_id: c for c in busy.conversations()}
    assert sorted(info) == ["a", "b", "c"]
    assert info["a"].event_count == 3 and info["a"].last_seq == 3
    assert info["a"].first_timestamp < info["a"].last_timestamp
    assert info["c"].first_timestamp == busy.tail("c", 2)[0].timestamp


def test_causality(store: EventStore) -> None:
    root = store.append(ev(type_="user.message"))
    plan = store.append(ev(type_="agent.plan", caused_by=[root.id]))
    step1 = store.append(ev(type_="agent.step", caused_by=[plan.id]))
    step2 = store.append(ev("other", "agent.step", caused_by=[plan.id]))
    done = store.append(ev(type_="agent.done", caused_by=[step1.id, step2.id]))
    store.append(ev(type_="unrelated"))

    c = store.causality(plan.id)
    assert [e.id for e in c.upstream] == [root.id]
    assert {e.id for e in c.downstream} == {step1.id, step2.id, done.id}
    assert not c.truncated and c.missing == []

    shallow = store.causality(root.id, max_depth=1)
    assert [e.id for e in shallow.downstream] == [plan.id] and shallow.truncated
    assert store.causality(str(uuid.uuid4())) is None


def test_causality_survives_cycles_and_missing_parents(store: EventStore) -> None:
    a_id, b_id, ghost = (str(uuid.uuid4()) for _ in range(3))
    store.append(ev(id=a_id, caused_by=[b_id, ghost]))
    store.append(ev(id=b_id, caused_by=[a_id]))
    c = store.causality(a_id)
    assert [e.id for e in c.upstream] == [b_id]
    assert [e.id for e in c.downstream] == [b_id]
    assert c.missing == [ghost]


def test_seq_range_reads_from_its_first_seq_up_to_its_bound_and_no_further(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append_many([ev("long") for _ in range(300)])
    decoded: list[int] = []
    real = scan.decode_lines

    def counting(lines: list[bytes], cid: str) -> list:
        decoded.append(len(lines))
        return real(lines, cid)

    monkeypatch.setattr(scan, "decode_lines", counting)
    assert [e.seq for e in store.seq_range("long", 120, 124, limit=100)] == [120, 121, 122, 123, 124]
    assert sum(decoded) <= 6  # the lines asked for (and the one past the bound), not the 176 after them
    assert [e.seq for e in store.seq_range("long", 3, 200, limit=2)] == [3, 4]
    assert store.seq_range("long", 301, 400, limit=5) == []
    assert store.seq_range("nobody", 1, 5, limit=5) == []
