"""docs/reference.md is what ``python -m sidecar.reference`` generates from the daemon's own
schemas, and ``sidecar methods`` prints the same descriptions, with no daemon running."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import msgspec

from sidecar.daemon.config import Config
from sidecar.reference import REGENERATE, config_sections, discover, markdown, method_text
from sidecar.rpc.dispatch import ERROR_CODES
from tests.daemon.conftest import child_env

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference.md"


def sidecar(*args: str, socket: str) -> subprocess.CompletedProcess[str]:
    env = child_env({"SIDECAR_SOCKET": socket, "COLUMNS": "80"})  # a socket nobody listens on: no daemon needed
    return subprocess.run([sys.executable, "-m", "sidecar", *args], env=env, capture_output=True, text=True, timeout=60)


def test_the_checked_in_reference_is_the_generated_one() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "sidecar.reference"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == markdown()
    assert REFERENCE.read_text() == run.stdout, f"docs/reference.md is out of date: run `{REGENERATE}`"


def test_the_reference_covers_everything() -> None:
    doc, text = discover(), REFERENCE.read_text()
    for method in doc["methods"]:
        assert f"\n### {method['name']}\n" in text
        assert f"sidecar call {method['name']}" in text  # its example
    for note in doc["x-notifications"]:
        assert f"\n### {note['name']}\n" in text
    for error in ERROR_CODES:
        assert f"| {error.code} | {error.name} |" in text
    assert "| -32002 | not found: no event has that id |" in text  # log.get's errors
    sections = {s.name: {k.name for k in s.keys} for s in config_sections()}
    tables = {f.name: f.type for f in msgspec.structs.fields(Config) if isinstance(f.type, type)}
    tables = {name: kind for name, kind in tables.items() if issubclass(kind, msgspec.Struct)}
    assert set(sections) == {"", *tables} == {"", "server", "log", "controller", "llm", "tasks", "search", "jetstream"}
    assert sections[""] == {f.name for f in msgspec.structs.fields(Config)} - set(tables)
    for name, kind in tables.items():  # every key, in its own table
        assert sections[name] == {f.name for f in msgspec.structs.fields(kind)}


def test_every_config_key_says_what_it_is_for() -> None:
    undescribed = [f"[{s.name}] {k.name}" for s in config_sections() for k in s.keys if not k.description]
    assert not undescribed, (
        f"add a comment beside (or just above) these keys in sidecar/daemon/config.py: {undescribed}"
    )
    assert "`1048576` (1 MiB)" in REFERENCE.read_text()  # max_message_bytes, bytes made readable


def test_sidecar_methods_lists_every_method_without_a_daemon(tmp_path: Path) -> None:
    run = sidecar("methods", socket=str(tmp_path / "nobody.sock"))
    assert run.returncode == 0, run.stderr
    listed = [line.split()[0] for line in run.stdout.splitlines() if line and not line.startswith(("notif", "`"))]
    assert listed == sorted(m["name"] for m in discover()["methods"])
    assert re.search(r"^tasks\.list_active +Tasks in the given statuses", run.stdout, re.M)


def test_sidecar_methods_name_shows_one_in_full(tmp_path: Path) -> None:
    run = sidecar("methods", "log.get", socket=str(tmp_path / "nobody.sock"))
    assert run.returncode == 0, run.stderr
    assert run.stdout == method_text(discover(), "log.get", width=80)
    for part in ["event_id", "required", "a UUID", "-32002  not found: no event has that id", "sidecar call log.get"]:
        assert part in run.stdout
    note = sidecar("methods", "log.overflow", socket=str(tmp_path / "nobody.sock"))
    assert note.returncode == 0 and "resume_from" in note.stdout and "(notification)" in note.stdout


def test_sidecar_methods_unknown_name_exits_2_with_suggestions(tmp_path: Path) -> None:
    run = sidecar("methods", "tasks.list", socket=str(tmp_path / "nobody.sock"))
    assert run.returncode == 2 and run.stdout == ""
    assert "no method 'tasks.list'; did you mean tasks.list_active?" in run.stderr
    far = sidecar("methods", "zzz", socket=str(tmp_path / "nobody.sock"))
    assert far.returncode == 2 and "sidecar methods` lists them all" in far.stderr
