"""How RLIMIT_NOFILE is shared out: the store's log files and a reserve first, then connections."""

from __future__ import annotations

import resource

import pytest

from sidecar.daemon.unix import descriptor_budget
from sidecar.log.files import open_files_budget


@pytest.fixture
def nofile(monkeypatch):
    def set_soft(soft: int) -> None:
        monkeypatch.setattr(resource, "getrlimit", lambda _which: (soft, resource.RLIM_INFINITY))

    return set_soft


@pytest.mark.parametrize("soft", [16, 64, 128, 1024, 65536])
def test_connections_log_files_and_refusals_fit_under_the_limit(nofile, soft: int) -> None:
    nofile(soft)
    budget = descriptor_budget(max_connections=10**6)
    assert budget.connections >= 1 and budget.lingering_refusals >= 1
    if soft >= 128:  # tiny limits get one connection, whatever it costs
        assert budget.connections + budget.lingering_refusals + open_files_budget() < soft


def test_max_connections_wins_when_it_is_lower(nofile) -> None:
    nofile(65536)
    assert descriptor_budget(max_connections=20).connections == 20
    assert open_files_budget() == 256


def test_an_unlimited_nofile_leaves_max_connections_alone(nofile) -> None:
    nofile(resource.RLIM_INFINITY)
    assert descriptor_budget(max_connections=5000) == (5000, 32)
