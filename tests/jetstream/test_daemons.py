"""Daemons on the ``jetstream`` backend (contract §16), on the real 3-node cluster: several
daemons, each with its own data directory and socket, share the conversations."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from sidecar_client import Client, RpcError

from tests.daemon.conftest import DaemonProc, start_daemon  # noqa: F401
from tests.support import within
from tests.support_nats import NatsCluster, jetstream_config

SHARED_ID = "0190a1b2-c3d4-7e5f-8a6b-9c0d1e2f3a4b"


@pytest.fixture
def start_shared(start_daemon: Any, tmp_path: Path, nats_urls: list[str], token: str) -> Any:  # noqa: F811
    """``start_shared(n)``: the n-th daemon of this test's stream (its own data directory)."""

    def start(n: int, **kw: Any) -> DaemonProc:
        return start_daemon(config_text=jetstream_config(nats_urls, token), data_dir=tmp_path / f"data{n}", **kw)

    return start


def progress(c: Client, cid: str, **extra: Any) -> dict[str, Any]:
    return c.call("log.append", {"conversation_id": cid, "type": "agent.progress", **extra})


def test_two_daemons_append_to_one_conversation_and_seqs_stay_gapless(start_shared: Any) -> None:
    a, b = start_shared(1), start_shared(2)
    per_daemon = 60
    errors: list[BaseException] = []

    def writer(d: DaemonProc, name: str) -> None:
        try:
            with Client(d.socket_path) as c:
                for i in range(per_daemon):
                    progress(c, "shared", agent_id=name, data={"i": i})
        except BaseException as exc:  # reported below, with the test's own assertion
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(d, name)) for d, name in ((a, "A"), (b, "B"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for d in (a, b):
        with Client(d.socket_path) as c:
            events = within(
                10.0,
                lambda c=c: (
                    (e := c.call("log.tail", {"conversation_id": "shared", "limit": 1000})["events"])
                    and len(e) == 2 * per_daemon
                    and e
                ),
            )
            assert [e["seq"] for e in events] == list(range(1, 2 * per_daemon + 1))
            for name in ("A", "B"):  # each writer's own order, and its clock counting its events
                mine = [e for e in events if e["agent_id"] == name]
                assert [e["data"]["i"] for e in mine] == list(range(per_daemon))
                assert [e["clock"][name] for e in mine] == list(range(1, per_daemon + 1))
    with Client(a.socket_path) as ca, Client(b.socket_path) as cb:  # the same log, event for event
        assert ca.call("log.query", {"conversation_id": "shared"}) == cb.call(
            "log.query", {"conversation_id": "shared"}
        )


def test_expected_seq_and_duplicate_ids_are_caught_across_daemons(start_shared: Any) -> None:
    a, b = start_shared(1), start_shared(2)
    with Client(a.socket_path) as ca, Client(b.socket_path) as cb:
        first = progress(ca, "c", id=SHARED_ID, expected_seq=0)
        assert first["seq"] == 1
        again = progress(cb, "c", id=SHARED_ID)  # the same id, on the other daemon
        assert again["duplicate"] is True and again["seq"] == 1 and again["timestamp"] == first["timestamp"]
        with pytest.raises(RpcError) as conflict:  # b has seen seq 1: expecting 0 is stale
            progress(cb, "c", expected_seq=0)
        assert conflict.value.code == -32001 and conflict.value.data["last_seq"] == 1
        assert progress(cb, "c", expected_seq=1)["seq"] == 2
        with pytest.raises(RpcError) as stale:  # a has not been told of seq 2 by b: the stream has
            progress(ca, "c", expected_seq=1)
        assert stale.value.code == -32001 and stale.value.data["last_seq"] == 2
        assert [e["seq"] for e in ca.call("log.tail", {"conversation_id": "c"})["events"]] == [1, 2]


def test_a_subscription_on_one_daemon_sees_appends_made_on_another(start_shared: Any) -> None:
    a, b = start_shared(1), start_shared(2)
    with Client(a.socket_path) as ca, Client(b.socket_path) as cb:
        progress(cb, "live", data={"n": 0})
        sub = ca.subscribe({"conversation_id": "live", "from_seq": 1, "types": ["agent.progress"]})
        for n in range(1, 4):
            progress(cb, "live", data={"n": n})
        seen = [next(sub) for _ in range(4)]
        assert [e["seq"] for e in seen] == [1, 2, 3, 4] and [e["data"]["n"] for e in seen] == [0, 1, 2, 3]


def test_a_daemon_started_later_copies_what_the_stream_has(start_shared: Any) -> None:
    a = start_shared(1)
    with Client(a.socket_path) as ca:
        for i in range(5):
            progress(ca, "before", data={"i": i})
    b = start_shared(2)
    with Client(b.socket_path) as cb:
        assert [e["data"]["i"] for e in cb.call("log.tail", {"conversation_id": "before"})["events"]] == list(range(5))
        found = cb.call("log.get", {"event_id": ca_id(a)})
        assert found["conversation_id"] == "before"
    assert b.stop(signal.SIGTERM) == 0
    with Client(a.socket_path) as ca:
        progress(ca, "before", data={"i": 5})  # while b is down
    b = start_shared(2)  # the same data directory: it copies only what it lacks
    with Client(b.socket_path) as cb:
        assert [e["seq"] for e in cb.call("log.tail", {"conversation_id": "before", "limit": 10})["events"]] == list(
            range(1, 7)
        )


def logged(d: DaemonProc, event: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in d.stderr().splitlines() if line.startswith("{")]
    return [r for r in records if r.get("event") == event]


def test_a_daemon_started_again_reads_the_stream_from_its_saved_position(start_shared: Any, token: str) -> None:
    a, b = start_shared(1), start_shared(2)
    with Client(a.socket_path) as ca:
        for i in range(5):
            progress(ca, "kept", data={"i": i})
    with Client(b.socket_path) as cb:
        within(10.0, lambda: len(tail(cb, "kept", 10)) == 5)
    assert b.stop() == 0
    path = b.data_dir / "jetstream-position"
    saved = json.loads(path.read_text())
    assert saved["stream"] == token and saved["stream_seq"] >= 5 and saved["created"]
    assert path.stat().st_mode & 0o777 == 0o600
    with Client(a.socket_path) as ca:  # while b is away
        progress(ca, "kept", data={"i": 5})
        progress(ca, "other", data={"i": 0})
    b = start_shared(2)
    (ready,) = logged(b, "jetstream.copy_caught_up")
    assert ready["resumed_from"] == saved["stream_seq"] and ready["stream_seq"] > saved["stream_seq"]
    with Client(b.socket_path) as cb:
        assert [e["data"]["i"] for e in tail(cb, "kept", 10)] == list(range(6))
        assert [e["seq"] for e in tail(cb, "other", 10)] == [1]
        assert progress(cb, "kept", data={"i": 6})["seq"] == 7  # its history read from the stream
    assert b.stop() == 0
    path.write_text('{"stream": "' + token + '", "stream_seq": "not a number"}')  # damaged: not trusted
    b = start_shared(2)
    assert len(logged(b, "jetstream.position_ignored")) == 1
    assert logged(b, "jetstream.copy_caught_up")[0]["resumed_from"] == 0  # from the beginning
    with Client(b.socket_path) as cb:
        assert [e["seq"] for e in tail(cb, "kept", 10)] == list(range(1, 8))
        assert cb.call("sys.stats")["faults"] == {}


def ca_id(d: DaemonProc) -> str:
    with Client(d.socket_path) as c:
        return str(c.call("log.tail", {"conversation_id": "before", "limit": 1})["events"][0]["id"])


def test_a_conversation_deleted_through_one_daemon_is_gone_from_every_copy(start_shared: Any) -> None:
    a, b, c = start_shared(1), start_shared(2), start_shared(3)
    with Client(a.socket_path) as ca, Client(b.socket_path) as cb:
        old = [progress(ca, "gone", data={"n": n}) for n in range(3)]
        cb.call("summary.persist", {"conversation_id": "gone"})
    assert c.stop() == 0  # c is away while it happens
    with Client(a.socket_path) as ca, Client(b.socket_path) as cb:
        within(10.0, lambda: len(tail(cb, "gone", 10)) == 3)
        deleted = ca.call("log.delete_conversation", {"conversation_id": "gone", "confirm": "gone"})
        assert deleted["last_seq"] == 3
        assert tail(ca, "gone", 10) == []  # gone here once answered
        within(10.0, lambda: tail(cb, "gone", 10) == [])  # and from the other copy
        with pytest.raises(RpcError) as missing:
            cb.call("log.get", {"event_id": old[0]["id"]})
        assert missing.value.code == -32002
        with pytest.raises(RpcError) as no_summary:  # b's persisted summary went with it
            cb.call("summary.get", {"conversation_id": "gone"})
        assert no_summary.value.code == -32002
        assert progress(cb, "gone", data={"n": "new"})["seq"] == 1  # it starts over, on any daemon
        assert [e["seq"] for e in within(10.0, lambda: tail(ca, "gone", 10))] == [1]
    c = start_shared(3)  # back: its copy of the old conversation is deleted, the new one copied
    with Client(c.socket_path) as cc:
        assert [e["data"]["n"] for e in tail(cc, "gone", 10)] == ["new"]
        assert cc.call("sys.stats")["faults"] == {}


def test_a_data_directory_keeps_to_one_backend(
    start_daemon: Any,  # noqa: F811
    tmp_path: Path,
    nats_urls: list[str],
    token: str,
) -> None:
    plain = start_daemon(data_dir=tmp_path / "d")
    with Client(plain.socket_path) as c:
        progress(c, "mine")
    assert plain.stop() == 0
    refused = start_daemon(config_text=jetstream_config(nats_urls, token), data_dir=tmp_path / "d", wait=False)
    assert refused.proc.wait(timeout=30) == 1
    assert "holds the log of the 'file' backend" in refused.stderr()


@pytest.mark.slow
def test_killing_a_nats_node_under_load_loses_no_acknowledged_event(
    start_shared: Any, nats_cluster: NatsCluster, token: str
) -> None:
    """Two daemons append while the stream's leader node is killed -9 and started again: every
    acknowledged event is in both daemons' copies, at its seq, with no gap, and the node that
    came back has caught up (it reports healthy only then). A subscription open on one daemon
    all along sees every event once, in order, across the leader change."""
    a, b = start_shared(1), start_shared(2)
    watcher = Client(a.socket_path, timeout=60)
    sub = watcher.subscribe({"conversation_id": "load", "from_seq": 1})
    acked: list[tuple[int, str]] = []
    failed: list[BaseException] = []
    stop = threading.Event()

    def writer(d: DaemonProc, name: str) -> None:
        try:
            with Client(d.socket_path, timeout=60) as c:
                n = 0
                while not stop.is_set():
                    ack = progress(c, "load", agent_id=name, data={"n": n})
                    acked.append((ack["seq"], ack["id"]))
                    n += 1
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=writer, args=(d, name)) for d, name in ((a, "A"), (b, "B"))]
    for t in threads:
        t.start()
    try:
        within(30.0, lambda: len(acked) >= 100)
        within(10.0, lambda: nats_cluster.stream_leader(token) is not None)
        victim = nats_cluster.stream_leader(token)
        assert victim is not None
        nats_cluster.kill(victim)
        before = len(acked)
        within(60.0, lambda: len(acked) >= before + 100)  # a new leader took over
        nats_cluster.start(victim)  # returns once it is healthy: caught up with the stream
        within(60.0, lambda: len(acked) >= before + 200)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=90)
    assert not failed, failed
    last = max(seq for seq, _ in acked)
    for d in (a, b):
        with Client(d.socket_path) as c:
            events = within(30.0, lambda c=c: (e := tail(c, "load", last)) and e[-1]["seq"] == last and e)
            assert [e["seq"] for e in events] == list(range(1, last + 1))
            by_seq = {e["seq"]: e["id"] for e in events}
            assert all(by_seq[seq] == event_id for seq, event_id in acked)
    with watcher:
        assert [next(sub)["seq"] for _ in range(last)] == list(range(1, last + 1))


