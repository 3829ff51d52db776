"""What both clients share: where the socket is, and how a reply becomes a result."""

from __future__ import annotations

import os
from collections import deque
from typing import Any

from sidecar_client.errors import RpcError


def default_socket_path() -> str:
    """``$SIDECAR_SOCKET``, else ``$XDG_RUNTIME_DIR/sidecar/sidecar.sock``, else
    ``/tmp/sidecar-$UID/sidecar.sock`` (the daemon's own default)."""
    explicit = os.environ.get("SIDECAR_SOCKET")
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "sidecar", "sidecar.sock")
    return f"/tmp/sidecar-{os.getuid()}/sidecar.sock"


def unavailable_message(path: str, exc: OSError) -> str:
    return (
        f"no sidecar daemon answers on {path} ({exc.strerror or exc}); "
        "start one with `sidecar serve`, or point SIDECAR_SOCKET / --socket at it"
    )


def route_notification(message: dict[str, Any], queues: dict[Any, deque[dict[str, Any]]]) -> None:
    """A notification to its subscription's queue (``sys.shutdown``: to every queue)."""
    if message.get("method") == "sys.shutdown":
        for queue in queues.values():
            queue.append(message)
        return
    target = queues.get((message.get("params") or {}).get("subscription"))
    if target is not None:
        target.append(message)


def result_of(reply: dict[str, Any]) -> Any:
    if "error" in reply:
        err = reply["error"]
        raise RpcError(err.get("code", -32603), err.get("message", ""), err.get("data"))
    return reply.get("result")
