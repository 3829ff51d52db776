"""Prompt templates: defaults, overrides, refusals, hot reload; narrator.prompt over the socket."""

from __future__ import annotations

import time
from pathlib import Path

from sidecar_client import Client

from sidecar.narrator.templates import PromptLibrary
from tests.daemon.conftest import daemon, start_daemon  # noqa: F401  (real daemons here too)


def test_defaults_render() -> None:
    lib = PromptLibrary(None)
    text = lib.render("narrator", conversation_id="c9", reason="user_message")
    assert "conversation c9" in text and "user_message" in text and "$" not in text
    assert "speak_now" in lib.render("controller", conversation_id="c9", reason="idle")


def test_an_override_is_used_and_a_broken_one_refused(tmp_path: Path) -> None:
    (tmp_path / "narrator.md").write_text("Narrate $conversation_id tersely.")
    lib = PromptLibrary(str(tmp_path))
    assert lib.render("narrator", conversation_id="c1", reason="x") == "Narrate c1 tersely."
    (tmp_path / "narrator.md").write_text("Narrate $conversation_id for $audience.")  # unknown placeholder
    assert not lib.load("narrator")
    assert lib.render("narrator", conversation_id="c1", reason="x") == "Narrate c1 tersely."  # previous kept
    (tmp_path / "narrator.md").write_text("Broken $ template")
    assert not lib.load("narrator")
    (tmp_path / "narrator.md").unlink()
    assert lib.load("narrator") and "the one voice the user hears" in lib.render("narrator", conversation_id="c1")


def test_narrator_prompt_and_hot_reload(daemon) -> None:  # noqa: F811
    with Client(daemon.socket_path) as c:
        for i in range(30):
            c.call("log.append", {"conversation_id": "c1", "type": "agent.progress", "data": {"msg": f"step {i}"}})
        c.call("chat.user_message", {"conversation_id": "c1", "text": "status?"})
        prompt = c.call("narrator.prompt", {"conversation_id": "c1", "budget_tokens": 2000})
        system, user = prompt["messages"]
        assert system["role"] == "system" and "narrator of conversation c1" in system["content"]
        assert user["role"] == "user" and "## Newest event" in user["content"] and "status?" in user["content"]
        assert prompt["tokens"] <= 2000 and len(prompt["summary_ref"]) == 64
        tight = c.call("narrator.prompt", {"conversation_id": "c1", "budget_tokens": 120})
        assert tight["tokens"] <= 120

        override = daemon.data_dir / "prompts" / "narrator.md"
        override.write_text("You narrate $conversation_id in one line.")
        deadline = time.monotonic() + 5
        while (
            "in one line"
            not in c.call("narrator.prompt", {"conversation_id": "c1", "budget_tokens": 500})["messages"][0]["content"]
        ):
            assert time.monotonic() < deadline, "the override was not picked up"
        override.write_text("You narrate $nobody.")  # broken: refused, the last good one stays
        while "prompts.refused" not in daemon.stderr():
            assert time.monotonic() < deadline + 5, "the broken template was not noticed"
            c.call("sys.health")
        content = c.call("narrator.prompt", {"conversation_id": "c1", "budget_tokens": 500})["messages"][0]["content"]
        assert content == "You narrate c1 in one line."
