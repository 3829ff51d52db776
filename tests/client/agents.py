"""What the agent runtime's tests share: waiting on a condition, a client, an agent in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sidecar_client import Agent, Client

from tests.support import within

WAIT = 15.0  # seconds any one thing may take before the test fails instead of hanging
T = TypeVar("T")


def wait_for(check: Callable[[], T], what: str, timeout: float = WAIT) -> T:
    """``check()`` until it is truthy (its value), for at most ``timeout``."""
    return within(timeout, check, what)


def connect(d: Any) -> Client:
    return Client(d.socket_path, timeout=WAIT)


@contextmanager
def running(agent: Agent) -> Iterator[Agent]:
    """``agent.run()`` in a thread of its own; stopped (and checked to return cleanly) after."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            agent.run()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=body, name=f"test agent {agent.agent_id}", daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        agent.stop()
        thread.join(timeout=WAIT)
        assert not thread.is_alive(), "the agent did not stop"
        assert not errors, errors
