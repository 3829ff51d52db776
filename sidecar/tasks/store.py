"""``data/tasks.graph.json`` on disk, and the original specification's API (S25) over it.

Every read holds a shared flock and every change an exclusive one, on
``tasks.graph.json.lock`` beside the file (the file itself is replaced by rename, so it
cannot carry the lock). A whole graph is written to a temp file, fsync'd, renamed over the
graph, and the directory fsync'd: readers see the old graph or the new one, never half.
The functions work on ``data_dir=`` if given, else ``$SIDECAR_DATA_DIR``, else ``./data``.

The daemon does not rewrite the whole file for every batch of changes: that costs in
proportion to every task ever made (220 ms at 100,000 tasks; docs/performance.md). It
appends the changed tasks to ``tasks.graph.json.journal``, one line each, fdatasync'd, and
folds the journal into the file (a checkpoint) once it has grown. Each line carries the
graph's version after its batch, so a reader replays only the lines newer than the file
(a checkpoint that crashed before the journal was emptied replays nothing twice). Every
reader here replays it, and every whole-file write (a checkpoint, or this module's own
changes) empties it, so the file and its journal are one graph to everyone.

The file is in the data directory, so it is not trusted: a graph file that is a symlink, a
directory, a FIFO, too deeply nested, or invalid is a :class:`GraphFileError` (a storage
error, -32006) naming the file, never a crash.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec

from sidecar.clock import SYSTEM_CLOCK, Clock
from sidecar.datadir import ensure_layout, open_regular, read_regular, resolve_data_dir
from sidecar.errors import InvalidParams, SidecarError, StorageError
from sidecar.fs import atomic_write, flock, fsync_dir, open_lock_file, write_all
from sidecar.log.segments import DECODE_ERRORS
from sidecar.log.timestamps import format_timestamp
from sidecar.tasks.graph import TaskGraph
from sidecar.tasks.model import GraphFile, NewTask, Task, TaskPatch

GRAPH_FILE = "tasks.graph.json"
JOURNAL_SUFFIX = ".journal"
TMP_INFIX = ".tmp."
MAX_GRAPH_BYTES = 1 << 30  # bigger is not a graph we wrote: refused rather than read into memory
_encoder = msgspec.json.Encoder()


class JournalLine(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One changed task, as it stood after the batch that made the graph version ``v``."""

    v: int
    task: Task


_line_decoder = msgspec.json.Decoder(JournalLine)


class GraphFileError(StorageError):
    """The graph file cannot be used (unreadable, not a file, invalid); the message names it."""


@contextlib.contextmanager
def locked(path: str, *, exclusive: bool) -> Iterator[None]:
    """Hold the graph's lock file (created on first use, 0600, never through a symlink)."""
    try:
        fd = open_lock_file(path + ".lock")
    except OSError as exc:
        raise _file_error(path + ".lock", exc) from None
    try:
        flock(fd, exclusive=exclusive)
        yield
    finally:
        os.close(fd)


def read_graph(path: str, *, missing_ok: bool = True) -> TaskGraph:
    """Parse and validate the graph file (a missing file is an empty graph, if ``missing_ok``).

    Raises :class:`GraphFileError` for anything else that is not a valid graph."""
    try:
        raw = read_regular(path, MAX_GRAPH_BYTES)
    except FileNotFoundError:
        if missing_ok:
            return _replayed(path, GraphFile())  # never checkpointed: the journal is all there is
        raise GraphFileError(f"{path} is missing", {"path": path, "reason": "missing"}) from None
    except OSError as exc:
        raise _file_error(path, exc) from None
    try:
        doc = msgspec.json.decode(raw, type=GraphFile)
        return _replayed(path, doc)
    except DECODE_ERRORS as exc:  # RecursionError too: a file nested deeper than we decode
        reason = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
    except SidecarError as exc:  # a cycle, a dangling link...
        reason = exc.message
    raise GraphFileError(f"{path} is not a valid task graph: {reason}", {"path": path, "reason": "invalid file"})


def _replayed(path: str, doc: GraphFile) -> TaskGraph:
    """The file's graph with its journal's newer lines on top, validated whole. A line cut
    short at the end (a writer killed mid-append) was never acknowledged: it is left out."""
    journal = path + JOURNAL_SUFFIX
    try:
        raw = read_regular(journal, MAX_GRAPH_BYTES)
    except FileNotFoundError:
        return TaskGraph(doc.tasks, doc.version)
    except OSError as exc:
        raise _file_error(journal, exc) from None
    tasks = {t.id: t for t in doc.tasks}
    version = doc.version
    lines = raw.split(b"\n")
    for number, line in enumerate(lines[:-1], 1):  # the last piece has no newline: torn, or empty
        try:
            entry = _line_decoder.decode(line)
        except DECODE_ERRORS as exc:
            raise GraphFileError(
                f"{journal} is damaged at line {number}: {exc}", {"path": journal, "reason": "invalid file"}
            ) from None
        if entry.v > doc.version:
            tasks[entry.task.id] = entry.task
            version = max(version, entry.v)
    return TaskGraph(tasks.values(), version)


