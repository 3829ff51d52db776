"""Thin clients for the sidecar daemon's JSON-RPC socket."""

from __future__ import annotations

from sidecar_client._common import default_socket_path
from sidecar_client.aio import AsyncClient
from sidecar_client.client import Client
from sidecar_client.errors import ConnectionLost, DaemonUnavailable, RpcError
from sidecar_client.follow import follow

__all__ = ["AsyncClient", "Client", "ConnectionLost", "DaemonUnavailable", "RpcError", "default_socket_path", "follow"]
