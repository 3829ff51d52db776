"""JSON-RPC 2.0 over newline-delimited JSON, without any I/O (bytes in, bytes out).

:class:`Framer` cuts a byte stream into lines and enforces the size limit;
:func:`parse_message` turns one line into requests (or the error the specification asks
for); the ``*_response`` helpers build replies. Everything here is pure, so it is tested,
and fuzzed, apart from any socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

JSONRPC = "2.0"

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()

Id = str | int | float | None


class FrameTooLarge(Exception):
    """A line passed ``max_message_bytes``; the rest of the stream cannot be trusted."""


class Framer:
    """Splits an NDJSON byte stream into lines, refusing any line over the limit."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Complete lines found so far (without newlines); raises :class:`FrameTooLarge`."""
        self._buffer += data
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            if end - start > self.max_message_bytes:
                raise FrameTooLarge(end - start)
            line = bytes(self._buffer[start:end]).strip()
            if line:
                lines.append(line)
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > self.max_message_bytes:
            raise FrameTooLarge(len(self._buffer))
        return lines

    @property
    def pending(self) -> int:
        return len(self._buffer)


@dataclass(frozen=True, slots=True)
class Request:
    """One call. ``is_notification`` means the caller wants no reply (no ``id`` member).

    ``params`` is a dict, or the undecoded JSON object (``msgspec.Raw``) when the fast path
    parsed it: the dispatcher then decodes it straight into the method's params Struct."""

    method: str
    params: dict[str, Any] | msgspec.Raw
    id: Id = None
    is_notification: bool = False


@dataclass(frozen=True, slots=True)
class Invalid:
    """A member of the message that is not a valid request: reply with this error."""

    id: Id
    code: int
    message: str


Item = Request | Invalid


@dataclass(frozen=True, slots=True)
class Message:
    """A parsed line: its items, and whether they came as a batch (reply with an array)."""

    items: list[Item]
    batch: bool


class _Single(msgspec.Struct, forbid_unknown_fields=True):
    """The common case, a single well-formed request, decoded in one pass."""

    jsonrpc: str
    method: str
    params: msgspec.Raw = msgspec.Raw(b"{}")
    id: str | int | float | None | msgspec.UnsetType = msgspec.UNSET


_single_decoder = msgspec.json.Decoder(_Single)


def parse_message(line: bytes) -> Message:
    """Parse one line into requests, following the specification's rules to the letter."""
    try:
        one = _single_decoder.decode(line)
        if one.jsonrpc == JSONRPC and memoryview(one.params)[:1] == b"{":
            if one.id is msgspec.UNSET:
                return Message([Request(one.method, one.params, None, True)], False)
            return Message([Request(one.method, one.params, one.id, False)], False)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        pass  # anything unusual takes the careful path below
    try:
        doc = _decoder.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return Message([Invalid(None, PARSE_ERROR, "Parse error: the message is not valid JSON")], False)
    if isinstance(doc, list):
        if not doc:
            return Message([Invalid(None, INVALID_REQUEST, "Invalid Request: empty batch")], False)
        return Message([_parse_request(member) for member in doc], True)
    return Message([_parse_request(doc)], False)


def _valid_id(value: object) -> bool:
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


def _parse_request(doc: object) -> Item:
    if not isinstance(doc, dict):
        return Invalid(None, INVALID_REQUEST, "Invalid Request: expected a JSON object")
    has_id = "id" in doc
    raw_id = doc.get("id")
    req_id: Id = raw_id if _valid_id(raw_id) else None
    if has_id and not _valid_id(raw_id):
        return Invalid(None, INVALID_REQUEST, "Invalid Request: id must be a string, number or null")
    if doc.get("jsonrpc") != JSONRPC:
        return Invalid(req_id, INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be exactly "2.0"')
    method = doc.get("method")
    if not isinstance(method, str):
        return Invalid(req_id, INVALID_REQUEST, 'Invalid Request: "method" must be a string')
    extra = set(doc) - {"jsonrpc", "method", "params", "id"}
    if extra:
        return Invalid(req_id, INVALID_REQUEST, f"Invalid Request: unknown members {sorted(extra)}")
    params = doc.get("params", {})
    if params is None:
        params = {}
    if isinstance(params, list):
        if params:
            return Invalid(req_id, INVALID_PARAMS, "Invalid params: pass params by name, as an object")
        params = {}
    if not isinstance(params, dict):
        return Invalid(req_id, INVALID_REQUEST, 'Invalid Request: "params" must be an object or an array')
    return Request(method, params, req_id, not has_id)


def result_response(req_id: Id, result: Any) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "id": req_id, "result": result}


def error_response(req_id: Id, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": JSONRPC, "id": req_id, "error": error}


def notification(method: str, params: Any) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "method": method, "params": params}


def encode(message: Any) -> bytes:
    """One NDJSON line."""
    return _encoder.encode(message) + b"\n"
