"""Fault injection against real daemons: the same fixtures as tests/daemon, shared here."""

from __future__ import annotations

from tests.daemon.conftest import daemon, start_daemon  # noqa: F401
