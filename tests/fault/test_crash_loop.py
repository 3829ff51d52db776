"""kill -9 in a loop while several clients append: no acknowledged event is lost, seqs have no
gaps, and an event retried with its id after the crash is stored exactly once."""

from __future__ import annotations

import random
import signal
import threading
import uuid
from pathlib import Path

from sidecar_client import Client, ConnectionLost, DaemonUnavailable

WRITERS = 4
ROUNDS = 5


def new_event(writer: int, n: int) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "conversation_id": "crash",
        "type": "agent.progress",
        "agent_id": f"w{writer}",
        "data": {"n": n, "pad": "x" * random.randrange(10, 400)},
    }


class Load:
    """WRITERS threads appending until the daemon dies under them."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.lock = threading.Condition()
        self.acked: dict[str, int] = {}
        self.in_doubt: list[dict] = []  # sent, never answered: may or may not be stored

    def writer(self, w: int) -> None:
        try:
            c = Client(self.socket_path, timeout=30)
        except DaemonUnavailable:
            return
        n = 0
        with c:
            while True:
                event = new_event(w, n)
                try:
                    seq = c.call("log.append", event)["seq"]
                except (ConnectionLost, OSError):
                    with self.lock:
                        self.in_doubt.append(event)
                    return
                with self.lock:
                    self.acked[event["id"]] = seq
                    self.lock.notify_all()
                n += 1

    def run_until_killed(self, proc, kill_after: int) -> None:
        threads = [threading.Thread(target=self.writer, args=(w,)) for w in range(WRITERS)]
        for t in threads:
            t.start()
        with self.lock:
            assert self.lock.wait_for(lambda: len(self.acked) >= kill_after, timeout=60), len(self.acked)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive()


def read_all(socket_path: str) -> list[dict]:
    events: list[dict] = []
    cursor = None
    with Client(socket_path) as c:
        while True:
            params = {"conversation_id": "crash", "limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = c.call("log.query", params)
            events += page["events"]
            cursor = page["next_cursor"]
            if not cursor:
                return events


def test_kill_9_loops_under_concurrent_load(start_daemon, tmp_path: Path) -> None:
    data = tmp_path / "data"
    rng = random.Random(20261123)
    acked: dict[str, int] = {}
    retry: list[dict] = []
    for _ in range(ROUNDS):
        d = start_daemon(data_dir=data)
        with Client(d.socket_path) as c:  # what a client does after a crash: resend with the same id
            for event in retry:
                answer = c.call("log.append", event)
                acked[event["id"]] = answer["seq"]
        load = Load(d.socket_path)
        load.run_until_killed(d.proc, kill_after=rng.randrange(50, 400))
        acked.update(load.acked)
        retry = load.in_doubt

    d = start_daemon(data_dir=data)
    with Client(d.socket_path) as c:
        for event in retry:
            acked[event["id"]] = c.call("log.append", event)["seq"]
    events = read_all(d.socket_path)
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1))  # no gap, no repeat
    stored = {e["id"]: e["seq"] for e in events}
    assert len(stored) == len(events)  # every id once, retries included
    assert {i: stored.get(i) for i in acked} == acked  # every acknowledged event, at its seq
    assert len(acked) > ROUNDS * 50
    assert d.stop() == 0
