"""Shared fixtures: every test gets its own data directory under pytest's tmp_path."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.clock import ManualClock
from sidecar.log import EventStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(data_dir: Path, clock: ManualClock) -> Iterator[EventStore]:
    with EventStore(data_dir, clock=clock) as s:
        yield s


@pytest.fixture
def python_env() -> dict[str, str]:
    """Environment for child Python processes that must import this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def python() -> str:
    return sys.executable
