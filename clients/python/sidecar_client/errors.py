"""Errors the client raises."""

from __future__ import annotations

from typing import Any


class RpcError(Exception):
    """The daemon answered with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data


class DaemonUnavailable(ConnectionError):
    """No daemon answers on the socket (the message names the socket tried)."""


class ConnectionLost(ConnectionError):
    """The daemon went away while a call was waiting for its answer."""


class ProtocolError(ConnectionLost):
    """The daemon sent what is not NDJSON-framed JSON-RPC (a line over the limit, or not a
    JSON object): the connection cannot be used any more."""
