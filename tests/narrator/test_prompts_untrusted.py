"""``data/prompts/`` is in the data directory, so nothing there is trusted: no symlink is
followed (a link to a root-only file must not come back through ``narrator.prompt``), no
FIFO is waited on, and a refused override leaves the shipped default in use."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import pytest

from sidecar.narrator.templates import MAX_TEMPLATE_BYTES, PromptLibrary

SECRET = "TOP SECRET for $conversation_id"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.md"
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def default_text() -> str:
    return PromptLibrary(None).render("narrator", conversation_id="c1", reason="r")


def test_a_symlinked_prompts_directory_is_not_followed(tmp_path: Path, secret: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "narrator.md").symlink_to(secret)
    (elsewhere / "controller.md").write_text(SECRET)
    (tmp_path / "prompts").symlink_to(elsewhere)
    lib = PromptLibrary(str(tmp_path / "prompts"))
    assert lib.render("narrator", conversation_id="c1", reason="r") == default_text()
    assert "TOP SECRET" not in lib.render("controller", conversation_id="c1", reason="r")
    assert lib.sources == {"narrator": "default", "controller": "default"}


def test_a_symlinked_template_is_not_followed(tmp_path: Path, secret: Path) -> None:
    (tmp_path / "prompts").mkdir(mode=0o700)
    (tmp_path / "prompts" / "narrator.md").symlink_to(secret)
    (tmp_path / "prompts" / "controller.md").write_text("Controller of $conversation_id.")
    lib = PromptLibrary(str(tmp_path / "prompts"))
    assert lib.render("narrator", conversation_id="c1", reason="r") == default_text()
    assert lib.render("controller", conversation_id="c1", reason="r") == "Controller of c1."  # a real one is used


def test_a_fifo_or_an_oversized_template_is_refused_without_waiting(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir(mode=0o700)
    os.mkfifo(prompts / "narrator.md")
    (prompts / "controller.md").write_text("x" * (MAX_TEMPLATE_BYTES + 1))
    made: list[PromptLibrary] = []
    worker = threading.Thread(target=lambda: made.append(PromptLibrary(str(prompts))), daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # blocked in open(): a writer end lets it go, so the test can end
        os.close(os.open(prompts / "narrator.md", os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=10)
        pytest.fail("opening the FIFO blocked")
    assert made[0].sources == {"narrator": "default", "controller": "default"}


def test_the_watcher_makes_the_directory_private_and_refuses_a_link(tmp_path: Path) -> None:
    async def started(path: Path) -> None:
        lib = PromptLibrary(str(path))
        async with anyio.create_task_group() as tg:
            await tg.start(lib.watch)
            tg.cancel_scope.cancel()

    old = os.umask(0o022)
    try:
        anyio.run(started, tmp_path / "prompts")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "prompts").st_mode & 0o777 == 0o700
    (tmp_path / "linked").symlink_to(tmp_path / "prompts")
    anyio.run(started, tmp_path / "linked")  # logged and not watched, never a crash
