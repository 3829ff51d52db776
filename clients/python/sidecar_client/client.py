"""The synchronous client: standard library only, one request at a time."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from sidecar_client._common import default_socket_path, unavailable_message
from sidecar_client.codec import DEFAULT_MAX_LINE_BYTES, Codec, Event, Reply
from sidecar_client.errors import ConnectionLost, DaemonUnavailable, ProtocolError, RpcError
from sidecar_client.methods import SyncMethods

# ``on_notification(method, params)``: told every notification of a subscription that is not
# an event (``narrator.delta``, ``log.overflow``, ``sys.shutdown``, and any the daemon adds).
NotificationHandler = Callable[[str, dict[str, Any]], object]


class Client(SyncMethods):
    """A connection to the sidecar daemon.

    ``call`` sends one request and waits for its answer, at most ``timeout`` seconds;
    notifications that arrive meanwhile are kept for ``subscribe``'s iterators, which wait
    for events as long as it takes.

    ``socket_path``: the daemon's socket (default: :func:`~sidecar_client.default_socket_path`).
    ``timeout``: seconds a call waits for its answer (``None``: no limit).
    ``max_line_bytes``: the longest line accepted from the daemon, newline excluded (default
    :data:`~sidecar_client.codec.DEFAULT_MAX_LINE_BYTES`, 64 MiB, four times the daemon's
    default ``[server] max_reply_bytes``; ``None``: no bound). A longer line raises
    :class:`~sidecar_client.errors.ProtocolError` and closes the connection.
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        timeout: float | None = 30.0,
        max_line_bytes: int | None = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self.socket_path = socket_path or default_socket_path()
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.socket_path)
        except OSError as exc:
            self._sock.close()
            raise DaemonUnavailable(unavailable_message(self.socket_path, exc)) from exc
        self._codec = Codec(max_line_bytes)  # the framing, the ids and the subscriptions' queues
        self._closed = False

    def _send(self, line: bytes) -> None:
        if self._closed:
            raise ConnectionLost("the client was closed")
        self._sock.settimeout(self.timeout)
        try:
            self._sock.sendall(line)
        except OSError as exc:
            raise ConnectionLost(f"lost the connection to {self.socket_path}: {exc}") from exc

    def _receive(self, timeout: float | None) -> list[Event]:
        """The messages the next bytes complete (maybe none); waits at most ``timeout``
        seconds for them (``None``: as long as it takes)."""
        if self._closed:
            raise ConnectionLost("the client was closed")
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            raise  # the caller's deadline; the connection itself is still good
        except OSError as exc:
            raise ConnectionLost(f"lost the connection to {self.socket_path}: {exc}") from exc
        if not data:
            raise ConnectionLost(f"the daemon on {self.socket_path} closed the connection")
        try:
            return self._codec.feed(data)
        except ProtocolError:
            self.close()
            raise

    def _request(self, req_id: int, line: bytes) -> Reply:
        """Send one request and wait for its reply; notifications met meanwhile are queued."""
        try:
            self._send(line)
            while True:
                for event in self._receive(self.timeout):
                    if isinstance(event, Reply) and (event.id == req_id or event.id is None):
                        return event
        finally:
            self._codec.abandon(req_id)  # a reply that comes after a timeout is dropped

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Call ``method`` with named ``params``; returns the result or raises :class:`RpcError`."""
        return self._request(*self._codec.request(method, params)).unwrap()

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a notification: no answer is owed."""
        self._send(self._codec.notification(method, params))

    def subscribe(
        self, params: dict[str, Any] | None = None, *, on_notification: NotificationHandler | None = None
    ) -> Subscription:
        """Events matching ``params`` (the filter of log.query, and ``from_seq``), as they come.

        The iterator yields events only: the ``event`` of each ``log.event`` notification.
        The subscription's other notifications (``narrator.delta``, the built-in narrator's
        reply as it streams; ``log.overflow``; ``sys.shutdown``; any later kind) go to
        ``on_notification(method, params)`` when given, as they are met between events, and
        are skipped otherwise. Besides, ``log.overflow`` (the daemon dropped the subscription
        for falling behind) raises :class:`RpcError` -32005 with its params as data, and
        ``sys.shutdown`` ends the iteration.

        Several subscriptions may be open on one client. Leaving a ``for`` loop over the
        iterator (or ``close()``, or a ``with`` block around it) unsubscribes.
        """
        # The codec opens the subscription's queue as the answer comes: the daemon sends its
        # first event only after the answer, so every event of it is kept.
        sub = self._request(*self._codec.subscribe_request(params or {})).unwrap()["subscription"]
        return Subscription(self, sub, on_notification)

    def _next_event(self, sub: int, on_notification: NotificationHandler | None = None) -> dict[str, Any] | None:
        """The next event of ``sub``, or ``None`` once the daemon shuts down; other
        notifications on the way go to ``on_notification``."""
        while True:
            note = self._codec.next_notification(sub)
            if note is None:
                self._receive(None)  # events may be far apart: no deadline. Late answers are dropped.
                continue
            if note.event is not None:
                return note.event
            if on_notification is not None:
                on_notification(note.method, note.params)
            if note.ends_subscription():  # sys.shutdown; log.overflow raises RpcError -32005
                return None

    def _unsubscribe(self, sub: int, tell_daemon: bool) -> None:
        self._codec.close_subscription(sub)
        if tell_daemon and not self._closed:
            # A notification, not a call: this may run whenever an iterator is collected,
            # even in the middle of another call, so it must not read from the socket.
            try:
                self.notify("log.unsubscribe", {"subscription": sub})
            except ConnectionError:
                pass

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscription:
    """The events of one subscription: an iterator; closing it unsubscribes.

    Notifications that are not events go to ``on_notification`` (see :meth:`Client.subscribe`)."""

    def __init__(self, client: Client, sub: int, on_notification: NotificationHandler | None = None) -> None:
        self.client = client
        self.id = sub
        self.on_notification = on_notification
        self._open = True

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> dict[str, Any]:
        if not self._open:
            raise StopIteration
        try:
            event = self.client._next_event(self.id, self.on_notification)
        except (RpcError, ConnectionError):  # overflow or a lost connection: it ended daemon-side
            self._end(tell_daemon=False)
            raise
        if event is None:  # sys.shutdown
            self._end(tell_daemon=False)
            raise StopIteration
        return event

    def close(self) -> None:
        """Unsubscribe (the daemon is told; events already on their way are dropped)."""
        self._end(tell_daemon=True)

    def _end(self, tell_daemon: bool) -> None:
        if self._open:
            self._open = False
            self.client._unsubscribe(self.id, tell_daemon)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