def tail(c: Client, cid: str, n: int) -> list[dict[str, Any]]:
    return list(c.call("log.tail", {"conversation_id": cid, "limit": n})["events"])


def granted(sub: Any) -> dict[str, Any]:
    """The next decision of a subscription to controller.decision that grants speech."""
    for event in sub:
        if event["data"].get("speak_now"):
            return dict(event)
    raise AssertionError("the subscription ended")


def test_one_daemon_decides_and_a_grant_is_honoured_on_any_daemon(start_shared: Any) -> None:
    a, b = start_shared(1), start_shared(2)
    with Client(a.socket_path) as ca, Client(b.socket_path) as cb:
        decisions = cb.subscribe({"conversation_id": "talk", "types": ["controller.decision"]})
        ca.call("chat.user_message", {"conversation_id": "talk", "text": "hello?"})
        grant = granted(decisions)["data"]["grant_id"]
        said = cb.call("narrator.say", {"conversation_id": "talk", "grant_id": grant, "text": "Hello!"})
        with pytest.raises(RpcError) as used:  # single use, across daemons
            ca.call("narrator.say", {"conversation_id": "talk", "grant_id": grant, "text": "Hello again!"})
        assert used.value.code == -32004 and used.value.data["reason"] == "used"
        for c in (ca, cb):  # both copies have the decision once and the message once
            events = within(10.0, lambda c=c: (e := tail(c, "talk", 100)) and e[-1]["id"] == said["id"] and e)
            assert [e["type"] for e in events].count("controller.decision") == 1
            assert [e["type"] for e in events].count("narrator.message") == 1


