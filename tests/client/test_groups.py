"""follow(group=...): durable consumer groups (CONTRACT §14) from the Python client, against a
real daemon: a consumer that stops hands over at the acked event, a daemon restart (SIGTERM or
kill -9) under a live consumer loses nothing and repeats nothing past the ack, and a second live
consumer of a group waits for the first.

Acks are at-least-once: follow() acks an event when the caller asks for the next one, so the
event a consumer stopped on (or crashed on) is the first its group's next consumer gets.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sidecar_client import Client, RpcError, follow

from tests.daemon.conftest import DaemonProc, daemon, start_daemon  # noqa: F401

WAIT = 20.0


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def append(d: DaemonProc, cid: str, n: int) -> None:
    with Client(d.socket_path) as c:
        for _ in range(n):
            c.log_append(conversation_id=cid, type="agent.progress")


def acked(d: DaemonProc, group: str, cid: str) -> int | None:
    with Client(d.socket_path) as c:
        rows = c.log_groups()["groups"]
    return next((r["acked_seq"] for r in rows if (r["group"], r["conversation_id"]) == (group, cid)), None)


def acked_on_disk(data_dir: Path, group: str, cid: str) -> int | None:
    """The daemon's groups file (data/groups.json): what survives a kill -9."""
    try:
        doc = json.loads((data_dir / "groups.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet / being replaced
        return None
    return next((g["acked_seq"] for g in doc["groups"] if (g["group"], g["conversation_id"]) == (group, cid)), None)


def seqs(events: Iterator[dict[str, Any]], n: int) -> list[int]:
    return [next(events)["seq"] for _ in range(n)]


def test_a_new_consumer_of_the_group_starts_at_the_event_the_last_one_stopped_on(daemon) -> None:  # noqa: F811
    append(daemon, "c-g", 5)
    first = follow("c-g", group="g", socket_path=daemon.socket_path)
    assert seqs(first, 3) == [1, 2, 3]  # 1 and 2 acked when 2 and 3 were asked for
    first.close()  # stopped while on 3: not acked
    assert acked(daemon, "g", "c-g") == 2

    second = follow("c-g", group="g", socket_path=daemon.socket_path)
    assert seqs(second, 3) == [3, 4, 5]  # no gap, and nothing before the ack again
    second.close()
    assert acked(daemon, "g", "c-g") == 4
    with Client(daemon.socket_path) as c:
        rows = c.log_groups()["groups"]
    assert {"group": "g", "conversation_id": "c-g", "acked_seq": 4, "lag": 1} in rows

    # Another group has its own position; from_seq places a new group only.
    other = follow("c-g", group="other", from_seq=4, socket_path=daemon.socket_path)
    assert seqs(other, 2) == [4, 5]
    other.close()
    again = follow("c-g", group="g", from_seq=1, socket_path=daemon.socket_path)
    assert seqs(again, 1) == [5]
    again.close()


def test_without_a_group_nothing_is_acked(daemon) -> None:  # noqa: F811
    append(daemon, "c-plain", 3)
    events = follow("c-plain", from_seq=2, socket_path=daemon.socket_path)
    assert seqs(events, 2) == [2, 3]
    events.close()
    with Client(daemon.socket_path) as c:
        assert c.log_groups()["groups"] == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_daemon_restart_under_a_consumer_loses_nothing_and_repeats_nothing(start_daemon, sig: int) -> None:  # noqa: F811
    first = start_daemon()
    append(first, "c-r", 3)
    got: queue.Queue[int] = queue.Queue()
    failed: list[BaseException] = []

    def consume() -> None:
        try:
            for event in follow("c-r", group="g", socket_path=first.socket_path, give_up_after_s=WAIT):
                got.put(event["seq"])
                if event["seq"] == 6:
                    break  # stops on 6: not acked
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failed.append(exc)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    assert [got.get(timeout=WAIT) for _ in range(3)] == [1, 2, 3]
    wait_until(lambda: acked(first, "g", "c-r") == 3, "3 acked (the consumer waits for 4)")
    if sig == signal.SIGKILL:
        wait_until(lambda: acked_on_disk(first.data_dir, "g", "c-r") == 3, "the ack of 3 on disk", timeout=5)
    first.stop(sig)

    second = start_daemon(socket_path=first.socket_path)  # the consumer is backing off meanwhile
    append(second, "c-r", 3)
    assert [got.get(timeout=WAIT) for _ in range(3)] == [4, 5, 6]
    consumer.join(WAIT)
    assert not consumer.is_alive() and not failed, failed
    assert got.empty()
    assert acked(second, "g", "c-r") == 5

    # The daemon's own position: the group's next consumer starts on the unacked 6.
    later = follow("c-r", group="g", socket_path=second.socket_path)
    assert seqs(later, 1) == [6]
    later.close()


def test_a_second_live_consumer_of_a_group_waits_for_the_first(daemon) -> None:  # noqa: F811
    append(daemon, "c-b", 3)
    first = follow("c-b", group="g", socket_path=daemon.socket_path)
    assert seqs(first, 1) == [1]

    # While the first holds the group, another is refused (-32001), retried, then given up on.
    started = time.monotonic()
    impatient = follow("c-b", group="g", socket_path=daemon.socket_path, give_up_after_s=0.3)
    with pytest.raises(RpcError) as err:
        next(impatient)
    assert err.value.code == -32001
    assert time.monotonic() - started >= 0.3

    # A patient one gets the group once the first goes away, from where the first stopped.
    got: queue.Queue[int] = queue.Queue()

    def consume() -> None:
        for event in follow("c-b", group="g", socket_path=daemon.socket_path, give_up_after_s=WAIT):
            got.put(event["seq"])
            if event["seq"] == 3:
                break

    patient = threading.Thread(target=consume, daemon=True)
    patient.start()
    assert seqs(first, 1) == [2]  # 1 acked; the patient one still waits
    assert got.empty()
    first.close()  # on 2, unacked
    assert [got.get(timeout=WAIT) for _ in range(2)] == [2, 3]
    patient.join(WAIT)
    assert not patient.is_alive()
    assert acked(daemon, "g", "c-b") == 2
