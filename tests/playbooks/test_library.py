"""Playbooks: their front matter, how one is chosen for an event, and overrides from the data
directory that are untrusted (a broken one is refused and the last good one kept)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sidecar.log.events import Event
from sidecar.playbooks.library import PlaybookError, PlaybookLibrary, parse

SHIPPED = {
    "agent-crashed",
    "agent-error",
    "llm-unreachable",
    "rate-limited",
    "storage-error",
    "task-failed",
    "task-failed-retrying",
    "task-stalled",
    "tool-timeout",
}


def ev(type_: str, **data: object) -> Event:
    return Event(
        id="0195a3c2-0000-7000-8000-000000000001",
        seq=1,
        timestamp="2026-11-29T10:00:00.000000Z",
        conversation_id="c1",
        type=type_,
        visibility="status",
        level="action",
        caused_by=[],
        data=data,
    )


def matched(lib: PlaybookLibrary, event: Event) -> str | None:
    found = lib.match(event)
    return found.id if found else None


def test_the_shipped_playbooks_cover_what_agents_meet() -> None:
    lib = PlaybookLibrary(None)
    assert {p.id for p in lib.list()} == SHIPPED
    assert matched(lib, ev("tool.timeout")) == "tool-timeout"
    assert matched(lib, ev("agent.error")) == "agent-error"
    assert matched(lib, ev("agent.progress")) is None
    failed = {"id": "t1", "status": "failed"}
    assert matched(lib, ev("task.updated", task={**failed, "retries_left": 2})) == "task-failed-retrying"
    assert matched(lib, ev("task.updated", task=failed)) == "task-failed"
    assert matched(lib, ev("task.updated", task={"id": "t1", "status": "done"})) is None
    assert matched(lib, ev("task.lease_expired")) == "agent-crashed"
    # a code names the failure more precisely than a type: it wins
    assert matched(lib, ev("agent.error", code=-32006)) == "storage-error"
    assert matched(lib, ev("tool.error", code="429")) == "rate-limited"
    assert matched(lib, ev("agent.error", code=True)) == "agent-error"  # not a code


@pytest.mark.parametrize("fence", ["toml", "yaml"])
def test_front_matter_in_toml_or_yaml(fence: str) -> None:
    if fence == "toml":
        text = '+++\nid = "deploy"\ntitle = "A deploy failed"\nmatches = ["deploy.failed", -32006]\n+++\nSay so.\n'
    else:
        text = '---\nid: deploy\ntitle: A deploy failed\nmatches: ["deploy.failed", -32006]\n---\nSay so.\n'
    playbook = parse(text, "x.md")
    assert (playbook.id, playbook.title, playbook.matches, playbook.text) == (
        "deploy",
        "A deploy failed",
        ["deploy.failed", "-32006"],
        "Say so.",
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("just markdown\n", "no front matter"),
        ('+++\nid = "a"\n', "never closed"),
        ('+++\nid = "a"\ntitle = "t"\nmatches = ["x.y"]\n+++\n\n', "no text"),
        ('+++\nid = "A b"\ntitle = "t"\nmatches = ["x.y"]\n+++\nSay.\n', "id"),
        ('+++\nid = "a"\ntitle = "t"\nmatches = []\n+++\nSay.\n', "matches"),
        ('+++\nid = "a"\ntitle = "t"\nmatches = ["x.y"]\nwhen = "always"\n+++\nSay.\n', "when"),
        ('+++\nid = "a"\ntitle = "t"\nmatches = ["<script>"]\n+++\nSay.\n', "matches"),
        ("---\nid: [unclosed\n---\nSay.\n", "YAML"),
    ],
)
def test_a_broken_playbook_is_refused_naming_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(PlaybookError, match=why):
        parse(text, "x.md")


def write(directory: Path, name: str, text: str) -> None:
    directory.mkdir(mode=0o700, exist_ok=True)
    (directory / name).write_text(text)


def custom(playbook_id: str, matches: str, body: str = "Say it.") -> str:
    return f'+++\nid = "{playbook_id}"\ntitle = "{playbook_id} title"\nmatches = [{matches}]\n+++\n{body}\n'


def test_data_playbooks_replace_extend_and_a_broken_one_keeps_the_last_good(tmp_path: Path) -> None:
    mine = tmp_path / "playbooks"
    write(mine, "agent-error.md", custom("agent-error", '"agent.error"', "Our own words."))
    write(mine, "deploy.md", custom("deploy", '"deploy.failed"'))
    lib = PlaybookLibrary(str(mine))
    assert lib.match(ev("agent.error")).text == "Our own words."  # the shipped one replaced
    assert matched(lib, ev("deploy.failed")) == "deploy"
    assert {p.id for p in lib.list()} == SHIPPED | {"deploy"}

    write(mine, "deploy.md", "+++\nid = \n")  # a half-saved edit
    with capture_logs() as logs:
        lib.reload()
    assert matched(lib, ev("deploy.failed")) == "deploy"  # the last good version stays
    refused = [e for e in logs if e["event"] == "playbooks.refused"]
    assert refused and refused[0]["kept"] == "deploy" and "deploy.md" in refused[0]["path"]

    (mine / "deploy.md").unlink()
    (mine / "agent-error.md").unlink()
    lib.reload()
    assert matched(lib, ev("deploy.failed")) is None
    assert "Our own words." not in lib.match(ev("agent.error")).text  # the shipped one is back


def test_links_and_strangers_files_in_data_playbooks_are_refused(tmp_path: Path) -> None:
    mine = tmp_path / "playbooks"
    write(mine, "real.md", custom("real", '"a.b"'))
    elsewhere = tmp_path / "elsewhere.md"
    elsewhere.write_text(custom("linked", '"c.d"'))
    os.symlink(elsewhere, mine / "linked.md")
    lib = PlaybookLibrary(str(mine))
    assert matched(lib, ev("a.b")) == "real" and matched(lib, ev("c.d")) is None
    linked_dir = tmp_path / "linked-dir"
    os.symlink(mine, linked_dir)
    with capture_logs() as logs:
        lib = PlaybookLibrary(str(linked_dir))  # a link where the directory should be
    assert {p.id for p in lib.list()} == SHIPPED
    assert any(e["event"] == "playbooks.unreadable" for e in logs)
