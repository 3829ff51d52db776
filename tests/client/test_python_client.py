"""The Python client package against a real daemon process: sync ``Client`` and ``AsyncClient``.

Nothing here sleeps to synchronise: the tests wait on events, on ``wait_all_tasks_blocked``,
or poll ``sys.stats`` a bounded number of times; every wait is bounded (client timeouts,
``anyio.fail_after``, thread joins with a timeout).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from sidecar_client import AsyncClient, Client, ConnectionLost, DaemonUnavailable, RpcError

WAIT = 10.0  # seconds any one thing may take before the test fails instead of hanging


def connect(daemon) -> Client:
    return Client(daemon.socket_path, timeout=WAIT)


def append(socket_path: str, conversation: str, count: int) -> list[dict]:
    with Client(socket_path, timeout=WAIT) as c:
        return [
            c.call("log.append", {"conversation_id": conversation, "type": "a.b", "data": {"i": i}})
            for i in range(count)
        ]


def poll_stats(client: Client, ready: Callable[[dict[str, Any]], bool], tries: int = 200) -> dict[str, Any]:
    """``sys.stats`` until ``ready(stats)``: each try is a round trip, so the daemon moves on."""
    for _ in range(tries):
        stats = client.call("sys.stats")
        if ready(stats):
            return stats
    raise AssertionError(f"sys.stats never got there: {stats}")


async def apoll_stats(client: AsyncClient, ready: Callable[[dict[str, Any]], bool], tries: int = 200) -> dict:
    for _ in range(tries):
        stats = await client.call("sys.stats")
        if ready(stats):
            return stats
    raise AssertionError(f"sys.stats never got there: {stats}")


# --- Client: calls and errors ----------------------------------------------------------------


def test_call_returns_results(daemon) -> None:
    with connect(daemon) as c:
        health = c.call("sys.health")
        assert health["status"] == "ok" and health["pid"] == daemon.proc.pid
        ack = c.call("log.append", {"conversation_id": "c", "type": "agent.progress", "data": {"pct": 5}})
        assert ack["seq"] == 1 and uuid.UUID(ack["id"])
        event = c.call("log.get", {"event_id": ack["id"]})
        assert (event["seq"], event["timestamp"], event["data"]) == (1, ack["timestamp"], {"pct": 5})
        assert c.call("log.tail", {"conversation_id": "c"})["events"] == [event]


def test_rpc_error_has_code_message_and_data(daemon) -> None:
    with connect(daemon) as c:
        for _ in range(3):
            c.call("log.append", {"conversation_id": "c", "type": "a.b"})
        with pytest.raises(RpcError) as info:
            c.call("log.append", {"conversation_id": "c", "type": "a.b", "expected_seq": 1})
        err = info.value
        assert err.code == -32001
        assert "seq 3" in err.message and str(err).startswith(err.message)
        assert err.data == {"conversation_id": "c", "expected_seq": 1, "last_seq": 3}

        with pytest.raises(RpcError) as info:
            c.call("log.get", {"event_id": "not-a-uuid"})
        assert info.value.code == -32602
        with pytest.raises(RpcError) as info:
            c.call("no.such")
        assert info.value.code == -32601 and info.value.data is None

        # The connection is still good after errors, and a matching expected_seq goes through.
        assert c.call("log.append", {"conversation_id": "c", "type": "a.b", "expected_seq": 3})["seq"] == 4


def test_daemon_unavailable_names_the_socket(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-daemon-here.sock")
    with pytest.raises(DaemonUnavailable) as info:
        Client(missing)
    assert missing in str(info.value) and isinstance(info.value, ConnectionError)

    async def main() -> None:
        with pytest.raises(DaemonUnavailable, match="no-daemon-here.sock"):
            await AsyncClient.connect(missing)

    anyio.run(main)


def test_socket_path_defaults_to_the_environment(daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_SOCKET", daemon.socket_path)
    with Client() as c:
        assert c.socket_path == daemon.socket_path and c.call("sys.health")["status"] == "ok"


def test_context_manager_closes_the_connection(daemon) -> None:
    with connect(daemon) as watcher:
        with connect(daemon) as c:
            assert poll_stats(watcher, lambda s: s["connections"] == 2)["connections"] == 2
        with pytest.raises(ConnectionError):
            c.call("sys.health")  # closed: no silent reconnect
        poll_stats(watcher, lambda s: s["connections"] == 1)  # the daemon saw it go


def test_notify_gets_no_answer_but_is_done(daemon) -> None:
    with connect(daemon) as c:
        c.notify("log.append", {"conversation_id": "n", "type": "a.b", "data": {"by": "notify"}})
        c.notify("no.such")  # a notification is never answered, not even with an error
        for _ in range(200):
            events = c.call("log.tail", {"conversation_id": "n"})["events"]
            if events:
                break
        assert [e["data"] for e in events] == [{"by": "notify"}]


# --- Client: subscriptions -------------------------------------------------------------------


def test_subscribe_replays_then_follows_live(daemon) -> None:
    acks = append(daemon.socket_path, "c", 5)
    with connect(daemon) as c, connect(daemon) as writer:
        events = c.subscribe({"conversation_id": "c", "from_seq": 1})
        replayed = [next(events) for _ in range(5)]
        assert [e["seq"] for e in replayed] == [1, 2, 3, 4, 5]
        assert [e["id"] for e in replayed] == [a["id"] for a in acks]
        live_acks = [writer.call("log.append", {"conversation_id": "c", "type": "a.live"}) for _ in range(10)]
        writer.call("log.append", {"conversation_id": "other", "type": "a.b"})  # filtered out
        live = [next(events) for _ in range(10)]
        assert [e["seq"] for e in live] == list(range(6, 16))
        assert [e["id"] for e in live] == [a["id"] for a in live_acks]
        assert {e["conversation_id"] for e in live} == {"c"}


def test_events_arriving_during_calls_are_kept(daemon) -> None:
    with connect(daemon) as c:
        events = c.subscribe({"conversation_id": "c"})
        # The same connection appends: its events' notifications interleave with the answers
        # to its own calls, and the calls must keep them for the iterator.
        acks = [c.call("log.append", {"conversation_id": "c", "type": "a.b"}) for _ in range(20)]
        assert c.call("sys.health")["status"] == "ok"
        got = [next(events) for _ in range(20)]
        assert [e["seq"] for e in got] == list(range(1, 21))
        assert [e["id"] for e in got] == [a["id"] for a in acks]


def test_a_quiet_subscription_outlives_the_call_timeout(daemon) -> None:
    """A follower (``sidecar tail -f``) waits for events as long as it takes: the client's
    timeout bounds calls, not the silence between events."""
    with Client(daemon.socket_path, timeout=0.3) as c:
        events = c.subscribe({"conversation_id": "quiet"})
        # Deliberate silence longer than the timeout (not synchronisation: the test is about it).
        timer = threading.Timer(1.0, append, (daemon.socket_path, "quiet", 1))
        timer.start()
        try:
            assert next(events)["seq"] == 1
        finally:
            timer.join(WAIT)
        assert c.call("sys.health")["status"] == "ok"  # and calls still work afterwards


def test_two_subscriptions_on_one_client_each_get_their_events(daemon) -> None:
    with connect(daemon) as c, connect(daemon) as writer:
        a = c.subscribe({"conversation_id": "a"})
        b = c.subscribe({"conversation_id": "b"})
        for i in range(3):
            writer.call("log.append", {"conversation_id": "a", "type": "a.b", "data": {"i": i}})
            writer.call("log.append", {"conversation_id": "b", "type": "a.b", "data": {"i": i}})
        assert [next(a)["seq"] for _ in range(3)] == [1, 2, 3]  # reading a's must not lose b's
        assert [next(b)["seq"] for _ in range(3)] == [1, 2, 3]
        writer.call("log.append", {"conversation_id": "b", "type": "a.b"})
        writer.call("log.append", {"conversation_id": "a", "type": "a.b"})
        assert (next(a)["seq"], next(b)["seq"]) == (4, 4)


def test_leaving_a_sync_subscription_unsubscribes(daemon) -> None:
    append(daemon.socket_path, "c", 3)
    with connect(daemon) as c:
        for event in c.subscribe({"conversation_id": "c", "from_seq": 1}):
            if event["seq"] == 2:
                break
        stats = poll_stats(c, lambda s: s["subscriptions"] == 0)
        assert stats["subscriptions"] == 0
        # The connection stays usable, and a new subscription starts clean.
        events = c.subscribe({"conversation_id": "c", "from_seq": 3})
        assert next(events)["seq"] == 3


def test_sync_call_raises_connection_lost_when_the_daemon_dies(daemon) -> None:
    with connect(daemon) as c:
        events = c.subscribe({"conversation_id": "c"})
        assert c.call("sys.health")["status"] == "ok"
        daemon.proc.kill()
        daemon.proc.wait(timeout=WAIT)
        with pytest.raises(ConnectionLost):
            next(events)
        with pytest.raises(ConnectionError):
            c.call("sys.health")


# --- AsyncClient -----------------------------------------------------------------------------


def test_async_200_concurrent_calls_over_one_connection(daemon) -> None:
    n = 200
    conversations = 10

    async def main() -> None:
        async with await AsyncClient.connect(daemon.socket_path) as client:
            acks: list[dict | None] = [None] * n
            missing: list[str | None] = [None] * n

            async def append_one(i: int) -> None:
                if i % 9 == 0:  # some calls fail; the error must reach the caller who made it
                    missing[i] = str(uuid.uuid4())
                    with pytest.raises(RpcError) as info:
                        await client.call("log.get", {"event_id": missing[i]})
                    assert info.value.code == -32002 and info.value.data == {"event_id": missing[i]}
                    return
                params = {"conversation_id": f"m{i % conversations}", "type": "mux.test", "data": {"i": i}}
                acks[i] = await client.call("log.append", params)

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(n):
                        tg.start_soon(append_one, i)

            got: list[dict | None] = [None] * n

            async def get_one(i: int) -> None:
                ack = acks[i]
                if ack is not None:
                    got[i] = await client.call("log.get", {"event_id": ack["id"]})

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(n):
                        tg.start_soon(get_one, i)

            seqs: dict[str, list[int]] = {}
            for i in range(n):
                if missing[i] is not None:
                    assert acks[i] is None
                    continue
                ack, event = acks[i], got[i]
                assert ack is not None and event is not None
                assert event["id"] == ack["id"] and event["data"] == {"i": i}, (i, ack, event)
                assert event["conversation_id"] == f"m{i % conversations}"
                assert (event["seq"], event["timestamp"]) == (ack["seq"], ack["timestamp"])
                seqs.setdefault(event["conversation_id"], []).append(event["seq"])
            for cid, found in seqs.items():
                assert sorted(found) == list(range(1, len(found) + 1)), cid
            stats = await client.call("sys.stats")
            assert stats["connections"] == 1  # all of it over one connection

    anyio.run(main)


def test_async_subscribe_replays_follows_and_unsubscribes_on_break(daemon) -> None:
    acks = append(daemon.socket_path, "c", 5)

    async def main() -> None:
        async with (
            await AsyncClient.connect(daemon.socket_path) as client,
            await AsyncClient.connect(daemon.socket_path) as writer,
        ):
            seen: list[dict] = []
            live_acks: list[dict] = []
            with anyio.fail_after(WAIT):
                async for event in client.subscribe({"conversation_id": "c", "from_seq": 1}):
                    seen.append(event)
                    if event["seq"] == 5:  # replay done: now append live events
                        for _ in range(5):
                            ack = await writer.call("log.append", {"conversation_id": "c", "type": "a.live"})
                            live_acks.append(ack)
                    if event["seq"] == 10:
                        break
            assert [e["seq"] for e in seen] == list(range(1, 11))
            assert [e["id"] for e in seen] == [a["id"] for a in acks + live_acks]
            assert [e["type"] for e in seen[5:]] == ["a.live"] * 5

            with anyio.fail_after(WAIT):
                stats = await apoll_stats(writer, lambda s: s["subscriptions"] == 0)
            assert stats["subscriptions"] == 0
            # The connection is still good for calls and for a new subscription.
            assert (await client.call("sys.health"))["status"] == "ok"
            with anyio.fail_after(WAIT):
                async for event in client.subscribe({"conversation_id": "c", "from_seq": 10}):
                    assert event["seq"] == 10
                    break

    anyio.run(main)


def test_async_subscription_loses_nothing_while_calls_share_the_connection(daemon) -> None:
    total = 300
    append(daemon.socket_path, "busy", total)

    async def main() -> None:
        async with await AsyncClient.connect(daemon.socket_path) as client:
            stop = anyio.Event()

            async def chatter() -> None:
                while not stop.is_set():
                    assert (await client.call("sys.health"))["status"] == "ok"

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for _ in range(20):
                        tg.start_soon(chatter)
                    for _ in range(5):
                        seqs = []
                        async for event in client.subscribe({"conversation_id": "busy", "from_seq": 1}):
                            seqs.append(event["seq"])
                            if event["seq"] == total:
                                break
                        assert seqs == list(range(1, total + 1))
                    stop.set()

    anyio.run(main)


def test_async_concurrent_subscriptions_on_one_connection(daemon) -> None:
    async def main() -> None:
        async with await AsyncClient.connect(daemon.socket_path) as client:
            got: dict[str, list[int]] = {}
            subscribed = 0
            all_subscribed = anyio.Event()

            async def follow(cid: str) -> None:
                nonlocal subscribed
                got[cid] = []
                agen = client.subscribe({"conversation_id": cid, "from_seq": 1})
                async for event in agen:
                    got[cid].append(event["seq"])
                    if event["seq"] == 1:
                        subscribed += 1
                        if subscribed == 5:
                            all_subscribed.set()
                    if event["seq"] == 20:
                        break

            for i in range(5):
                await client.call("log.append", {"conversation_id": f"s{i}", "type": "a.b"})
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for i in range(5):
                        tg.start_soon(follow, f"s{i}")
                    await all_subscribed.wait()
                    for _ in range(19):
                        for i in range(5):
                            await client.call("log.append", {"conversation_id": f"s{i}", "type": "a.b"})
            assert got == {f"s{i}": list(range(1, 21)) for i in range(5)}
            with anyio.fail_after(WAIT):
                await apoll_stats(client, lambda s: s["subscriptions"] == 0)

    anyio.run(main)


def test_a_cancelled_call_does_not_strand_the_others(daemon) -> None:
    """One caller reads for everyone; if that caller is cancelled, the others still get answers."""

    async def main() -> None:
        async with await AsyncClient.connect(daemon.socket_path) as client:
            await client.call("sys.health")
            results: dict[str, Any] = {}
            os.kill(daemon.proc.pid, signal.SIGSTOP)  # the daemon cannot answer: calls stay pending
            try:
                with anyio.fail_after(WAIT):
                    async with anyio.create_task_group() as tg:
                        scope = anyio.CancelScope()

                        async def first() -> None:
                            with scope:
                                await client.call("sys.health")  # the first caller reads for all
                            results["first cancelled"] = scope.cancelled_caught

                        async def second() -> None:
                            results["second"] = await client.call("log.tail", {"conversation_id": "x"})

                        tg.start_soon(first)
                        await anyio.wait_all_tasks_blocked()
                        tg.start_soon(second)
                        await anyio.wait_all_tasks_blocked()
                        scope.cancel()
                        await anyio.wait_all_tasks_blocked()
                        os.kill(daemon.proc.pid, signal.SIGCONT)
            finally:
                os.kill(daemon.proc.pid, signal.SIGCONT)
            assert results == {"first cancelled": True, "second": {"events": []}}
            assert (await client.call("sys.health"))["status"] == "ok"  # the late answer was dropped

    anyio.run(main)


def test_async_pending_calls_raise_connection_lost_when_the_daemon_dies(daemon) -> None:
    append(daemon.socket_path, "c", 1)

    async def main() -> None:
        client = await AsyncClient.connect(daemon.socket_path)
        outcomes: list[BaseException] = []
        subscribed = anyio.Event()

        async def subscriber() -> None:
            try:
                async for _ in client.subscribe({"conversation_id": "c", "from_seq": 1}):
                    subscribed.set()
            except ConnectionError as exc:
                outcomes.append(exc)

        async def caller(i: int) -> None:
            try:
                await client.call("log.tail", {"conversation_id": "c"})
            except ConnectionError as exc:
                outcomes.append(exc)

        try:
            with anyio.fail_after(WAIT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(subscriber)
                    await subscribed.wait()
                    os.kill(daemon.proc.pid, signal.SIGSTOP)  # so the calls below stay unanswered
                    for i in range(10):
                        tg.start_soon(caller, i)
                    await anyio.wait_all_tasks_blocked()
                    started = time.monotonic()
                    daemon.proc.kill()
                assert time.monotonic() - started < 5
            assert len(outcomes) == 11
            assert all(isinstance(exc, ConnectionLost) for exc in outcomes), outcomes
            assert daemon.socket_path in str(outcomes[0])
            with pytest.raises(ConnectionLost):
                await client.call("sys.health")  # and later calls fail at once
        finally:
            await client.close()

    try:
        anyio.run(main)
    finally:
        daemon.proc.kill()
        daemon.proc.wait(timeout=WAIT)


def test_async_close_ends_a_waiting_subscription(daemon) -> None:
    async def main() -> None:
        client = await AsyncClient.connect(daemon.socket_path)
        outcome: list[BaseException] = []

        async def subscriber() -> None:
            try:
                async for _ in client.subscribe({"conversation_id": "c"}):
                    pass
            except ConnectionError as exc:
                outcome.append(exc)

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(subscriber)
                await anyio.wait_all_tasks_blocked()
                await client.close()
        assert len(outcome) == 1 and isinstance(outcome[0], ConnectionLost)

    anyio.run(main)


# --- many clients at once --------------------------------------------------------------------


def test_100_concurrent_clients_appending_to_one_conversation(daemon) -> None:
    clients, each = 100, 20
    start = threading.Barrier(clients, timeout=WAIT * 3)
    acks: list[list[dict]] = [[] for _ in range(clients)]
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with Client(daemon.socket_path, timeout=60) as c:
                start.wait()
                for i in range(each):
                    params = {"conversation_id": "shared", "type": "load.test", "agent_id": f"w{n}", "data": {"i": i}}
                    acks[n].append(c.call("log.append", params))
        except BaseException as exc:  # reported below: a thread's exception would be lost
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a client never finished"
    assert not failures, failures[:3]

    total = clients * each
    with connect(daemon) as c:
        events = c.call("log.tail", {"conversation_id": "shared", "limit": total + 10})["events"]
        assert [e["seq"] for e in events] == list(range(1, total + 1))
        page = c.call("log.query", {"conversation_id": "shared", "limit": total + 10})
        assert page["events"] == events and page["next_cursor"] is None
    by_id = {e["id"]: e for e in events}
    for n, mine in enumerate(acks):
        assert len(mine) == each
        assert [a["seq"] for a in mine] == sorted(a["seq"] for a in mine)  # one client's appends stay in order
        for i, ack in enumerate(mine):
            event = by_id[ack["id"]]
            assert (event["seq"], event["agent_id"], event["data"]) == (ack["seq"], f"w{n}", {"i": i})
    timestamps = [e["timestamp"] for e in events]
    assert timestamps == sorted(timestamps)  # never decreasing within the conversation
