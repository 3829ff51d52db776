"""systemd's notify protocol, spoken directly: datagrams to ``$NOTIFY_SOCKET``, no libsystemd."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends ``READY=1``, ``STOPPING=1``, ``WATCHDOG=1``; does nothing when not under systemd."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        address = env.get("NOTIFY_SOCKET")
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self.address = address
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        mine = pid is None or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2_000_000 if usec and mine else None

    def send(self, state: str) -> bool:
        if not self.address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(state.encode(), self.address)
            except OSError:
                return False
        return True
