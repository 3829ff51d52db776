"""The long-running daemon: the event log served as JSON-RPC 2.0 over a Unix socket."""

from __future__ import annotations

from sidecar.daemon.config import Config, load_config
from sidecar.daemon.server import Daemon, serve

__all__ = ["Config", "Daemon", "load_config", "serve"]
