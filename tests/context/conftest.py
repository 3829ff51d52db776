from tests.daemon.conftest import daemon, start_daemon  # noqa: F401  (real daemons for these tests too)
