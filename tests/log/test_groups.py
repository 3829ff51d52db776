"""Consumer groups' positions: forward only, bounded, and a damaged file never trusted."""

from __future__ import annotations

import pytest

from sidecar.errors import OverloadedError
from sidecar.log import groups


def test_the_positions_a_client_can_make_us_keep_are_bounded(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(groups, "MAX_POSITIONS", 3)
    positions = groups.Positions(str(tmp_path))
    for i in range(3):
        positions.ack(f"g{i}", "c1", 1)
    assert positions.ack("g0", "c1", 5) == 5  # a known one still moves
    try:
        positions.ack("g3", "c1", 1)
        raise AssertionError("a fourth position was kept")
    except OverloadedError as exc:
        assert exc.data == {"max_positions": 3}
    assert len(positions.acked) == 3


def test_positions_move_forward_and_come_back_from_the_file(tmp_path) -> None:
    positions = groups.Positions(str(tmp_path))
    assert positions.ack("g", "c1", 4) == 4 and positions.ack("g", "c1", 2) == 4
    assert positions.flush() and not positions.flush()  # nothing new: no write
    assert (tmp_path / groups.GROUPS_FILE).stat().st_mode & 0o777 == 0o600
    again = groups.Positions(str(tmp_path))
    again.load()
    assert again.get("g", "c1") == 4 and again.get("g", "c2") is None


@pytest.mark.parametrize("content", [b"{not json", b'{"groups": [{"group": 1}]}', b"\xff\xfe"])
def test_a_damaged_file_is_kept_aside(tmp_path, content: bytes) -> None:
    (tmp_path / "archive").mkdir()
    (tmp_path / groups.GROUPS_FILE).write_bytes(content)
    positions = groups.Positions(str(tmp_path))
    positions.load()
    assert positions.acked == {} and not (tmp_path / groups.GROUPS_FILE).exists()
    (kept,) = (tmp_path / "archive").iterdir()
    assert kept.read_bytes() == content
