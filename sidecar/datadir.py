"""The data directory's layout, and the one place that knows where it is by default."""

from __future__ import annotations

import os

DEFAULT_DATA_DIR = "./data"
SUBDIRS = ("logs", "summaries", "archive")
EMPTY_GRAPH = b'{"tasks": []}\n'


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> str:
    """``data_dir``, else ``$SIDECAR_DATA_DIR``, else ``./data``, as an absolute path."""
    chosen = data_dir if data_dir is not None else os.environ.get("SIDECAR_DATA_DIR") or DEFAULT_DATA_DIR
    return os.path.abspath(os.fspath(chosen))


def ensure_layout(data_dir: str | os.PathLike[str]) -> str:
    """Create whatever of the scaffold is missing (never touching what exists); returns the path."""
    root = os.path.abspath(os.fspath(data_dir))
    for sub in SUBDIRS:
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    graph = os.path.join(root, "tasks.graph.json")
    try:
        fd = os.open(graph, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return root
    try:
        os.write(fd, EMPTY_GRAPH)
        os.fsync(fd)
    finally:
        os.close(fd)
    return root
