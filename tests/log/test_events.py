"""The event schema: what writers may send, how ids and timestamps are made."""

from __future__ import annotations

import re
import uuid

import msgspec
import pytest

from sidecar.errors import InvalidParams
from sidecar.log.events import Event, NewEvent, as_new_event, decode_event, encode_event
from sidecar.log.ids import Uuid7Factory
from sidecar.log.timestamps import format_timestamp, normalize_timestamp

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def test_minimal_event_gets_defaults() -> None:
    ev = as_new_event({"conversation_id": "c1", "type": "agent.progress"})
    assert (ev.visibility, ev.level, ev.caused_by, ev.data, ev.id) == ("internal", "action", [], {}, None)


@pytest.mark.parametrize(
    "cid",
    ["../etc/passwd", "a/b", "a..b", ".hidden", "", "x" * 129, "-dash", "a b", "a\x00b", "..", "/abs", "é"],
)
def test_conversation_ids_that_could_escape_or_confuse_are_refused(cid: str) -> None:
    with pytest.raises(InvalidParams, match="conversation_id"):
        as_new_event({"conversation_id": cid, "type": "x"})


@pytest.mark.parametrize("cid", ["c1", "A.b-c_d", "x" * 128, "0", "conv.000000000001-000000000002"])
def test_valid_conversation_ids(cid: str) -> None:
    assert as_new_event({"conversation_id": cid, "type": "x"}).conversation_id == cid


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"bogus": 1}, "bogus"),
        ({"type": "Agent.Progress"}, "type"),
        ({"type": 5}, "type"),
        ({"visibility": "everyone"}, "visibility"),
        ({"level": "loud"}, "level"),
        ({"turn": -1}, "turn"),
        ({"turn": "3"}, "turn"),
        ({"id": "not-a-uuid"}, "id"),
        ({"caused_by": ["nope"]}, "caused_by"),
        ({"data": [1, 2]}, "data"),
        ({"agent_id": ""}, "agent_id"),
    ],
)
def test_bad_fields_are_refused_with_the_field_named(patch: dict, field: str) -> None:
    with pytest.raises(InvalidParams) as info:
        as_new_event({"conversation_id": "c", "type": "a.b", **patch})
    assert field in info.value.message


@pytest.mark.parametrize("field", ["seq", "timestamp"])
def test_sidecar_assigned_fields_are_refused(field: str) -> None:
    with pytest.raises(InvalidParams, match="assigned by the sidecar"):
        as_new_event({"conversation_id": "c", "type": "a", field: 1})


def test_non_object_is_refused() -> None:
    with pytest.raises(InvalidParams, match="JSON object"):
        as_new_event(["not", "an", "event"])  # type: ignore[arg-type]


def test_struct_input_is_validated_too() -> None:
    with pytest.raises(InvalidParams):
        as_new_event(NewEvent(conversation_id="../x", type="a"))


def test_uuid_spelling_is_canonical() -> None:
    upper = str(uuid.uuid4()).upper()
    ev = as_new_event({"conversation_id": "c", "type": "a", "id": upper, "caused_by": [upper]})
    assert ev.id == upper.lower() and ev.caused_by == [upper.lower()]


def test_stored_line_round_trips_and_keeps_required_fields() -> None:
    ev = Event(
        id=str(uuid.uuid4()),
        seq=1,
        timestamp="2026-11-23T10:00:00.000000Z",
        conversation_id="c",
        type="a.b",
        visibility="status",
        level="state",
        caused_by=[],
        data={"k": "v"},
    )
    line = encode_event(ev)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    raw = msgspec.json.decode(line)
    assert list(raw)[:3] == ["id", "seq", "timestamp"]
    for required in ("conversation_id", "type", "visibility", "level", "caused_by", "data"):
        assert required in raw
    assert "agent_id" not in raw  # optional fields may be absent
    assert decode_event(line.strip()) == ev


def test_uuid7_is_valid_and_time_ordered() -> None:
    make = Uuid7Factory().new
    ids = [make(1_790_000_000_000) for _ in range(5000)] + [make(1_790_000_000_001)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == 1_790_000_000_000


def test_uuid7_stays_ordered_when_the_clock_steps_back() -> None:
    make = Uuid7Factory().new
    a = make(2_000_000_000_000)
    b = make(1_000_000_000_000)
    assert b > a


def test_timestamp_format() -> None:
    ts = format_timestamp(1_790_000_000_123_456_789)
    assert TS_RE.match(ts) and ts.endswith(".123456Z")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2026-11-23T10:00:00Z", "2026-11-23T10:00:00.000000Z"),
        ("2026-11-23T12:00:00.5+02:00", "2026-11-23T10:00:00.500000Z"),
        ("2026-11-23", "2026-11-23T00:00:00.000000Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z"),
    ],
)
def test_normalize_timestamp(given: str, expected: str) -> None:
    assert normalize_timestamp(given) == expected


def test_normalize_rejects_garbage() -> None:
    with pytest.raises(InvalidParams, match="RFC 3339"):
        normalize_timestamp("yesterday")


def test_uuid7_differs_in_a_forked_child() -> None:
    import os

    from sidecar.log.ids import new_event_id

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, new_event_id(1_790_000_000_000).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 64).decode()
    assert child != new_event_id(1_790_000_000_000)
