"""The code stays formatted, lint-clean (ruff) and type-checked (mypy), both configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREES = ["sidecar", "tests", "bench", "clients", "docs"]
# Build output is copies of our sources (`pip install ./clients/python` leaves
# clients/python/build/ behind), not sources: checking it would flag the generated
# methods.py a second time, under a path the project's exclude does not name.
EXCLUDE = ["--extend-exclude", "build"]


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *EXCLUDE, *TREES], cwd=ROOT, capture_output=True, text=True
    )


def test_ruff_lint() -> None:
    run = ruff("check", "--no-fix")
    assert run.returncode == 0, run.stdout + run.stderr


def test_ruff_format() -> None:
    run = ruff("format", "--check")
    assert run.returncode == 0, run.stdout + run.stderr


def test_build_output_is_not_linted_but_sources_named_build_are(tmp_path: Path) -> None:
    """A build/ directory left by pip is skipped; a module called build.py is still checked."""
    (tmp_path / "pkg" / "build" / "lib").mkdir(parents=True)
    (tmp_path / "pkg" / "build" / "lib" / "copy.py").write_text("import os\n")  # unused import: F401
    (tmp_path / "pkg" / "build.py").write_text("import sys\n")
    run = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-fix", "--isolated", *EXCLUDE, "pkg"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert "build.py" in run.stdout and "copy.py" not in run.stdout


def mypy(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """The venv's mypy with the project's [tool.mypy]; its cache under ``cache``, never in the checkout."""
    config = ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(cache)]
    return subprocess.run([sys.executable, "-m", "mypy", *config, *args], cwd=cwd, capture_output=True, text=True)


def test_mypy(tmp_path: Path) -> None:
    """sidecar/ and the Python client (the generated methods.py too) type-check without an error."""
    run = mypy(cwd=ROOT, cache=tmp_path / "cache")  # the files the config names
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_config_is_strict(tmp_path: Path) -> None:
    """The config is in force: an unannotated function and a stale ignore are both errors."""
    (tmp_path / "sloppy.py").write_text("def f(x):\n    return x\n\n\nn: int = 1  # type: ignore[assignment]\n")
    run = mypy("sloppy.py", cwd=tmp_path, cache=tmp_path / "cache")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "[no-untyped-def]" in run.stdout and "[unused-ignore]" in run.stdout, run.stdout
