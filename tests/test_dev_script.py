"""``./dev`` itself: what ``serve`` installs and where it keeps its data, and how ``test`` reports.

The real script runs in a temp dir whose ``.venv/bin/python``, ``.venv/bin/sidecar``, ``npm`` and
``node`` are small recording stand-ins: the control flow is tested exactly, without installing or
running the real suites (which would run this test again).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = """#!/bin/sh
echo "python $*" >> "$DEV_LOG"
case "$*" in *"-m pytest"*) exit "${PYTEST_EXIT:-0}" ;; *guard.py*) exit "${GUARD_EXIT:-0}" ;; esac
exit 0
"""
FAKE_SIDECAR = """#!/bin/sh
echo "sidecar SIDECAR_DATA_DIR=${SIDECAR_DATA_DIR-unset} $*" >> "$DEV_LOG"
"""
FAKE_NPM = """#!/bin/sh
echo "npm $* in ${PWD##*/}" >> "$DEV_LOG"
[ "$1" = test ] && exit "${NPM_TEST_EXIT:-0}"
exit 0
"""


def executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def dev(tmp_path: Path) -> Callable[..., tuple[subprocess.CompletedProcess[str], list[str]]]:
    """``dev(*args, **env)`` runs a copy of ./dev among stand-ins; returns the run and what they logged."""
    shutil.copy(ROOT / "dev", tmp_path / "dev")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "clients" / "typescript").mkdir(parents=True)
    executable(tmp_path / ".venv" / "bin" / "python", FAKE_PYTHON)
    executable(tmp_path / ".venv" / "bin" / "sidecar", FAKE_SIDECAR)
    executable(tmp_path / "bin" / "npm", FAKE_NPM)
    executable(tmp_path / "bin" / "node", "#!/bin/sh\necho v20.0.0\n")
    log = tmp_path / "log"

    def run(*args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
        log.write_text("")
        base = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        base.update(PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", PYTHON=sys.executable, DEV_LOG=str(log))
        base.update(SIDECAR_BROWSER="/nonexistent/chromium")  # no browser install here
        done = subprocess.run(
            ["bash", str(tmp_path / "dev"), *args], env={**base, **env}, capture_output=True, text=True, timeout=60
        )
        return done, log.read_text().splitlines()

    return run


def test_serve_installs_the_package_and_its_console_and_keeps_data_out_of_the_checkout(dev) -> None:
    run, log = dev("serve", "--socket", "/tmp/s.sock")
    assert run.returncode == 0, run.stderr
    install = [line for line in log if "pip install" in line]
    assert len(install) == 1 and install[0].endswith(" -e .[web,mcp]")  # the console, but no test extra
    assert log[-1] == "sidecar SIDECAR_DATA_DIR=var/data serve --socket /tmp/s.sock"

    run, log = dev("serve", SIDECAR_DATA_DIR="/srv/mine")
    assert not any("pip install" in line for line in log)  # installed once per pyproject.toml
    assert log[-1] == "sidecar SIDECAR_DATA_DIR=/srv/mine serve"  # the environment still chooses


def test_test_installs_the_test_extra_which_also_serves(dev) -> None:
    dev("serve")
    run, log = dev("test", "tests/x.py")
    assert [line for line in log if "pip install" in line][0].endswith(" -e .[test,web,mcp,jetstream]")
    run, log = dev("serve")
    assert not any("pip install" in line for line in log)


@pytest.mark.parametrize(
    ("pytest_exit", "npm_exit", "guard_exit", "verdict"),
    [
        ("0", "0", "0", "Python tests passed; TypeScript tests passed; speed guard passed"),
        ("1", "0", "0", "Python tests FAILED (exit 1); TypeScript tests passed; speed guard passed"),
        ("0", "3", "0", "Python tests passed; TypeScript tests FAILED (exit 3); speed guard passed"),
        ("2", "1", "0", "Python tests FAILED (exit 2); TypeScript tests FAILED (exit 1); speed guard passed"),
        ("0", "0", "1", "Python tests passed; TypeScript tests passed; speed guard FAILED (exit 1)"),
    ],
)
def test_the_whole_suite_runs_all_three_and_reports_each(
    dev, pytest_exit: str, npm_exit: str, guard_exit: str, verdict: str
) -> None:
    run, log = dev("test", PYTEST_EXIT=pytest_exit, NPM_TEST_EXIT=npm_exit, GUARD_EXIT=guard_exit)
    steps = [line for line in log if "pip install" not in line]
    assert steps == [
        "python -m pytest",
        "npm ci --no-audit --no-fund --loglevel=error in typescript",
        "npm test in typescript",
        "python bench/guard.py",
    ]
    assert run.stderr.splitlines()[-1] == f"dev: {verdict}"
    assert (run.returncode == 0) == (pytest_exit == npm_exit == guard_exit == "0")


def test_bench_guard_runs_the_guard_alone_without_the_bench_extra(dev) -> None:
    run, log = dev("bench", "--guard", "--self-check", GUARD_EXIT="1")
    assert run.returncode == 1
    steps = [line for line in log if "pip install" not in line]
    assert steps == ["python bench/guard.py --self-check"]
    assert not any(".[test,bench]" in line for line in log)


def test_with_pytest_arguments_only_pytest_runs(dev) -> None:
    run, log = dev("test", "tests/test_lint.py", "-q", PYTEST_EXIT="5")
    assert run.returncode == 5
    assert [line for line in log if "pip install" not in line] == ["python -m pytest tests/test_lint.py -q"]
