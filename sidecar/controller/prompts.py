"""Prompt templates: shipped defaults, overridden from ``data/prompts/``, reloaded on change.

Templates are markdown with ``$name`` placeholders (``string.Template``). A template that
does not render with its known placeholders is refused with a clear log line, and the
previous one stays in use.
"""

from __future__ import annotations

import os
import string
from importlib import resources

import anyio
import structlog
import watchfiles

log = structlog.get_logger("sidecar.prompts")

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

    def load(self, name: str) -> bool:
        """(Re)read one template; returns whether it was taken."""
        path = self._override_path(name)
        source = "default"
        try:
            if path and os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                source = path
            else:
                text = self._default(name)
        except (OSError, UnicodeDecodeError) as exc:
            log.error("prompts.unreadable", template=name, path=path, error=str(exc))
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
                kept=self.sources.get(name, "none"),
            )
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
        if not self.override_dir:
            task_status.started()
            return
        os.makedirs(self.override_dir, exist_ok=True)
        task_status.started()
        async for changes in watchfiles.awatch(self.override_dir, recursive=False, rust_timeout=200):
            for _change, path in changes:
                name = os.path.basename(path).removesuffix(".md")
                if name in PLACEHOLDERS:
                    self.load(name)
