"""Error playbooks: what the narrator tells the user, and what happens next, when something
goes wrong. Shipped in ``sidecar/playbooks/*.md``, overridden or extended from
``data/playbooks/*.md``, reloaded on change (``docs/playbooks.md`` says how to write one).

A playbook is markdown after a front matter, TOML between ``+++`` lines or YAML between
``---`` lines, giving its ``id``, ``title`` and ``matches``: event types (``agent.error``,
``tool.timeout``), task outcomes as the task events that record them (``task.failed``,
``task.timed_out``, ``task.lease_expired``) and error codes (``-32006``, matching an event
whose ``data.code`` is that code). ``retries = "left"`` or ``"none"`` narrows a
``task.failed`` playbook to failures with retries left (``data.retries_left`` > 0) or none.

A file in ``data/playbooks/`` is untrusted like everything there: read as
:mod:`sidecar.overrides` reads, parsed against a schema, and refused with a log line when it
is broken, while the version before it (or the shipped one) stays in use.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from importlib import resources
from typing import Annotated, Any, Literal

import anyio
import msgspec
import structlog
from msgspec import Meta

from sidecar.log.events import EVENT_TYPE_PATTERN, WHOLE, Event, NewEvent
from sidecar.overrides import names, read_text, watch
from sidecar.tasks.model import TASK_EVENT_TYPES

log = structlog.get_logger("sidecar.playbooks")

MAX_PLAYBOOK_BYTES = 64 * 1024
MAX_PLAYBOOKS = 256  # files read from data/playbooks/; more are left out, and logged
SUFFIX = ".md"
OUTCOMES = ("failed", "timed_out", "lease_expired")  # task outcomes a playbook can name

PlaybookId = Annotated[str, Meta(pattern=rf"^[a-z0-9][a-z0-9_-]{{0,63}}{WHOLE}")]
# an event type, or an error code
Match = Annotated[str, Meta(pattern=rf"{EVENT_TYPE_PATTERN}|^-?[0-9]{{1,9}}{WHOLE}", max_length=128)]


class Front(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A playbook's front matter."""

    id: PlaybookId
    title: Annotated[str, Meta(min_length=1, max_length=200)]
    matches: Annotated[list[Match | int], Meta(min_length=1, max_length=32)]
    retries: Literal["left", "none"] | None = None  # for task.failed: with retries left, or none


class PlaybookInfo(msgspec.Struct, kw_only=True):
    """A playbook as ``playbooks.list`` shows it."""

    id: str
    title: str
    matches: list[str]


class Playbook(PlaybookInfo, kw_only=True):
    """A playbook whole: what ``playbooks.match`` answers, and the narrator is given."""

    retries: Literal["left", "none"] | None = None
    text: str  # the markdown after the front matter
    source: str  # "builtin", or the file in data/playbooks/ it came from


class PlaybookError(ValueError):
    """A playbook file that cannot be used; the message says why."""


def parse(text: str, source: str) -> Playbook:
    """A playbook from a file's text; raises :class:`PlaybookError` naming what is wrong."""
    fence = text[:4]
    if fence not in ("+++\n", "---\n"):
        raise PlaybookError("no front matter: start with +++ (TOML) or --- (YAML)")
    end = text.find("\n" + fence, 3)
    if end < 0:
        raise PlaybookError(f"the front matter opened with {fence.strip()} is never closed")
    front_text, body = text[4:end], text[end + 5 :]
    try:
        raw: Any = tomllib.loads(front_text) if fence == "+++\n" else _yaml(front_text)
        front = msgspec.convert(raw, Front)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError, ValueError) as exc:
        raise PlaybookError(f"front matter: {exc}") from None
    body = body.strip()
    if not body:
        raise PlaybookError("no text after the front matter: say what the narrator should tell the user")
    matches = [str(m) for m in front.matches]
    return Playbook(id=front.id, title=front.title, matches=matches, retries=front.retries, text=body, source=source)


def _yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ValueError("YAML front matter needs PyYAML, which is not installed here; use TOML (+++)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {exc}") from None


def keys_of(event: Event | NewEvent) -> list[str]:
    """What of ``event`` a playbook's ``matches`` can name: its type; for a task event, the
    outcome it records (``task.failed`` for a ``task.updated`` to status failed); and its
    ``data.code``."""
    keys = [event.type]
    data = event.data if isinstance(event.data, dict) else {}
    task = data.get("task")
    if event.type in TASK_EVENT_TYPES and isinstance(task, dict) and task.get("status") in OUTCOMES:
        keys.append(f"task.{task['status']}")
    code = data.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        keys.append(str(code))
    elif isinstance(code, str) and code.lstrip("-").isdigit() and len(code) < 12:
        keys.append(str(int(code)))
    return keys


