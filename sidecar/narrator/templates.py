"""Prompt templates: shipped defaults, overridden from ``data/prompts/``, reloaded on change.

Templates are markdown with ``$name`` placeholders (``string.Template``). A template that
does not render with its known placeholders is refused with a clear log line, and the
previous one stays in use (the shipped default, at start).

``data/prompts/`` is in the data directory, so nothing there is trusted: the directory and
its files are never followed through a symlink, a file must be a regular file of ours of at
most :data:`MAX_TEMPLATE_BYTES`, and anything else is refused the same way.
"""

from __future__ import annotations

import errno
import os
import string
from importlib import resources

import anyio
import structlog
import watchfiles

from sidecar.datadir import UnsafePathError, check_dir, open_regular, private_dir

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
        try:
            dir_fd = os.open(self.override_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePathError(f"{self.override_dir} is not a directory of ours (a symlink?)") from None
            raise
        try:
            check_dir(self.override_dir, os.fstat(dir_fd), "prompts directory", fd=dir_fd)
            try:
                fd = open_regular(f"{name}.md", os.O_RDONLY, dir_fd=dir_fd)
            except FileNotFoundError:
                return None
        finally:
            os.close(dir_fd)
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                raise UnsafePathError(f"{self._override_path(name)} belongs to uid {st.st_uid}, not to us")
            if st.st_size > MAX_TEMPLATE_BYTES:
                raise UnsafePathError(f"{self._override_path(name)} is over {MAX_TEMPLATE_BYTES} bytes")
            data = b""
            while len(data) <= MAX_TEMPLATE_BYTES and (chunk := os.read(fd, MAX_TEMPLATE_BYTES + 1 - len(data))):
                data += chunk
            if len(data) > MAX_TEMPLATE_BYTES:
                raise UnsafePathError(f"{self._override_path(name)} grew over {MAX_TEMPLATE_BYTES} bytes")
            return data.decode("utf-8")
        finally:
            os.close(fd)

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
        if not self.override_dir:
            task_status.started()
            return
        try:
            private_dir(self.override_dir, what="prompts directory")  # 0700; never a symlink
        except OSError as exc:
            log.error("prompts.not_watched", path=self.override_dir, error=str(exc))
            task_status.started()
            return
        task_status.started()
        async for changes in watchfiles.awatch(self.override_dir, recursive=False, rust_timeout=200):
            for _change, path in changes:
                name = os.path.basename(path).removesuffix(".md")
                if name in PLACEHOLDERS:
                    self.load(name)
