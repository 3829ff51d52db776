"""A replica's writes (:meth:`EventStore.copy`): events another log placed are written as they
are, each at exactly its seq, so that the copy serves every read the source would."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from sidecar.errors import ConflictError
from sidecar.log.events import Event
from sidecar.log.store import EventStore


def source_events(tmp_path: Path, n: int) -> list[Event]:
    with EventStore(str(tmp_path / "source")) as source:
        for i in range(n):
            source.append({"conversation_id": "c", "type": "agent.progress", "agent_id": "a", "data": {"i": i}})
        return source.tail("c", n)


def test_a_copy_holds_the_same_events_and_survives_a_restart(tmp_path: Path) -> None:
    events = source_events(tmp_path, 5)
    copy_dir = str(tmp_path / "copy")
    with EventStore(copy_dir) as copy:
        results = copy.copy(events[:3]) + copy.copy(events[3:])
        assert [r.seq for r in results] == [1, 2, 3, 4, 5] and not any(r.duplicate for r in results)
        assert copy.tail("c", 10) == events
    with EventStore(copy_dir) as copy:
        copy.load()
        assert copy.last_seqs() == {"c": 5}  # where a copy starts from, without reading again
        assert copy.tail("c", 10) == events
        assert copy.get(events[2].id) == events[2]
        # The copy's own appends follow on: the next seq, and the writer's clock after the copied ones.
        mine = copy.append({"conversation_id": "c", "type": "agent.progress", "agent_id": "a"})
        assert mine.seq == 6 and mine.clock["a"] == events[-1].clock["a"] + 1


def test_a_redelivered_event_is_a_duplicate_and_a_gap_or_another_event_is_refused(tmp_path: Path) -> None:
    events = source_events(tmp_path, 4)
    with EventStore(str(tmp_path / "copy")) as copy:
        copy.copy(events[:2])
        again = copy.copy(events[1:3])  # a feed delivering the second one twice
        assert [(r.seq, r.duplicate) for r in again] == [(2, True), (3, False)]
        with pytest.raises(ConflictError) as gap:
            copy.copy([msgspec.structs.replace(events[3], seq=5)])
        assert gap.value.data == {"conversation_id": "c", "seq": 5, "last_seq": 3}
        with pytest.raises(ConflictError):  # a different event at a seq the copy has
            copy.copy([msgspec.structs.replace(events[3], seq=2)])
        assert [e.seq for e in copy.tail("c", 10)] == [1, 2, 3]  # nothing of a refused copy was written
