"""Deployment tests run the real supervisors (supervisord, honcho) on the files in deploy/.

The daemon they start hears ``NOTIFY_SOCKET`` through the supervisor's environment and
sends ``READY=1`` with its pid to our datagram socket: readiness without polling.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.daemon.conftest import NotifyListener, child_env

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # sidecar, supervisord and honcho, installed by ./dev


@dataclass
class Site:
    """A temp dir laid out as a deployment: data dir, socket, and the environment to run in."""

    dir: Path
    data_dir: Path
    socket_path: str
    notify: NotifyListener
    env: dict[str, str]


def ready_pid(notify: NotifyListener, context=str) -> int:
    """Wait for READY=1 and return the MAINPID it carries."""
    msg = notify.wait_for("READY=1", context=context)
    fields = dict(line.split("=", 1) for line in msg.split("\n") if "=" in line)
    return int(fields["MAINPID"])


@pytest.fixture
def site(tmp_path: Path):
    for tool in ("sidecar", "supervisord", "supervisorctl", "honcho"):
        assert (BIN / tool).exists(), f"{tool} is not installed in {BIN}: run ./dev test"
    notify = NotifyListener(str(tmp_path / "notify"))
    env = child_env(
        {
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "SIDECAR_DATA_DIR": str(tmp_path / "data"),
            "SIDECAR_SOCKET": str(tmp_path / "run" / "sidecar.sock"),
            "NOTIFY_SOCKET": notify.path,
        }
    )
    yield Site(tmp_path, tmp_path / "data", env["SIDECAR_SOCKET"], notify, env)
    notify.close()
