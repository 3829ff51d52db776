"""The event schema: one ``msgspec.Struct`` per record, used to validate, encode and document.

``NewEvent`` is what a writer may send (strict: unknown fields and bad values are refused).
``Event`` is what the log holds and queries return; the sidecar fills in ``id`` (when the
writer gave none), ``seq`` and ``timestamp``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from sidecar.errors import InvalidParams
from sidecar.jsondepth import nesting_exceeds

# Every pattern matches the whole string: ``$`` alone also matches before a final newline in
# Python's ``re`` (which msgspec uses), so each ends with ``$(?!\n)``. That stays valid
# ECMAScript (the patterns go into the JSON Schema the TypeScript client is built from),
# where ``\Z`` would not.
WHOLE = r"$(?!\n)"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}" + WHOLE
CONVERSATION_ID_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127}" + WHOLE
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*" + WHOLE

# Each pattern's description is its plain words: -32602's `expected`, the reference and the
# clients' doc comments all show it instead of the regex.
EventId = Annotated[
    str,
    Meta(
        pattern=UUID_PATTERN,
        description="a UUID such as 0190a1b2-c3d4-7e5f-8a6b-9c0d1e2f3a4b (the sidecar assigns UUIDv7)",
    ),
]
ConversationId = Annotated[
    str,
    Meta(
        pattern=CONVERSATION_ID_PATTERN,
        description="1 to 128 characters: letters, digits, '.', '_' or '-', starting with a letter or digit, "
        "without '..' (it names the log file)",
    ),
]
EventType = Annotated[
    str,
    Meta(
        pattern=EVENT_TYPE_PATTERN,
        max_length=128,
        description="dotted lower case such as agent.progress: words of a-z, 0-9 and '_', each starting with a letter",
    ),
]
Label = Annotated[str, Meta(min_length=1, max_length=256)]
Turn = Annotated[int, Meta(ge=0)]
Seq = Annotated[int, Meta(ge=0)]
Counter = Annotated[int, Meta(ge=1, le=2**53 - 1)]
VectorClock = Annotated[
    dict[Label, Counter],
    Meta(
        max_length=1000,
        description="writer id (an agent_id, or sidecar) to how many of that writer's events it has seen",
    ),
]
Visibility = Literal["user", "status", "internal"]
Level = Literal["milestone", "decision", "action", "state", "detail"]

LEVELS: tuple[str, ...] = ("milestone", "decision", "action", "state", "detail")


class NewEvent(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An event as a writer offers it. ``expected_seq`` is a precondition, not stored."""

    conversation_id: ConversationId
    type: EventType
    id: EventId | None = None
    visibility: Visibility = "internal"
    level: Level = "action"
    agent_id: Label | None = None
    task_id: Label | None = None
    turn: Turn | None = None
    caused_by: list[EventId] = []
    clock: VectorClock | None = None
    data: dict[str, Any] = {}
    expected_seq: Seq | None = None

    def __post_init__(self) -> None:
        # UUIDs compare case-insensitively; store one canonical spelling so ids stay idempotent.
        if self.id is not None:
            self.id = self.id.lower()
        if self.caused_by:
            self.caused_by = [ref.lower() for ref in self.caused_by]


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One line of a conversation log. Field order is the on-disk order."""

    id: str
    seq: int
    timestamp: str
    conversation_id: str
    type: str
    visibility: Visibility
    level: Level
    agent_id: str | None = None
    task_id: str | None = None
    turn: int | None = None
    caused_by: list[str]
    clock: dict[str, int] = {}
    data: dict[str, Any]


class AppendResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The acknowledgement of one durable append; ``duplicate`` marks an idempotent repeat."""

    id: str
    seq: int
    timestamp: str
    clock: dict[str, int]  # the event's vector clock: an agent runtime merges it into what it knows
    duplicate: bool = False


class ConversationInfo(msgspec.Struct, kw_only=True):
    """``event_count`` counts the events kept: ``first_seq`` is the oldest retention left."""

    conversation_id: str
    event_count: int
    first_seq: int
    first_timestamp: str | None
    last_timestamp: str | None
    last_seq: int


