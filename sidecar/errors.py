"""Errors that cross the library boundary, each tied to the JSON-RPC code it becomes.

The daemon turns any :class:`SidecarError` into a JSON-RPC error object with ``code``,
``message`` and ``data`` taken straight from the exception, so the library and the wire
speak the same language.
"""

from __future__ import annotations

from typing import Any


class SidecarError(Exception):
    """Base class: a failure with a JSON-RPC error code and optional structured data."""

    code: int = -32603

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class InvalidParams(SidecarError):
    """The caller sent something malformed or out of bounds (-32602)."""

    code = -32602


class ConflictError(SidecarError):
    """An optimistic precondition (``expected_seq``, ``expected_version``) did not hold."""

    code = -32001


class NotFoundError(SidecarError):
    """The named event, task or summary does not exist."""

    code = -32002


class ForbiddenError(SidecarError):
    """User-visible text offered through a path that may not produce it."""

    code = -32003


class GateClosedError(SidecarError):
    """The narrator tried to speak without a valid grant."""

    code = -32004


class OverloadedError(SidecarError):
    """Back-pressure: the caller should retry later."""

    code = -32005


class StorageError(SidecarError):
    """The disk refused (full, I/O error, corrupt log): nothing from the request was acknowledged."""

    code = -32006


class CorruptLogError(StorageError):
    """A conversation's log has a bad line or a seq gap before its end; writes are refused."""
