"""Finding a line by seq or time inside one segment: the guess from the sizes, the binary
search, and what they do around uneven lines and damage."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.log.segments import DECODE_ERRORS, bisect_lines, line_with_seq, seq_of, timestamp_of


def segment(path: Path, first_seq: int, count: int, seed: int = 7) -> list[bytes]:
    """A segment of ``count`` lines of uneven sizes (10 bytes to 3 KiB of padding)."""
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        seq = first_seq + i
        ts = f"2026-11-29T10:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}Z"
        doc = {"id": f"e{seq}", "seq": seq, "timestamp": ts, "conversation_id": "c", "type": "a.b"}
        doc["data"] = {"pad": "x" * rng.choice([10, 50, 200, 3000])}
        lines.append(json.dumps(doc, separators=(",", ":")).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


@pytest.mark.parametrize("first_seq", [1, 501])
def test_every_seq_is_found_with_and_without_the_guess(tmp_path: Path, first_seq: int) -> None:
    path = tmp_path / "seg.jsonl"
    lines = segment(path, first_seq, 600)
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        for i, line in enumerate(lines):
            assert line_with_seq(fd, end, first_seq + i, first_seq) == line
            assert line_with_seq(fd, end, first_seq + i) == line
        assert line_with_seq(fd, end, first_seq - 1, first_seq) is None
        assert line_with_seq(fd, end, first_seq + 600, first_seq) is None
    finally:
        os.close(fd)


def test_a_damaged_line_near_the_guess_leaves_the_others_findable(tmp_path: Path) -> None:
    path = tmp_path / "seg.jsonl"
    lines = segment(path, 1, 400)
    data = path.read_bytes()
    at = data.index(lines[200])
    path.write_bytes(data[:at] + b"#" * len(lines[200]) + data[at + len(lines[200]) :])  # same size
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        for seq in (1, 2, 150, 350, 399, 400):
            assert line_with_seq(fd, end, seq, 1) == lines[seq - 1]
        with pytest.raises(DECODE_ERRORS):
            line_with_seq(fd, end, 201, 1)  # the damage itself is reported, as it always was
    finally:
        os.close(fd)


def test_bisect_by_time_finds_the_first_line_at_or_after(tmp_path: Path) -> None:
    path = tmp_path / "seg.jsonl"
    lines = segment(path, 1, 500)
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        starts, at = [], 0
        for line in lines:
            starts.append(at)
            at += len(line) + 1
        for i in (0, 1, 77, 250, 499):
            ts = timestamp_of(lines[i])
            assert bisect_lines(fd, 0, end, timestamp_of, ts) == starts[i]
            assert bisect_lines(fd, 0, end, seq_of, i + 1) == starts[i]
        assert bisect_lines(fd, 0, end, timestamp_of, "2027") == end
    finally:
        os.close(fd)


def test_a_search_by_time_that_meets_damage_refuses_that_conversation_only(tmp_path: Path) -> None:
    """Found by ./dev fuzz: a blank line where the binary search looked escaped as msgspec's
    DecodeError (-32603 through the daemon); now the conversation is refused, the others read."""
    from sidecar.errors import CorruptLogError
    from sidecar.log import EventStore

    data = tmp_path / "data"
    with EventStore(data) as store:
        store.append({"conversation_id": "ok", "type": "a.b"})
    good = segment(tmp_path / "c1.jsonl", 1, 3)
    (data / "logs" / "c1.jsonl").write_bytes(good[0] + b"\n\n" + good[1] + b"\n" + good[2] + b"\n")
    with EventStore(data) as store:
        page = store.since("2000-01-01T00:00:00Z", limit=10)
        assert [e.conversation_id for e in page.events] == ["ok"]
        with pytest.raises(CorruptLogError, match="damaged line"):
            store.query(conversation_id="c1", start="2026-11-29T10:00:01Z")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.sampled_from([0, 5, 60, 400, 2500, 9000]), min_size=1, max_size=120),
    first_seq=st.integers(1, 5000),
    probe=st.integers(-3, 130),
    blank=st.none() | st.integers(0, 130),
)
def test_the_guess_finds_what_a_scan_finds(
    tmp_path: Path, sizes: list[int], first_seq: int, probe: int, blank: int | None
) -> None:
    """Whatever the line sizes (uneven, some far past a guess's read), a seq is found
    exactly when a scan of the lines finds it, with the guess and without. With a blank
    line in the way (damage), the answer is still never another line: it is the right one,
    or the decoder's error, as the binary search alone always gave."""
    lines = []
    for i, n in enumerate(sizes):
        seq = first_seq + i
        doc = {"id": f"e{seq}", "seq": seq, "timestamp": f"2026-11-29T10:00:00.{i:06d}Z", "conversation_id": "c"}
        lines.append(json.dumps({**doc, "type": "a.b", "data": {"pad": "x" * n}}).encode())
    seq = first_seq + probe
    expected = next((line for line in lines if json.loads(line)["seq"] == seq), None)
    if blank is not None:
        lines.insert(min(blank, len(lines)), b"")
    path = tmp_path / f"seg-{len(sizes)}-{first_seq}-{probe}-{blank}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        for first in (first_seq, None):
            try:
                assert line_with_seq(fd, end, seq, first) == expected
            except DECODE_ERRORS:
                assert blank is not None  # only damage may stop the search
    finally:
        os.close(fd)
