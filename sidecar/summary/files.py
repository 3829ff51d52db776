"""Persisted summaries: ``summaries/{cid}.md`` and ``.json`` (the latest) and the snapshot each
``summary_ref`` names, for good, under ``summaries/_snapshots/{cid}/``.

Files in the data directory are not trusted: a file in the way (a symlink, a directory,
too big, not ours) is a storage error for that conversation only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec
import structlog

from sidecar.datadir import UnsafePathError, ensure_layout, private_dir, read_regular, resolve_data_dir
from sidecar.errors import InvalidParams, StorageError
from sidecar.fs import atomic_write, flock, fsync_dir
from sidecar.log.segments import DECODE_ERRORS
from sidecar.log.store import check_conversation_id
from sidecar.summary.state import Summary, as_dict, summary_ref

# The layout of ``summaries/``: for conversation ``c``, ``c.md`` and ``c.json`` (the latest),
# and ``_snapshots/c/{summary_ref}.md`` (each summary ever persisted, for good). No conversation
# id can collide with another's files: ``c.md`` and ``c.json`` end differently, and ids start
# with a letter or digit, so no id is ``_snapshots`` and no id's file starts with ``.``, as
# temp files do. (Older versions kept snapshots in ``c/``, where conversation ``a.md``'s
# directory took the name of conversation ``a``'s file; that layout is still read.)
SNAPSHOTS = "_snapshots"
MAX_SUMMARY_BYTES = 64 * 1024 * 1024  # a file bigger than this in summaries/ is not ours

log = structlog.get_logger("sidecar.summaries")


def persist_summary(
    conversation_id: str, summary: Summary | Mapping[str, Any], *, data_dir: str | os.PathLike[str] | None = None
) -> str:
    """Write ``summaries/{cid}.md`` (and ``{cid}.json`` with the rest) atomically, and keep the
    snapshot at ``summaries/_snapshots/{cid}/{summary_ref}.md`` for good; returns the ``.md`` path.

    Writers of one conversation take turns (an exclusive flock on its snapshot directory;
    readers take a shared one), so the ``.md`` and ``.json`` always describe one summary.
    A file that is in the way (a symlink, a directory) is a storage error for this
    conversation only."""
    check_conversation_id(conversation_id)
    if isinstance(summary, Summary):
        summary = as_dict(summary)
    markdown = summary["markdown"]
    ref = summary_ref(markdown)
    if summary.get("summary_ref") not in (None, ref):
        raise InvalidParams("summary_ref does not match the markdown", {"summary_ref": ref})
    meta = {k: v for k, v in summary.items() if k != "markdown"} | {"summary_ref": ref}
    with _storage(conversation_id, "persist the summary of"):
        root = os.path.join(ensure_layout(resolve_data_dir(data_dir)), "summaries")
        path = os.path.join(root, f"{conversation_id}.md")
        private_dir(os.path.join(root, SNAPSHOTS), what="summary snapshots directory")
        snapshots = os.path.join(root, SNAPSHOTS, conversation_id)
        private_dir(snapshots, what="summary snapshots directory")
        with _locked(snapshots, exclusive=True):
            for name in (f"{conversation_id}.md", f"{conversation_id}.json"):
                _move_old_snapshots(root, name)
            snapshot = os.path.join(snapshots, f"{ref}.md")
            if not os.path.lexists(snapshot):
                atomic_write(snapshot, markdown.encode())
            atomic_write(os.path.join(root, f"{conversation_id}.json"), json.dumps(meta, sort_keys=True).encode())
            atomic_write(path, markdown.encode())
    return path


def load_summary(conversation_id: str, *, data_dir: str | os.PathLike[str] | None = None) -> Summary | None:
    """The last persisted summary of a conversation, or ``None``."""
    check_conversation_id(conversation_id)
    root = os.path.join(resolve_data_dir(data_dir), "summaries")
    md_path = os.path.join(root, f"{conversation_id}.md")
    json_path = os.path.join(root, f"{conversation_id}.json")
    with _storage(conversation_id, "read the summary of"), _locked(_snapshots(root, conversation_id)):
        try:
            if stat.S_ISDIR(os.lstat(md_path).st_mode):
                return None  # the old layout's snapshots of conversation "{cid}.md", not ours
            markdown = read_regular(md_path, MAX_SUMMARY_BYTES).decode()
            raw_meta = read_regular(json_path, MAX_SUMMARY_BYTES)
        except FileNotFoundError:
            return None
        try:
            meta = msgspec.json.decode(raw_meta)
        except DECODE_ERRORS as exc:
            raise UnsafePathError(f"{json_path} is not a summary's JSON: {exc}", errno.EINVAL) from None
        if not isinstance(meta, dict):
            raise UnsafePathError(f"{json_path} is not a summary's JSON: not an object", errno.EINVAL)
        ref = summary_ref(markdown)
        try:  # what the disk says, checked: any other writer may have put it there
            found = msgspec.convert({**meta, "markdown": markdown, "summary_ref": ref}, Summary)
        except msgspec.ValidationError as exc:
            raise UnsafePathError(f"{json_path} is not a summary's JSON: {exc}", errno.EINVAL) from None
    if meta.get("summary_ref") != ref:
        log.warning("summary.files_disagree", conversation_id=conversation_id, md=ref, json=meta.get("summary_ref"))
    return found


def load_snapshot(conversation_id: str, ref: str, *, data_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The markdown a ``summary_ref`` names, as it was when persisted."""
    check_conversation_id(conversation_id)
    if not (len(ref) == 64 and all(c in "0123456789abcdef" for c in ref)):
        raise InvalidParams("a summary_ref is 64 lowercase hex digits")
    root = os.path.join(resolve_data_dir(data_dir), "summaries")
    with _storage(conversation_id, "read a summary snapshot of"):
        for directory in (_snapshots(root, conversation_id), os.path.join(root, conversation_id)):
            try:
                if not stat.S_ISDIR(os.lstat(directory).st_mode):
                    continue  # in the old layout, "{cid}" may be a symlink or a file: never followed
                return read_regular(os.path.join(directory, f"{ref}.md"), MAX_SUMMARY_BYTES).decode()
            except FileNotFoundError:
                continue
    return None


