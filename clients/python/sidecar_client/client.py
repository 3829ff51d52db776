"""The synchronous client: standard library only, one request at a time."""

from __future__ import annotations

import itertools
import json
import socket
from collections import deque
from collections.abc import Iterator
from typing import Any

from sidecar_client._common import default_socket_path, result_of, unavailable_message
from sidecar_client.errors import ConnectionLost, DaemonUnavailable, RpcError


class Client:
    """A connection to the sidecar daemon.

    ``call`` sends one request and waits for its answer; notifications that arrive meanwhile
    are kept for ``subscribe``'s iterators.
    """

    def __init__(self, socket_path: str | None = None, *, timeout: float | None = 30.0) -> None:
        self.socket_path = socket_path or default_socket_path()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(self.socket_path)
        except OSError as exc:
            self._sock.close()
            raise DaemonUnavailable(unavailable_message(self.socket_path, exc)) from exc
        self._file = self._sock.makefile("rb")
        self._ids = itertools.count(1)
        self._notes: deque[dict[str, Any]] = deque()

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._sock.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        except OSError as exc:
            raise ConnectionLost(f"lost the connection to {self.socket_path}: {exc}") from exc

    def _receive(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise ConnectionLost(f"the daemon on {self.socket_path} closed the connection")
        return json.loads(line)

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Call ``method`` with named ``params``; returns the result or raises :class:`RpcError`."""
        req_id = next(self._ids)
        self._send({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params or {}})
        while True:
            message = self._receive()
            if "id" not in message:
                self._notes.append(message)
                continue
            if message["id"] == req_id or message["id"] is None:
                return result_of(message)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a notification: no answer is owed."""
        self._send({"jsonrpc": "2.0", "method": method, "params": params or {}})

    def subscribe(self, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Events matching ``params`` (the filter of log.query, and ``from_seq``), as they come.

        Raises :class:`RpcError` with ``log.overflow``'s params as data if the daemon dropped
        the subscription for falling behind.
        """
        sub = self.call("log.subscribe", params or {})["subscription"]
        return self._events(sub)

    def _events(self, sub: int) -> Iterator[dict[str, Any]]:
        while True:
            message = self._notes.popleft() if self._notes else self._receive()
            method = message.get("method")
            params = message.get("params") or {}
            if params.get("subscription") != sub and method != "sys.shutdown":
                continue  # another subscription's, or a late answer: not ours
            if method == "log.event":
                yield params["event"]
            elif method == "log.overflow":
                raise RpcError(-32005, "subscription dropped: the reader fell too far behind", params)
            elif method == "sys.shutdown":
                return

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
