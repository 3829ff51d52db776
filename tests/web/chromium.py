"""Which Chromium the browser tests and ``docs/screenshot.py`` drive, and how it is started."""

from __future__ import annotations

import os
import shutil

# As the machine's notes advise for a closed network: no background connections, no sandbox
# (tests may run as root); Playwright gives each launch a fresh profile.
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def path() -> str | None:
    """``$SIDECAR_BROWSER``, else Debian's ``chromium`` (``./dev test`` installs it)."""
    return os.environ.get("SIDECAR_BROWSER") or shutil.which("chromium") or shutil.which("chromium-browser")