class Page(msgspec.Struct, kw_only=True):
    """A page of events in (timestamp, conversation_id, seq) order; pass ``next_cursor`` back for more."""

    events: list[Event]
    next_cursor: str | None = None


class Causality(msgspec.Struct, kw_only=True):
    """An event with what led to it (``upstream``) and what it led to (``downstream``)."""

    event: Event
    upstream: list[Event]
    downstream: list[Event]
    missing: list[str] = []
    truncated: bool = False


_event_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(Event)


# The deepest an event line may nest (the event object is level 1, its data level 2): any
# deeper and decoding it, or encoding it into a reply, could exhaust the stack. Every way in
# is bounded below it: the wire by `[server] max_depth` (capped under it), the library by
# as_new_event; so whatever is written can be read back.
MAX_EVENT_DEPTH = 256


class TooDeep(msgspec.DecodeError):
    """An event line nested deeper than :data:`MAX_EVENT_DEPTH`."""


def encode_event(event: Event) -> bytes:
    """One log line, newline included."""
    return _event_encoder.encode(event) + b"\n"


def decode_event(line: bytes) -> Event:
    """An event from a log line; a line nested past :data:`MAX_EVENT_DEPTH` (which only an
    outside edit can leave) raises :class:`TooDeep` before the recursive decoder runs."""
    if nesting_exceeds(line, MAX_EVENT_DEPTH):
        raise TooDeep(f"the line nests deeper than {MAX_EVENT_DEPTH} levels")
    return _event_decoder.decode(line)


def placed(new: NewEvent, *, event_id: str, seq: int, timestamp: str, clock: dict[str, int]) -> Event:
    """The event a writer's ``new`` becomes at its place in a log."""
    return Event(
        id=event_id,
        seq=seq,
        timestamp=timestamp,
        conversation_id=new.conversation_id,
        type=new.type,
        visibility=new.visibility,
        level=new.level,
        agent_id=new.agent_id,
        task_id=new.task_id,
        turn=new.turn,
        caused_by=new.caused_by,
        clock=clock,
        data=new.data,
    )


def encode_within(event: Event, limit: int) -> bytes:
    """The event's line, or :class:`InvalidParams` when it is over ``limit`` bytes encoded."""
    line = encode_event(event)
    if len(line) > limit:
        raise InvalidParams(
            f"event is {len(line)} bytes encoded, over the limit of {limit}",
            {"bytes": len(line), "max_event_bytes": limit},
        )
    return line


def event_to_dict(event: Event) -> dict[str, Any]:
    """Plain builtins for callers of the embedded API."""
    return msgspec.to_builtins(event)


def as_new_event(obj: NewEvent | dict[str, Any]) -> NewEvent:
    """Validate a writer's input; any problem becomes :class:`InvalidParams` naming the field."""
    if isinstance(obj, NewEvent):
        # Built in Python, so constraints have not run yet: round-trip through the validator.
        obj = msgspec.structs.asdict(obj)
        obj = {k: v for k, v in obj.items() if v is not None}
    if not isinstance(obj, dict):
        raise InvalidParams(f"an event must be a JSON object, not {type(obj).__name__}")
    for field in ("seq", "timestamp"):
        if field in obj:
            raise InvalidParams(f"`{field}` is assigned by the sidecar; leave it out", {"field": field})
    try:
        event = msgspec.convert(obj, NewEvent)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid event: {exc}") from None
    except RecursionError:
        event = None
    if event is None or _too_deep(event.data):
        raise InvalidParams(f"the event's data nests deeper than {MAX_EVENT_DEPTH - 1} levels", {"field": "data"})
    return event


def _too_deep(data: dict[str, Any]) -> bool:
    """Whether ``data`` (built in Python, so never measured on the wire) nests past what the
    log can read back."""
    try:
        return bool(nesting_exceeds(_event_encoder.encode(data), MAX_EVENT_DEPTH - 1))
    except RecursionError:
        return True
