"""JSON-RPC 2.0 over newline-delimited JSON, without any I/O (bytes in, bytes out).

:class:`Framer` cuts a byte stream into lines and enforces the size limit;
:func:`parse_message` turns one line into requests (or the error the specification asks
for); the ``*_response`` helpers build replies. Everything here is pure, so it is tested,
and fuzzed, apart from any socket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from sidecar.jsondepth import nesting_exceeds

JSONRPC = "2.0"

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
OVERLOADED = -32005

_encoder = msgspec.json.Encoder()

Id = msgspec.Raw | str | int | float | None  # Raw: the caller's own bytes, echoed back


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


@dataclass(slots=True)  # not frozen: a frozen init costs a setattr call per field
class Request:
    """One call. ``is_notification`` means the caller wants no reply (no ``id`` member).

    ``params`` is the undecoded JSON object (``msgspec.Raw``): the dispatcher decodes it
    straight into the method's params Struct. A dict is accepted too (tests, in-process
    callers). ``id`` is kept as the caller's raw JSON, so it is echoed back byte for byte
    (a 40-digit number, ``1.0`` and ``1e400`` included)."""

    method: str
    params: dict[str, Any] | msgspec.Raw
    id: Id = None
    is_notification: bool = False


@dataclass(slots=True)
class Invalid:
    """A member of the message that is not a valid request: reply with this error."""

    id: Id
    code: int
    message: str


Item = Request | Invalid


@dataclass(slots=True)
class Message:
    """A parsed line: its items, and whether they came as a batch (reply with an array)."""

    items: list[Item]
    batch: bool


@dataclass(frozen=True, slots=True)
class Limits:
    """What one line may ask of us (``[server]`` in the config)."""

    max_depth: int = 64  # nesting of params, counted from the params object itself
    max_batch: int = 1000  # members of one batch


DEFAULT_LIMITS = Limits()


class _Single(msgspec.Struct, forbid_unknown_fields=True):
    """The common case, a single well-formed request, decoded in one pass."""

    jsonrpc: str
    method: str
    params: msgspec.Raw = msgspec.Raw(b"{}")
    id: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_single_decoder = msgspec.json.Decoder(_Single)
_members_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_batch_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_raw_decoder = msgspec.json.Decoder(msgspec.Raw)
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)

_LONE_SURROGATE = re.compile(
    rb"(\\\\)|\\u[dD][89abAB][0-9a-fA-F]{2}(?:\\u[dD][c-fC-F][0-9a-fA-F]{2})?|\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _mend_surrogate(match: re.Match[bytes]) -> bytes:
    text = match.group(0)
    if match.group(1) is not None or len(text) == 12:  # an escaped backslash, or a whole pair
        return text
    return b"\\ufffd"


def mend_lone_surrogates(line: bytes) -> bytes:
    """``\\ud83d`` with no partner (what JavaScript's ``slice`` can cut a string into) is
    valid JSON but not valid Unicode: take it in as U+FFFD, as RFC 8259 leaves us free to."""
    return _LONE_SURROGATE.sub(_mend_surrogate, line)


def parse_message(line: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse one line into requests, following the specification's rules to the letter.

    Never raises: whatever the bytes, the answer is requests or the errors owed for them."""
    line = line.strip()  # (the same object when there is nothing to strip)
    batch = line[:1] == b"["
    deep = nesting_exceeds(line, limits.max_depth + (2 if batch else 1))
    if deep is None:
        return Message([Invalid(None, PARSE_ERROR, "Parse error: the message is not valid JSON")], False)
    if deep:
        why = f"Invalid Request: nested deeper than max_depth ({limits.max_depth})"
        return Message([Invalid(None, INVALID_REQUEST, why)], False)
    if b"\\" in line and _SURROGATE_ESCAPE.search(line):  # memchr first: most lines have no escape
        line = mend_lone_surrogates(line)
    if not batch:
        try:
            one = _single_decoder.decode(line)
        except _DECODE_ERRORS:
            pass  # anything unusual takes the careful path below
        else:
            if one.jsonrpc == JSONRPC and memoryview(one.params)[:1] == b"{" and _plain_id(one.id):
                if one.id is msgspec.UNSET:
                    return Message([Request(one.method, one.params, None, True)], False)
                return Message([Request(one.method, one.params, one.id, False)], False)
    try:
        if batch:
            members = _batch_decoder.decode(line)
        else:
            _raw_decoder.decode(line)  # valid JSON at all?
            members = None
    except _DECODE_ERRORS:
        return Message([Invalid(None, PARSE_ERROR, "Parse error: the message is not valid JSON")], False)
    if members is None:
        return Message([_parse_request(line)], False)
    if not members:
        return Message([Invalid(None, INVALID_REQUEST, "Invalid Request: empty batch")], False)
    if len(members) > limits.max_batch:
        why = f"Invalid Request: a batch of {len(members)} members; at most max_batch ({limits.max_batch})"
        return Message([Invalid(None, INVALID_REQUEST, why)], False)
    return Message([_parse_request(bytes(member)) for member in members], True)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_ID_START = frozenset(b'"-0123456789')


def _plain_id(raw: msgspec.Raw | msgspec.UnsetType) -> bool:
    """A string, a number or null: what the specification allows an id to be."""
    if raw is msgspec.UNSET:
        return True
    text = bytes(raw)  # never empty: the decoder found a value
    return text[0] in _ID_START or text == b"null"  # a string (checked by the decoder) or a number


def _parse_request(member: bytes) -> Item:
    """One member of a message (valid JSON already), checked member by member."""
    if member[:1] != b"{":
        return Invalid(None, INVALID_REQUEST, "Invalid Request: expected a JSON object")
    try:
        doc = _members_decoder.decode(member)
    except _DECODE_ERRORS:  # valid JSON, so: a key that is not valid Unicode, or a repeat
        return Invalid(None, INVALID_REQUEST, "Invalid Request: the object's keys cannot be read")
    raw_id = doc.get("id", msgspec.UNSET)
    if not _plain_id(raw_id):
        return Invalid(None, INVALID_REQUEST, "Invalid Request: id must be a string, number or null")
    req_id: Id = None if raw_id is msgspec.UNSET else raw_id
    if _value(doc.get("jsonrpc")) != JSONRPC:
        return Invalid(req_id, INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be exactly "2.0"')
    method = _value(doc.get("method"))
    if not isinstance(method, str):
        return Invalid(req_id, INVALID_REQUEST, 'Invalid Request: "method" must be a string')
    extra = set(doc) - {"jsonrpc", "method", "params", "id"}
    if extra:
        return Invalid(req_id, INVALID_REQUEST, f"Invalid Request: unknown members {sorted(extra)}")
    params = doc.get("params")
    first = b"n" if params is None else bytes(memoryview(params)[:1])
    if first == b"n" and (params is None or bytes(params) == b"null"):
        params = msgspec.Raw(b"{}")
    elif first == b"[":
        if _value(params) != []:
            return Invalid(req_id, INVALID_PARAMS, "Invalid params: pass params by name, as an object")
        params = msgspec.Raw(b"{}")
    elif first != b"{":
        return Invalid(req_id, INVALID_REQUEST, 'Invalid Request: "params" must be an object or an array')
    assert params is not None
    return Request(method, params, req_id, raw_id is msgspec.UNSET)


def _value(raw: msgspec.Raw | None) -> object:
    """A small member's value; anything unreadable is ``None`` (and so refused by the caller)."""
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw)
    except _DECODE_ERRORS:
        return None


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