@pytest.mark.slow
def test_a_daemon_killed_hands_its_conversations_controller_to_another(start_shared: Any) -> None:
    a = start_shared(1)
    with Client(a.socket_path) as ca:
        decisions = ca.subscribe({"conversation_id": "x", "types": ["controller.decision"]})
        ca.call("chat.user_message", {"conversation_id": "x", "text": "first"})
        grant = granted(decisions)["data"]["grant_id"]
        ca.call("narrator.say", {"conversation_id": "x", "grant_id": grant, "text": "answered"})
    b = start_shared(2)  # a speaks for x; b copies everything and decides nothing for it
    a.stop(signal.SIGKILL)
    with Client(b.socket_path) as cb:
        decisions = cb.subscribe({"conversation_id": "x", "types": ["controller.decision"]})
        cb.call("chat.user_message", {"conversation_id": "x", "text": "anyone there?"})
        taken = granted(decisions)  # once a's lease has aged out, b speaks for x
        grant = taken["data"]["grant_id"]
        said = cb.call("narrator.say", {"conversation_id": "x", "grant_id": grant, "text": "I am."})
        assert said["seq"] > taken["seq"]
        assert cb.call("sys.stats")["faults"] == {}


def test_claims_stay_exclusive_across_daemons_and_versions_are_checked(start_shared: Any) -> None:
    a, b = start_shared(1), start_shared(2)
    with Client(a.socket_path) as ca, Client(b.socket_path) as cb:
        for i in range(30):
            (ca if i % 2 else cb).call("tasks.create", {"id": f"j{i}", "type": "job"})
        made = cb.call("tasks.create", {"id": "doc", "type": "write"})
        ca.call("tasks.update", {"id": "doc", "priority": 3, "expected_version": made["version"]})
        with pytest.raises(RpcError) as stale:  # b's version is stale: a changed it
            cb.call("tasks.update", {"id": "doc", "priority": 4, "expected_version": made["version"]})
        assert stale.value.code == -32001
    claimed: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(d: DaemonProc, name: str) -> None:
        try:
            with Client(d.socket_path) as c:
                while (task := c.call("tasks.claim", {"agent_id": name, "types": ["job"]})["task"]) is not None:
                    with lock:
                        claimed.append((task["id"], name))
        except BaseException as exc:  # a claim that kept losing its race: reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(d, f"{d.data_dir.name}-{i}")) for d in (a, b) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors  # a daemon that keeps losing races to the other still gets its turn
    assert sorted(task for task, _ in claimed) == sorted(f"j{i}" for i in range(30))  # each once
    with Client(a.socket_path) as ca, Client(b.socket_path) as cb:
        for task, name in claimed:  # and both daemons agree on who holds it
            assert ca.call("tasks.get", {"id": task})["lease_owner"] == name
            assert within(5.0, lambda task=task: cb.call("tasks.get", {"id": task})["lease_owner"]) == name
        for c in (ca, cb):  # the claim queues kept count through every lost race
            assert c.call("sys.stats")["tasks_pending"] == 1  # "doc", of another type
            assert [t["id"] for t in c.call("tasks.ready")["tasks"]] == ["doc"]


