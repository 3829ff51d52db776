"""JSON-RPC 2.0 over NDJSON for the clients, without any I/O: bytes in, events out.

Both clients, the blocking :class:`~sidecar_client.Client` and the anyio
:class:`~sidecar_client.AsyncClient`, speak through one :class:`Codec`. It numbers the
requests and encodes them as lines (:meth:`Codec.request`, :meth:`Codec.notification`);
it cuts the bytes the caller received into lines (:meth:`Codec.feed`), parses them, and
hands back :class:`Reply` events, matched to the requests still waiting, and
:class:`Notification` events. It also keeps each open subscription's notifications
until its reader asks for them (:meth:`Codec.next_notification`), ``sys.shutdown``
going to every subscription. The clients keep only the socket and the waiting.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sidecar_client.errors import ProtocolError, RpcError

# The longest line the clients accept from the daemon unless told otherwise: four times the
# daemon's own cap on a reply line (``[server] max_reply_bytes``, 16 MiB by default), so a
# daemon configured a little higher still gets through, while a peer that never ends its line
# cannot grow a client's buffer without bound. ``Client(max_line_bytes=...)`` and
# ``AsyncClient.connect(max_line_bytes=...)`` change it; ``None`` lifts it.
DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024

INTERNAL_ERROR = -32603
OVERLOADED = -32005  # also: a subscription dropped for falling behind (log.overflow)


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one request: its ``result``, or its ``error``.

    ``id`` is ``None`` when the daemon could not tell which request it answers (it refused
    the connection, or could not read a line); ``method`` is the request's, when known;
    ``opened_subscription``: the answer to a :meth:`Codec.subscribe_request` opened its queue.
    """

    id: int | None
    result: Any = None
    error: RpcError | None = None
    method: str | None = None
    opened_subscription: bool = False

    def unwrap(self) -> Any:
        """The result, or raise the :class:`RpcError`."""
        if self.error is not None:
            raise self.error
        return self.result