def delete_summaries(conversation_id: str, *, data_dir: str | os.PathLike[str] | None = None) -> int:
    """Delete a conversation's summaries: the latest (``.md``, ``.json``) and every snapshot;
    how many files went. Nothing is followed: a link in the way is unlinked, not its target."""
    check_conversation_id(conversation_id)
    root = os.path.join(resolve_data_dir(data_dir), "summaries")
    removed = 0
    with _storage(conversation_id, "delete the summaries of"):
        for name in (f"{conversation_id}.md", f"{conversation_id}.json"):
            removed += _unlink(os.path.join(root, name))
        for directory in (os.path.join(root, SNAPSHOTS, conversation_id), os.path.join(root, conversation_id)):
            try:
                if not stat.S_ISDIR(os.lstat(directory).st_mode):
                    continue  # the old layout's "{cid}" may be anything: not ours to remove
            except FileNotFoundError:
                continue
            with os.scandir(directory) as entries:
                names = [e.path for e in entries]
            for path in names:
                removed += _unlink(path)
            os.rmdir(directory)
        fsync_dir(root)
    return removed


def _unlink(path: str) -> int:
    try:
        os.unlink(path)
        return 1
    except FileNotFoundError:
        return 0


def _snapshots(root: str, conversation_id: str) -> str:
    """The conversation's snapshot directory, once ``_snapshots`` is known to be no link."""
    private_dir(os.path.join(root, SNAPSHOTS), create=False, what="summary snapshots directory")
    return os.path.join(root, SNAPSHOTS, conversation_id)


@contextlib.contextmanager
def _storage(conversation_id: str, doing: str) -> Iterator[None]:
    """Any OS error (a symlink or a directory in the way, a full disk) or undecodable file
    becomes a storage error naming the conversation: only this conversation's summary fails."""
    try:
        yield
    except (OSError, UnicodeDecodeError) as exc:
        reason = str(exc) if isinstance(exc, UnsafePathError) else f"{type(exc).__name__}: {exc}"
        raise StorageError(
            f"could not {doing} {conversation_id!r}: {reason}", {"conversation_id": conversation_id}
        ) from None


@contextlib.contextmanager
def _locked(snapshots: str, *, exclusive: bool = False) -> Iterator[None]:
    """Hold a conversation's summary lock: a flock on its snapshot directory (none yet, no
    summary written in this layout yet: nothing to wait for)."""
    try:
        fd = os.open(snapshots, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if exclusive:
            raise
        yield
        return
    try:
        flock(fd, exclusive=exclusive)
        yield
    finally:
        os.close(fd)


def _move_old_snapshots(root: str, name: str) -> None:
    """An old-layout snapshot directory named like one of our files (conversation ``a.md``'s
    in the way of conversation ``a``): move its snapshots to the new place first."""
    old = os.path.join(root, name)
    try:
        if not stat.S_ISDIR(os.lstat(old).st_mode):
            return
    except FileNotFoundError:
        return
    target = os.path.join(root, SNAPSHOTS, name)
    private_dir(target, what="summary snapshots directory")
    with os.scandir(old) as entries:
        for entry in entries:
            if entry.name.endswith(".md") and entry.is_file(follow_symlinks=False):
                moved = os.path.join(target, entry.name)
                if os.path.lexists(moved):
                    os.unlink(entry.path)  # the same summary_ref: the same bytes
                else:
                    os.rename(entry.path, moved)
    os.rmdir(old)  # anything else left in it: OSError, and this conversation's persist fails
    fsync_dir(target)
    fsync_dir(root)
    log.warning("summary.snapshots_moved", source=old, target=target)