def test_a_consumer_group_resumes_on_any_daemon_and_has_one_live_subscriber(start_shared: Any) -> None:
    a, b = start_shared(1), start_shared(2)
    with Client(a.socket_path) as ca, Client(b.socket_path) as cb:
        for n in range(5):
            progress(ca, "q", data={"n": n})
        consumer = ca.subscribe({"conversation_id": "q", "group": "indexer"})
        assert [next(consumer)["seq"] for _ in range(3)] == [1, 2, 3]
        ca.call("log.ack", {"group": "indexer", "conversation_id": "q", "seq": 3})
        with pytest.raises(RpcError) as busy:  # the live subscriber is on a, whichever daemon asks
            cb.call("log.subscribe", {"conversation_id": "q", "group": "indexer"})
        assert busy.value.code == -32001
        consumer.close()
        # b learns the ack (saved to the cluster within half a second) and the subscriber's end
        within(10.0, lambda: [g["acked_seq"] for g in cb.call("log.groups")["groups"]] == [3])
        resumed = within(10.0, lambda: _subscribed(cb, {"conversation_id": "q", "group": "indexer"}))
        assert [next(resumed)["seq"] for _ in range(2)] == [4, 5]


def _subscribed(c: Client, params: dict[str, Any]) -> Any:
    """A subscription, or None while the group's previous subscriber is still live."""
    try:
        return c.subscribe(params)
    except RpcError as exc:
        assert exc.code == -32001, exc
        return None