def _retries_left(event: Event | NewEvent) -> bool:
    """``data.retries_left`` (or the task's own) above 0."""
    data = event.data if isinstance(event.data, dict) else {}
    task = data.get("task")
    left = data.get("retries_left", task.get("retries_left") if isinstance(task, dict) else None)
    return isinstance(left, int) and not isinstance(left, bool) and left > 0


class PlaybookLibrary:
    """The playbooks in force: the shipped ones, with those of ``override_dir`` over them."""

    def __init__(self, override_dir: str | None) -> None:
        self.override_dir = override_dir
        self.builtin = _builtins()
        self.overrides: dict[str, Playbook] = {}  # file name -> the last good version
        self._by_id: dict[str, Playbook] = {}
        self._by_key: dict[str, list[Playbook]] = {}
        self.reload()

    def reload(self) -> None:
        """(Re)read every file of ``override_dir``; a broken one keeps its last good version."""
        if self.override_dir:
            try:
                files = names(self.override_dir, SUFFIX, "playbooks directory", MAX_PLAYBOOKS + 1)
            except OSError as exc:
                log.error("playbooks.unreadable", path=self.override_dir, error=str(exc))
                files = list(self.overrides)
            if len(files) > MAX_PLAYBOOKS:
                log.warning("playbooks.too_many", path=self.override_dir, kept=MAX_PLAYBOOKS)
                files = files[:MAX_PLAYBOOKS]
            for name in set(self.overrides) - set(files):
                del self.overrides[name]
                log.info("playbooks.removed", file=name)
            for name in files:
                self._load(name)
        self._index()

    def _load(self, name: str) -> None:
        assert self.override_dir is not None
        path = os.path.join(self.override_dir, name)
        try:
            text = read_text(self.override_dir, name, MAX_PLAYBOOK_BYTES, "playbooks directory")
            if text is None:
                self.overrides.pop(name, None)
                return
            playbook = parse(text, path)
        except (OSError, UnicodeDecodeError, PlaybookError) as exc:
            kept = self.overrides.get(name)
            log.error("playbooks.refused", path=path, error=str(exc), kept=kept.id if kept else None)
            return
        if self.overrides.get(name) != playbook:
            log.info("playbooks.loaded", path=path, id=playbook.id)
        self.overrides[name] = playbook

    def _index(self) -> None:
        by_id = dict(self.builtin)
        for name in sorted(self.overrides):  # the same id in two files: the later name wins
            playbook = self.overrides[name]
            by_id[playbook.id] = playbook
        by_key: dict[str, list[Playbook]] = {}
        for playbook in by_id.values():
            for key in playbook.matches:
                by_key.setdefault(key, []).append(playbook)
        self._by_id, self._by_key = by_id, by_key  # each replaced whole: readers see one or the other

    def list(self) -> list[PlaybookInfo]:
        return [PlaybookInfo(id=p.id, title=p.title, matches=p.matches) for p in self._by_id.values()]

    def get(self, playbook_id: str) -> Playbook | None:
        return self._by_id.get(playbook_id)

    def match(self, event: Event | NewEvent) -> Playbook | None:
        """The playbook for ``event`` (written, or about to be), if one applies. One that names
        the event's code wins over one that names its type; among those, one whose ``retries``
        condition holds over one without; then the first by id."""
        by_key = self._by_key
        keys = [k for k in keys_of(event) if k in by_key]
        if not keys:
            return None  # the usual case, for every event committed: two lookups
        best: tuple[int, str] | None = None
        chosen: Playbook | None = None
        for playbook in {id(p): p for k in keys for p in by_key[k]}.values():
            named = [k for k in keys if k in playbook.matches]
            if playbook.retries is not None and (playbook.retries == "left") != _retries_left(event):
                continue
            rank = (0 if any(k.lstrip("-").isdigit() for k in named) else 1) + (0 if playbook.retries else 2)
            if best is None or (rank, playbook.id) < best:
                best, chosen = (rank, playbook.id), playbook
        return chosen

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reload when files of ``override_dir`` change."""
        await watch(self.override_dir, "playbooks directory", self._changed, task_status=task_status)

    async def _changed(self, paths: Sequence[str]) -> None:
        await anyio.to_thread.run_sync(self.reload)


def _builtins() -> dict[str, Playbook]:
    shipped: dict[str, Playbook] = {}
    for entry in sorted(resources.files("sidecar.playbooks").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(SUFFIX):
            playbook = parse(entry.read_text(encoding="utf-8"), "builtin")  # a broken one is a bug: raise
            shipped[playbook.id] = playbook
    return shipped
