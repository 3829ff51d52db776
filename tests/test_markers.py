"""The slow marker names real places: a renamed test file must not slip into the quick run."""

from __future__ import annotations

from tests.conftest import ROOT, SLOW


def test_every_slow_path_exists() -> None:
    missing = [path for path in SLOW if not (ROOT / path).exists()]
    assert not missing, f"tests/conftest.py SLOW names paths that do not exist: {missing}"