@pytest.mark.slow
def test_a_group_held_by_a_killed_daemon_is_taken_over(start_shared: Any) -> None:
    a, b = start_shared(1), start_shared(2)
    with Client(a.socket_path) as ca:
        progress(ca, "k")
        ca.subscribe({"conversation_id": "k", "group": "g"})
        a.stop(signal.SIGKILL)  # its key in the daemons' bucket ages out after the lease
    with Client(b.socket_path) as cb:
        taken = within(20.0, lambda: _subscribed(cb, {"conversation_id": "k", "group": "g"}))
        assert next(taken)["seq"] == 1


def test_daemons_started_at_once_on_a_new_stream_all_come_up(start_shared: Any) -> None:
    """They race to make the stream and the buckets, each of which has no leader for a moment."""
    daemons = [start_shared(n, wait=False) for n in range(1, 4)]
    for d in daemons:
        d.wait_for("READY=1")
    with Client(daemons[0].socket_path) as c:
        assert progress(c, "first")["seq"] == 1


@pytest.mark.slow
def test_a_task_change_the_cluster_does_not_take_is_not_kept(
    start_shared: Any, nats_cluster: NatsCluster, nats_urls: list[str]
) -> None:
    """Every node down: a change fails with -32006 and this daemon's graph does not show it;
    once the cluster is back, the daemon goes on where it was."""
    a = start_shared(1)
    with Client(a.socket_path, timeout=120) as c:
        c.call("tasks.create", {"id": "before", "type": "t"})
        for i in range(nats_cluster.n):
            nats_cluster.kill(i)
        with pytest.raises(RpcError) as refused:
            c.call("tasks.create", {"id": "lost", "type": "t"})
        assert refused.value.code == -32006
        with pytest.raises(RpcError) as missing:
            c.call("tasks.get", {"id": "lost"})
        assert missing.value.code == -32002
        assert [t["id"] for t in c.call("tasks.list_active")["tasks"]] == ["before"]
        for i in range(nats_cluster.n):
            nats_cluster.start(i, wait=False)
        nats_cluster.wait_healthy()
        assert within(60.0, lambda: _created(c, "after"))["version"] == 1
        assert progress(c, "back")["seq"] == 1


def _created(c: Client, task_id: str) -> Any:
    try:
        return c.call("tasks.create", {"id": task_id, "type": "t"})
    except RpcError as exc:
        assert exc.code == -32006, exc  # the cluster is still electing its leaders
        return None