@dataclass(frozen=True, slots=True)
class Notification:
    """A message the daemon sends unasked (``log.event``, ``log.overflow``, ``sys.shutdown``...)."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def subscription(self) -> Any:
        """The subscription it belongs to (``None`` for ``sys.shutdown``, which is everyone's)."""
        return self.params.get("subscription")

    @property
    def event(self) -> dict[str, Any] | None:
        """The event of a ``log.event`` notification; ``None`` for any other."""
        event = self.params.get("event")
        return event if self.method == "log.event" and isinstance(event, dict) else None

    def ends_subscription(self) -> bool:
        """Whether a subscription ends here: ``True`` for ``sys.shutdown``; ``log.overflow``
        (the daemon dropped the subscription for falling behind) raises :class:`RpcError`
        -32005, with its params as data; any other notification: ``False``."""
        if self.method == "log.overflow":
            raise RpcError(OVERLOADED, "subscription dropped: the reader fell too far behind", self.params)
        return self.method == "sys.shutdown"


Event = Reply | Notification


class Codec:
    """One connection's protocol state: request ids, the framing buffer, the subscriptions.

    ``max_line_bytes`` bounds one received line, without its newline (``None``: no bound;
    the clients pass :data:`DEFAULT_MAX_LINE_BYTES` unless told otherwise); a longer one, or a
    line that is not a JSON object, raises :class:`ProtocolError`, and so does every later
    :meth:`feed`: the rest of the stream cannot be trusted.
    """

    def __init__(self, max_line_bytes: int | None = None) -> None:
        self.max_line_bytes = max_line_bytes
        self._next_id = 1
        self._pending: dict[int, str] = {}  # request id -> its method
        self._subscribing: set[int] = set()  # ids of log.subscribe requests whose answer opens a queue
        self._queues: dict[Any, deque[Notification]] = {}  # open subscription -> its undelivered notifications
        self._buffer = bytearray()
        self._searched = 0  # how many bytes at the start of the buffer are known to hold no newline
        self._broken: ProtocolError | None = None

    # --- sending -----------------------------------------------------------------------------

    def request(self, method: str, params: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """A fresh id and the line to send; the id waits for its reply until it comes or is
        :meth:`abandon`-ed."""
        req_id = self._next_id
        self._next_id += 1
        self._pending[req_id] = method
        return req_id, _encode({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params or {}})

    def subscribe_request(self, params: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """A ``log.subscribe`` request whose successful answer opens its subscription's queue
        at once: the events that follow the answer are kept from then on."""
        req_id, line = self.request("log.subscribe", params)
        self._subscribing.add(req_id)
        return req_id, line

    def notification(self, method: str, params: dict[str, Any] | None = None) -> bytes:
        """The line of a notification: no id, no answer owed."""
        return _encode({"jsonrpc": "2.0", "method": method, "params": params or {}})

    def abandon(self, req_id: int) -> None:
        """Nobody waits for ``req_id`` any more (answered, timed out or cancelled): a reply
        that comes later is dropped."""
        self._pending.pop(req_id, None)
        self._subscribing.discard(req_id)

    @property
    def pending(self) -> set[int]:
        """The ids still waiting for a reply."""
        return set(self._pending)

    # --- receiving ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Event]:
        """The messages completed by ``data``, in order: the replies to requests still
        waiting (and those with a null id), and every notification, each of which is also
        queued for its subscription. A reply to an id nobody waits for is dropped."""
        if self._broken is not None:
            raise self._broken
        self._buffer += data
        events: list[Event] = []
        start = 0
        try:
            while True:
                # The bytes kept from earlier feeds hold no newline: search only the new ones,
                # so a long line coming in many pieces costs its length, not its length squared.
                end = self._buffer.find(b"\n", max(start, self._searched))
                if end < 0:
                    break
                self._check_size(end - start)
                line = bytes(self._buffer[start:end])
                start = end + 1
                if line.strip():
                    event = self._receive(_decode(line))
                    if event is not None:
                        events.append(event)
            del self._buffer[:start]
            self._searched = len(self._buffer)
            self._check_size(len(self._buffer))
        except ProtocolError as exc:
            self._broken = exc
            raise
        return events

    def _check_size(self, size: int) -> None:
        if self.max_line_bytes is not None and size > self.max_line_bytes:
            raise ProtocolError(f"the daemon sent a line of over {self.max_line_bytes} bytes")

    def _receive(self, message: dict[str, Any]) -> Event | None:
        if "id" not in message:
            params = message.get("params")
            note = Notification(str(message.get("method")), params if isinstance(params, dict) else {})
            self._route(note)
            return note
        req_id = message["id"]
        if req_id is None:
            return Reply(None, message.get("result"), _error_of(message))
        if not isinstance(req_id, int) or req_id not in self._pending:
            return None  # a late answer to a request nobody waits for
        result, error, method = message.get("result"), _error_of(message), self._pending.pop(req_id)
        opened = False
        if req_id in self._subscribing and error is None and isinstance(result, dict):
            if not _is_id(result.get("subscription")):
                self._subscribing.discard(req_id)
                raise ProtocolError(f"the daemon answered log.subscribe without a subscription id: {result!r:.200}")
            # Its events follow this answer at once: their queue must exist from now on.
            self.open_subscription(result.get("subscription"))
            opened = True
        self._subscribing.discard(req_id)
        return Reply(req_id, result, error, method, opened)

    def _route(self, note: Notification) -> None:
        if note.method == "sys.shutdown":
            for queue in self._queues.values():
                queue.append(note)
            return
        sub = note.subscription
        target = self._queues.get(sub) if _is_id(sub) else None  # a dict there must not raise
        if target is not None:
            target.append(note)

    # --- subscriptions -------------------------------------------------------------------------

    def open_subscription(self, sub: Any) -> None:
        """Keep ``sub``'s notifications from now on (a no-op when they are kept already)."""
        self._queues.setdefault(sub, deque())

    def close_subscription(self, sub: Any) -> None:
        """Stop keeping ``sub``'s notifications; those not yet read are dropped."""
        self._queues.pop(sub, None)

    def queued(self, sub: Any) -> int:
        """How many of ``sub``'s notifications wait to be read (0 once it is closed)."""
        queue = self._queues.get(sub)
        return len(queue) if queue is not None else 0

    def next_notification(self, sub: Any) -> Notification | None:
        """The oldest unread notification of ``sub``, or ``None`` until more bytes come.
        Raises ``KeyError`` when ``sub`` is not open."""
        queue = self._queues[sub]
        return queue.popleft() if queue else None


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError as exc:  # UnicodeDecodeError included
        raise ProtocolError(f"the daemon sent a line that is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"the daemon sent a line that is not a JSON object: {line[:80]!r}")
    return message


def _is_id(value: Any) -> bool:
    """A subscription id as the daemon gives them: an integer (a peer's dict or list is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _error_of(message: dict[str, Any]) -> RpcError | None:
    if "error" not in message:
        return None
    err = message["error"]
    if not isinstance(err, dict):
        return RpcError(INTERNAL_ERROR, str(err))
    return RpcError(err.get("code", INTERNAL_ERROR), err.get("message", ""), err.get("data"))
