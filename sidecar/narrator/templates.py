"""Prompt templates: shipped defaults, overridden from ``data/prompts/``, reloaded on change.

Templates are markdown with ``$name`` placeholders (``string.Template``). A template that
does not render with its known placeholders is refused with a clear log line, and the
previous one stays in use (the shipped default, at start).

``data/prompts/`` is in the data directory, so nothing there is trusted: the directory and
its files are never followed through a symlink, a file must be a regular file of ours of at
most :data:`MAX_TEMPLATE_BYTES`, and anything else is refused the same way.
"""

from __future__ import annotations

import os
import string
from importlib import resources

import anyio
import structlog

from sidecar.overrides import read_text, watch

log = structlog.get_logger("sidecar.prompts")

MAX_TEMPLATE_BYTES = 1024 * 1024

# The placeholders each template may use.
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "narrator": ("conversation_id", "reason"),
    "controller": ("conversation_id", "reason"),
}


class PromptLibrary:
    def __init__(self, override_dir: str | None) -> None:
        self.override_dir = override_dir
        self.templates: dict[str, string.Template] = {}
        self.sources: dict[str, str] = {}
        for name in PLACEHOLDERS:
            self.load(name)

    def _default(self, name: str) -> str:
        return resources.files("sidecar.prompts").joinpath(f"{name}.md").read_text(encoding="utf-8")

    def _override_path(self, name: str) -> str | None:
        return os.path.join(self.override_dir, f"{name}.md") if self.override_dir else None

    def _read_override(self, name: str) -> str | None:
        """The override's text, ``None`` when there is none; raises when it is unsafe."""
        if not self.override_dir:
            return None
        return read_text(self.override_dir, f"{name}.md", MAX_TEMPLATE_BYTES, "prompts directory")

    def load(self, name: str) -> bool:
        """(Re)read one template; returns whether it was taken."""
        path = self._override_path(name)
        source = "default"
        try:
            text = self._read_override(name)
            if text is not None:
                source = path or source
            else:
                text = self._default(name)
        except (OSError, UnicodeDecodeError) as exc:
            log.error("prompts.unreadable", template=name, path=path, error=str(exc))
            if name not in self.templates:  # at start: the shipped default, not nothing
                self.templates[name] = string.Template(self._default(name))
                self.sources[name] = "default"
            return False
        template = string.Template(text)
        try:
            template.substitute({key: key for key in PLACEHOLDERS[name]})
        except (KeyError, ValueError) as exc:
            log.error(
                "prompts.refused",
                template=name,
                path=source,
                error=f"{type(exc).__name__}: {exc}",
                allowed=list(PLACEHOLDERS[name]),
                kept=self.sources.get(name, "default"),
            )
            if name not in self.templates:
                self.templates[name] = string.Template(self._default(name))
                self.sources[name] = "default"
            return False
        if name in self.templates:
            log.info("prompts.reloaded", template=name, source=source)
        self.templates[name] = template
        self.sources[name] = source
        return True

    def render(self, name: str, **values: str) -> str:
        return self.templates[name].substitute({key: values.get(key, "") for key in PLACEHOLDERS[name]})

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reload templates when their override files change."""
        await watch(self.override_dir, "prompts directory", self._changed, task_status=task_status)

    async def _changed(self, paths: list[str]) -> None:
        for path in paths:
            name = os.path.basename(path).removesuffix(".md")
            if name in PLACEHOLDERS:
                self.load(name)
