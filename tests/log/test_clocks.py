"""Vector clocks (contract §14): computed in the writer, checked when sent, kept across restarts,
and in agreement with happens-before on random histories."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.errors import ConflictError, InvalidParams, NotFoundError
from sidecar.log.clocks import MAX_CLOCK_WRITERS, ClockState, compare
from sidecar.log.store import EventStore

WRITERS = ["A", "B", "C", None]  # None: the sidecar itself

# A history: each step is (writer index, indexes of earlier events it names in caused_by).
steps = st.lists(
    st.tuples(st.integers(0, len(WRITERS) - 1), st.lists(st.integers(0, 10_000), max_size=3)),
    min_size=1,
    max_size=25,
)


def happened_before(history: list[tuple[int, list[int]]]) -> list[set[int]]:
    """For each event, every event that happened before it: the transitive closure of each
    writer's own order and of caused_by."""
    before: list[set[int]] = []
    last_of: dict[int, int] = {}
    for i, (w, causes) in enumerate(history):
        past: set[int] = set()
        direct = list(causes) + ([last_of[w]] if w in last_of else [])
        for j in direct:
            past |= {j} | before[j]
        before.append(past)
        last_of[w] = i
    return before


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=steps)
def test_clocks_agree_with_happens_before_on_random_histories(raw: list[tuple[int, list[int]]], tmp_path: Path) -> None:
    history = [(w, sorted({c % i for c in causes}) if i else []) for i, (w, causes) in enumerate(raw)]
    expected = happened_before(history)
    with EventStore(tmp_path / f"d{len(list(tmp_path.iterdir()))}") as store:
        ids: list[str] = []
        for w, causes in history:
            result = store.append(
                {"conversation_id": "c", "type": "x.y", "agent_id": WRITERS[w], "caused_by": [ids[j] for j in causes]}
            )
            ids.append(result.id)
        events = store.query(conversation_id="c", limit=None).events
        clocks = [e.clock for e in events]
        for i in range(len(history)):
            for j in range(len(history)):
                order = compare(clocks[i], clocks[j])
                if i == j:
                    want = "equal"
                elif i in expected[j]:
                    want = "before"
                elif j in expected[i]:
                    want = "after"
                else:
                    want = "concurrent"
                assert order == want, (i, j, history, clocks)
        a, b = ids[0], ids[-1]
        assert store.compare(a, b) == compare(clocks[0], clocks[-1])


def test_a_clock_counts_each_writer_once_per_event_and_merges_causes(tmp_path: Path) -> None:
    with EventStore(tmp_path) as store:
        a1 = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "A"})
        b1 = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "B"})
        b2 = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "B", "caused_by": [a1.id]})
        s1 = store.append({"conversation_id": "c", "type": "x.y"})
        assert (a1.clock, b1.clock, b2.clock, s1.clock) == ({"A": 1}, {"B": 1}, {"A": 1, "B": 2}, {"sidecar": 1})
        assert store.get(b2.id).clock == {"A": 1, "B": 2}  # stored as answered
        assert store.compare(a1.id, b2.id) == "before" and store.compare(b2.id, a1.id) == "after"
        assert store.compare(a1.id, b1.id) == "concurrent" and store.compare(a1.id, a1.id) == "equal"


def test_a_cause_in_another_conversation_is_not_merged(tmp_path: Path) -> None:
    with EventStore(tmp_path) as store:
        elsewhere = store.append({"conversation_id": "d", "type": "x.y", "agent_id": "A"})
        here = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "B", "caused_by": [elsewhere.id]})
        assert here.clock == {"B": 1}
        with pytest.raises(InvalidParams, match="two conversations"):
            store.compare(elsewhere.id, here.id)
        with pytest.raises(NotFoundError):
            store.compare(here.id, "0190a1b2-c3d4-7e5f-8a6b-9c0d1e2f3a4b")


def test_a_sent_clock_is_stored_as_sent_when_it_does_not_go_back(tmp_path: Path) -> None:
    with EventStore(tmp_path) as store:
        store.append({"conversation_id": "c", "type": "x.y", "agent_id": "A"})
        b = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "B"})
        sent = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "A", "clock": {"A": 5, "B": 1}})
        assert sent.clock == {"A": 5, "B": 1} and store.compare(b.id, sent.id) == "before"
        # The daemon's next clock for A goes on from what A sent.
        assert store.append({"conversation_id": "c", "type": "x.y", "agent_id": "A"}).clock == {"A": 6, "B": 1}


