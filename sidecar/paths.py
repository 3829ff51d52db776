"""Where the daemon listens by default.

The Python client (``sidecar_client.default_socket_path``) keeps an identical definition of its
own, so that either installs without the other; ``tests/test_layers.py`` checks that the two
agree for the same environment.
"""

from __future__ import annotations

import os


def default_socket_path() -> str:
    """``$SIDECAR_SOCKET``, else ``$XDG_RUNTIME_DIR/sidecar/sidecar.sock``, else
    ``/tmp/sidecar-$UID/sidecar.sock``."""
    explicit = os.environ.get("SIDECAR_SOCKET")
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "sidecar", "sidecar.sock")
    return f"/tmp/sidecar-{os.getuid()}/sidecar.sock"
