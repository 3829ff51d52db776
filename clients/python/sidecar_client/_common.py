"""What both clients share besides the codec: where the socket is, and what to say when nobody answers there."""

from __future__ import annotations

import os


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