@pytest.mark.parametrize(
    ("clock", "reason"),
    [
        ({"A": 2}, "not past 2"),  # own counter not past the previous
        ({"A": 3}, "behind the writer's previous clock in 'B'"),  # drops B's entry
        ({"B": 1}, "not past 2"),  # no own entry at all
    ],
)
def test_a_sent_clock_that_goes_back_is_refused_and_nothing_is_written(
    tmp_path: Path, clock: dict[str, int], reason: str
) -> None:
    with EventStore(tmp_path) as store:
        b = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "B"})
        store.append({"conversation_id": "c", "type": "x.y", "agent_id": "A"})
        store.append({"conversation_id": "c", "type": "x.y", "agent_id": "A", "caused_by": [b.id]})  # {A:2, B:1}
        with pytest.raises(ConflictError, match=reason) as err:
            store.append({"conversation_id": "c", "type": "x.y", "agent_id": "A", "clock": clock})
        assert err.value.data["previous"] == {"A": 2, "B": 1} and err.value.data["floor"] == 2
        assert len(store.query(conversation_id="c", limit=None).events) == 3


def test_a_sent_clock_is_validated_by_name(tmp_path: Path) -> None:
    with EventStore(tmp_path) as store:
        for bad in ({"A": 0}, {"A": -1}, {"": 1}, {"A": "1"}):
            with pytest.raises(InvalidParams, match="clock"):
                store.append({"conversation_id": "c", "type": "x.y", "agent_id": "A", "clock": bad})


def test_clocks_go_on_after_a_restart(tmp_path: Path) -> None:
    with EventStore(tmp_path) as store:
        a = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "A"})
        store.append({"conversation_id": "c", "type": "x.y", "agent_id": "B", "caused_by": [a.id]})
    with EventStore(tmp_path) as store:
        b = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "B"})
        assert b.clock == {"A": 1, "B": 2}
        later = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "A", "caused_by": [b.id]})
        assert later.clock == {"A": 2, "B": 2}


def test_a_request_refused_midway_leaves_no_clock_behind(tmp_path: Path) -> None:
    """All or nothing: a refused append_many's staged events do not move any writer's clock."""
    with EventStore(tmp_path) as store:
        store.append({"conversation_id": "c", "type": "x.y", "agent_id": "A"})
        with pytest.raises(ConflictError):
            store.append_many(
                [
                    {"conversation_id": "c", "type": "x.y", "agent_id": "A"},
                    {"conversation_id": "c", "type": "x.y", "agent_id": "A", "clock": {"A": 1}},
                ]
            )
        assert store.append({"conversation_id": "c", "type": "x.y", "agent_id": "A"}).clock == {"A": 2}


def test_a_clock_has_at_most_max_writers() -> None:
    state = ClockState()
    causes = [{f"w{i}": 1} for i in range(MAX_CLOCK_WRITERS)]
    with pytest.raises(InvalidParams, match="writers") as err:
        state.next_clock("me", causes)
    assert err.value.data["field"] == "caused_by"


def test_events_written_before_clocks_are_ordered_by_writer_and_causes(tmp_path: Path) -> None:
    """A log from before clocks: compare falls back on each writer's order and caused_by."""
    with EventStore(tmp_path) as store:
        store._writer.clocks = False
        a = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "A"})
        b = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "B"})
        c = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "C", "caused_by": [b.id]})
        a2 = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "A"})
        assert store.get(a.id).clock == {}
        assert store.compare(a.id, a2.id) == "before"
        assert store.compare(c.id, b.id) == "after"
        assert store.compare(a.id, c.id) == "concurrent"


def test_a_cause_older_than_what_is_kept_in_memory_is_read_back_for_its_clock(tmp_path: Path) -> None:
    with EventStore(tmp_path, rotate_bytes=4000) as store:
        old = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "early"})
        for _ in range(400):  # past the newest events kept in memory, and into archived segments
            store.append({"conversation_id": "c", "type": "x.y", "agent_id": "B", "data": {"pad": "x" * 40}})
        late = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "C", "caused_by": [old.id]})
        again = store.append({"conversation_id": "c", "type": "x.y", "agent_id": "D", "caused_by": [old.id]})
        assert late.clock == {"early": 1, "C": 1} and again.clock == {"early": 1, "D": 1}
        assert store.compare(old.id, late.id) == "before"
