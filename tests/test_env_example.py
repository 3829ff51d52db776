"""``.env.example`` lists every environment variable the daemon, the CLI and the clients read.

The variables are found in the sources themselves, so a new one that is not documented fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "sidecar", ROOT / "clients" / "python" / "sidecar_client", ROOT / "clients" / "typescript" / "src"]
# os.environ.get("X"), env["X"], "X" in os.environ, process.env.X / env.X, and any SIDECAR_* name
READS = re.compile(
    r"""(?:environ|env)(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]*)["']"""
    r"""|["']([A-Z][A-Z0-9_]*)["']\s+(?:not\s+)?in\s+(?:os\.)?environ"""
    r"""|\benv\.([A-Z][A-Z0-9_]*)\b"""
    r"""|\b(SIDECAR_[A-Z0-9_]+)\b"""
)


def variables_read() -> dict[str, str]:
    """Each variable named in the sources, with one file that reads it."""
    found: dict[str, str] = {}
    for root in SOURCES:
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".ts") and path.is_file():
                for match in READS.finditer(path.read_text()):
                    found.setdefault(next(g for g in match.groups() if g), str(path.relative_to(ROOT)))
    return found


def documented() -> dict[str, str]:
    """``# NAME=default`` lines of .env.example, each with the comment line above it."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    out = {}
    for i, line in enumerate(lines):
        entry = re.fullmatch(r"# ([A-Z][A-Z0-9_]*)=.*", line)
        if entry:
            above = next(lines[j] for j in range(i - 1, -1, -1) if not re.fullmatch(r"# [A-Z][A-Z0-9_]*=.*", lines[j]))
            out[entry.group(1)] = above
    return out


def test_every_variable_read_is_in_env_example() -> None:
    read, listed = variables_read(), documented()
    assert {"SIDECAR_DATA_DIR", "SIDECAR_SOCKET", "SIDECAR_CONFIG", "NO_COLOR"} <= set(read)  # the scan works
    missing = {name: where for name, where in read.items() if name not in listed}
    assert not missing, f"read but not in .env.example: {missing}"


def test_each_entry_has_a_comment_with_its_default_and_sets_nothing() -> None:
    listed = documented()
    assert len(listed) >= 10
    for name, comment in listed.items():
        assert comment.startswith("# ") and "default" in comment, f"{name}: {comment!r}"
    text = (ROOT / ".env.example").read_text()
    assert all(line == "" or line.startswith("#") for line in text.splitlines())  # copied as is: no change
    assert "var/data" in text  # what ./dev serve uses