def append_journal(path: str, version: int, tasks: Iterable[Task]) -> int:
    """Append ``tasks`` (changed by the batch that made ``version``) to the journal, durably
    (call with the exclusive lock held). Returns the journal's size after."""
    journal = path + JOURNAL_SUFFIX
    data = b"".join(_encoder.encode(JournalLine(v=version, task=t)) + b"\n" for t in tasks)
    created = not os.path.lexists(journal)
    fd = open_regular(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        write_all(fd, data)
        os.fdatasync(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if created:
        fsync_dir(os.path.dirname(journal))  # the new file's name is durable too
    return size


def _file_error(path: str, exc: OSError) -> GraphFileError:
    reason = exc.strerror if exc.strerror and exc.strerror != os.strerror(exc.errno or 0) else str(exc)
    return GraphFileError(f"cannot use {path}: {reason}", {"path": path, "errno": errno.errorcode.get(exc.errno or 0)})


def remove_stale_temps(path: str) -> list[str]:
    """Delete ``{path}.tmp.{pid}`` files of writers that are gone (killed mid-write);
    call with the exclusive lock held, so that no live writer is between create and rename."""
    directory, prefix = os.path.dirname(path), os.path.basename(path) + TMP_INFIX
    removed = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.startswith(prefix):
                continue
            pid = entry.name[len(prefix) :]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(entry.path)
                removed.append(entry.path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def write_graph(path: str, graph: TaskGraph) -> None:
    """Replace the file atomically and durably, then empty the journal, which it now holds
    (call with the exclusive lock held)."""
    data = msgspec.json.format(_encoder.encode(graph.to_file()), indent=2) + b"\n"
    # The temp file is ours alone while we hold the lock; one a killed writer left behind is
    # removed by remove_stale_temps.
    atomic_write(path, data, temp=f"{path}{TMP_INFIX}{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path + JOURNAL_SUFFIX)  # a crash before this replays nothing: its lines are not newer


def _path_for(data_dir: str | os.PathLike[str] | None) -> str:
    return os.path.join(ensure_layout(resolve_data_dir(data_dir)), GRAPH_FILE)


def _now(clock: Clock) -> str:
    return format_timestamp(clock.now_ns())


# --- the original specification's API -------------------------------------------------------


def load_graph(*, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The whole graph as plain data: ``{"tasks": [...], "version": n}``."""
    path = _path_for(data_dir)
    with locked(path, exclusive=False):
        return msgspec.to_builtins(read_graph(path).to_file())


def save_graph(graph: dict[str, Any], *, data_dir: str | os.PathLike[str] | None = None) -> None:
    """Replace the graph with ``graph`` after validating all of it."""
    try:
        doc = msgspec.convert(graph, GraphFile)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid task graph: {exc}", {"reason": "invalid graph"}) from None
    checked = TaskGraph(doc.tasks, doc.version)
    path = _path_for(data_dir)
    with locked(path, exclusive=True):
        remove_stale_temps(path)
        write_graph(path, checked)


# A task's bookkeeping, which only the graph writes.
SET_BY_THE_GRAPH = (
    "created_at",
    "updated_at",
    "version",
    "lease_owner",
    "lease_expires_at",
    "attempts",
    "claimed_at",
    "lease_s",
)


def create_task(
    task: dict[str, Any] | NewTask, *, data_dir: str | os.PathLike[str] | None = None, clock: Clock = SYSTEM_CLOCK
) -> dict[str, Any]:
    """Add a task (validated: links exist, no cycle); returns it with its id and version.

    ``task`` is a node as the graph holds it: ``type`` and any of ``id``, ``status``,
    ``owner``, ``inputs``, ``outputs``, ``parent_id``, ``dependency_ids``,
    ``conversation_id``, ``priority``, ``max_attempts`` and ``timeout_s``. ``created_at``,
    ``updated_at``, ``version`` and the lease fields are the graph's to set: a node carrying
    them is refused, naming them, rather than have them quietly replaced."""
    if isinstance(task, dict):
        assigned = [key for key in SET_BY_THE_GRAPH if key in task]
        if assigned:
            raise InvalidParams(
                f"invalid task: {', '.join(assigned)} {'is' if len(assigned) == 1 else 'are'} set by the graph; "
                "leave them out",
                {"reason": "set by the graph", "fields": assigned},
            )
    new = task if isinstance(task, NewTask) else _convert(task, NewTask)
    return _change(data_dir, lambda graph: graph.create(new, _now(clock)))


def update_task(
    task_id: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    **patch: Any,
) -> dict[str, Any]:
    """Change a task: ``expected_version=`` makes it conditional; ``reopen=True`` lets a
    finished task go back to pending. Returns the task with its new version."""
    change = _convert({"id": task_id, **patch}, TaskPatch)
    return _change(data_dir, lambda graph: graph.update(change, _now(clock)))


def list_active(
    statuses: Iterable[str] | None = None, *, data_dir: str | os.PathLike[str] | None = None
) -> list[dict[str, Any]]:
    """Tasks in ``statuses`` (default: pending, running, blocked), highest priority first."""
    path = _path_for(data_dir)
    with locked(path, exclusive=False):
        return [msgspec.to_builtins(t) for t in read_graph(path).list_active(statuses)]


def ready_tasks(*, data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Pending tasks whose dependencies are all done, highest priority first, then oldest."""
    path = _path_for(data_dir)
    with locked(path, exclusive=False):
        return [msgspec.to_builtins(t) for t in read_graph(path).ready()]


def _change(data_dir: str | os.PathLike[str] | None, apply: Callable[[TaskGraph], Task]) -> dict[str, Any]:
    """Read, change and write the graph under the exclusive lock; returns the changed task."""
    path = _path_for(data_dir)
    with locked(path, exclusive=True):
        remove_stale_temps(path)
        graph = read_graph(path)
        task = apply(graph)
        write_graph(path, graph)
    return msgspec.to_builtins(task)


def _convert(obj: dict[str, Any], kind: type[Any]) -> Any:
    try:
        return msgspec.convert(obj, kind)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid task: {exc}") from None


__all__ = [
    "GraphFileError",
    "Task",
    "create_task",
    "list_active",
    "load_graph",
    "ready_tasks",
    "save_graph",
    "update_task",
]
