"""The daemon fixtures of tests/daemon, for the client tests."""

from tests.daemon.conftest import daemon, start_daemon  # noqa: F401
