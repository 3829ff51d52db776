"""The cluster the JetStream backend is tested against, checked with nats-py: the primitives the
backend builds on (de-duplication by message id, per-subject expected sequences, KV revision
checks) hold on a replicated stream, and killing the stream's leader with SIGKILL under load
loses no acknowledged message while the restarted node catches up."""

from __future__ import annotations

import asyncio
import socket
import stat
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests import support_nats
from tests.support_nats import NatsCluster, NatsServer

pytest.importorskip("nats", reason="nats-py is not installed (./dev test installs it)")
import nats  # noqa: E402
import nats.errors  # noqa: E402
import nats.js.errors  # noqa: E402
from nats.js import api  # noqa: E402

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071  # JSStreamWrongLastSequenceErrF
NO_MESSAGE_FOUND = 10037  # JSNoMessageFoundErr
DUPLICATE_IN_PROCESS = 10158  # JSStreamDuplicateMessageConflict
WRONG_LAST_SEQUENCE_IN_FLIGHT = 10164  # JSStreamWrongLastSequenceConstantErr


async def connect(urls: list[str]) -> Any:
    async def quiet(_e: Exception) -> None:  # reconnects are expected here; the test says what failed
        pass

    return await nats.connect(
        servers=urls,
        connect_timeout=2,
        reconnect_time_wait=0.1,
        max_reconnect_attempts=-1,
        error_cb=quiet,
    )


async def replicated_stream(js: Any, name: str, subjects: list[str]) -> api.StreamInfo:
    return await js.add_stream(
        name=name,
        subjects=subjects,
        num_replicas=3,
        storage=api.StorageType.FILE,
        duplicate_window=120,  # s: a retried publish within this is recognised by its id
    )


async def settle(call: Any, timeout: float = 10.0) -> Any:
    """``await call()``, again while it meets no responders: a stream just created is reached
    through the server this client is connected to only once its interest has spread over the
    routes (and "no responders" means nothing was stored, so trying again is safe)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except nats.js.errors.NoStreamResponseError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def until(check: Any, what: str, timeout: float, every: float = 0.05) -> Any:
    """Await ``check()`` until it returns something truthy, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")
        await asyncio.sleep(every)


# -- the cluster itself ---------------------------------------------------------------------------


def test_every_node_syncs_each_write_before_acknowledging_and_the_cluster_has_three_peers(
    nats_cluster: NatsCluster, nats_urls: list[str]
) -> None:
    for i, node in enumerate(nats_cluster.nodes):
        status, varz = nats_cluster.monitor(i, "/varz")
        assert status == 200
        assert varz["server_name"] == node.name
        config = varz["jetstream"]["config"]
        assert config["sync_always"] is True, config  # `sync_interval: always` took effect
        assert config["store_dir"].startswith(str(node.store_dir))
        status, jsz = nats_cluster.monitor(i, "/jsz")
        assert jsz["meta_cluster"]["cluster_size"] == 3 and jsz["meta_cluster"]["leader"], jsz["meta_cluster"]
        assert stat.S_IMODE(node.config_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(node.dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(node.store_dir.stat().st_mode) == 0o700
    assert len(set(nats_urls)) == 3 and all(u.startswith("nats://127.0.0.1:") for u in nats_urls)
    assert "Server is ready" in nats_cluster.logs(0)


def test_a_lone_server_runs_jetstream_without_a_cluster_block(tmp_path: Path) -> None:
    with NatsServer(tmp_path) as server:
        assert "cluster {" not in server.config_text(0)
        assert server.monitor(0, "/varz")[1]["jetstream"]["config"]["sync_always"] is True

        async def main() -> None:
            nc = await connect([server.url()])
            js = nc.jetstream()
            await js.add_stream(name="ONE", subjects=["one.>"])
            assert (await settle(lambda: js.publish("one.x", b"1"))).seq == 1
            await nc.close()

        asyncio.run(main())
    assert not server.running(0)


def test_a_port_taken_under_the_server_is_picked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    real = support_nats.pick_ports
    calls: list[list[int]] = []

    def first_one_taken(count: int, taken_ports: set[int] | None = None) -> list[int]:
        ports = real(count, taken_ports)
        if not calls:
            ports[0] = taken  # the client port: already bound by someone else
        calls.append(ports)
        return ports

    monkeypatch.setattr(support_nats, "pick_ports", first_one_taken)
    try:
        with NatsServer(tmp_path) as server:
            assert len(calls) == 2 and server.nodes[0].client_port != taken
            assert "address already in use" in server.logs(0)
    finally:
        holder.close()


# -- the primitives the backend builds on ---------------------------------------------------------


def test_a_replicated_stream_deduplicates_publishes_by_message_id(nats_urls: list[str], token: str) -> None:
    async def main() -> None:
        nc = await connect(nats_urls)
        js = nc.jetstream(timeout=5)
        info = await replicated_stream(js, token, [f"sidecar.test.{token}.>"])
        assert info.config.num_replicas == 3 and info.cluster is not None and info.cluster.leader
        assert len(info.cluster.replicas or []) == 2  # the leader plus two followers
        subject = f"sidecar.test.{token}.c1"

        first = await settle(lambda: js.publish(subject, b"e1", headers={MSG_ID: "event-1"}))
        again = await settle(lambda: js.publish(subject, b"e1", headers={MSG_ID: "event-1"}))
        assert (first.seq, first.duplicate) == (1, None)
        assert (again.seq, again.duplicate) == (1, True)  # the same seq, and nothing written
        other = await settle(lambda: js.publish(subject, b"e2", headers={MSG_ID: "event-2"}))
        assert (other.seq, other.duplicate) == (2, None)
        # The id is checked before the expected sequence: retrying a write that landed, with
        # the expectation it was sent with (now stale), still answers the duplicate.
        retried = await settle(
            lambda: js.publish(subject, b"e1", headers={MSG_ID: "event-1", EXPECTED_LAST_SUBJECT_SEQ: "0"})
        )
        assert (retried.seq, retried.duplicate) == (1, True)
        assert (await js.stream_info(token)).state.messages == 2
        await nc.close()

    asyncio.run(main())


def test_an_expected_last_subject_sequence_refuses_a_stale_writer(nats_urls: list[str], token: str) -> None:
    async def main() -> None:
        nc = await connect(nats_urls)
        js = nc.jetstream(timeout=5)
        await replicated_stream(js, token, [f"sidecar.test.{token}.>"])
        a, b = f"sidecar.test.{token}.a", f"sidecar.test.{token}.b"

        with pytest.raises(nats.js.errors.NotFoundError) as empty:  # no message on the subject yet
            await js.get_last_msg(token, a)
        assert empty.value.err_code == NO_MESSAGE_FOUND

        # 0: the subject has no message yet. The check is per subject, not per stream.
        a1 = await settle(lambda: js.publish(a, b"a1", headers={EXPECTED_LAST_SUBJECT_SEQ: "0"}))
        b1 = await settle(lambda: js.publish(b, b"b1", headers={EXPECTED_LAST_SUBJECT_SEQ: "0"}))
        with pytest.raises(nats.js.errors.BadRequestError) as stale:
            await settle(lambda: js.publish(a, b"a2?", headers={EXPECTED_LAST_SUBJECT_SEQ: "0"}))
        assert stale.value.err_code == WRONG_LAST_SEQUENCE and stale.value.code == 400
        assert stale.value.description == f"wrong last sequence: {a1.seq}"
        # The subject's last sequence, as a writer would read it before trying again.
        last = await js.get_last_msg(token, a)
        assert (last.seq, last.data) == (a1.seq, b"a1")
        a2 = await settle(lambda: js.publish(a, b"a2", headers={EXPECTED_LAST_SUBJECT_SEQ: str(a1.seq)}))
        assert (a1.seq, b1.seq, a2.seq) == (1, 2, 3)  # stream seqs: a subject's own count is not gapless
        info = await js.stream_info(token, subjects_filter=f"sidecar.test.{token}.>")
        assert info.state.subjects == {a: 2, b: 1}  # messages per subject (counts, not sequences)
        await nc.close()

    asyncio.run(main())


def test_a_replicated_kv_bucket_refuses_an_update_at_a_stale_revision(nats_urls: list[str], token: str) -> None:
    async def main() -> None:
        nc = await connect(nats_urls)
        js = nc.jetstream(timeout=5)
        kv = await js.create_key_value(bucket=token, replicas=3, history=5)
        assert (await kv.status()).stream_info.config.num_replicas == 3
        r1 = await settle(lambda: kv.create("task.t1", b"v1"))
        with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):  # create: only when absent
            await settle(lambda: kv.create("task.t1", b"again"))
        r2 = await settle(lambda: kv.update("task.t1", b"v2", last=r1))
        with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
            await settle(lambda: kv.update("task.t1", b"lost update", last=r1))
        entry = await kv.get("task.t1")
        assert (entry.value, entry.revision) == (b"v2", r2)
        assert r2 > r1  # revisions are the bucket stream's seqs: shared by all keys, not per key
        r_other = await settle(lambda: kv.put("task.t2", b"x"))
        assert r_other == r2 + 1
        await nc.close()

    asyncio.run(main())


# -- SIGKILL under load ---------------------------------------------------------------------------

RETRYABLE = (nats.errors.Error, asyncio.TimeoutError, OSError)  # timeouts, no responders, reconnects
# A clustered stream's answers that say an earlier attempt of this very publish (or another
# writer's) is proposed but not yet applied: "duplicate message id is in process" (409) and the
# number-less "wrong last sequence" (400). Either may yet land; retrying the same id and the same
# expectation settles it: a duplicate ack if it landed, 10071 if another writer's did.
IN_FLIGHT = {DUPLICATE_IN_PROCESS, WRONG_LAST_SEQUENCE_IN_FLIGHT}


class Publisher:
    """Appends to one subject the way the backend will: each message has an id (so a retry of a
    write that landed is answered as a duplicate) and the subject's expected last sequence (so a
    write that did not land cannot land out of order). A publish is retried, same id and same
    expectation, until it is acknowledged; only acknowledged messages are recorded."""

    def __init__(self, js: Any, subject: str) -> None:
        self.js, self.subject = js, subject
        self.acked: list[tuple[int, bytes]] = []  # (stream seq, payload), in order
        self.retries: Counter[str] = Counter()

    async def run(self, stop: asyncio.Event) -> None:
        last = 0
        while not stop.is_set():
            payload = f"{self.subject}#{len(self.acked) + 1}".encode()
            headers = {MSG_ID: payload.decode(), EXPECTED_LAST_SUBJECT_SEQ: str(last)}
            deadline = time.monotonic() + 30
            while True:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{payload!r} not acknowledged in 30 s: {dict(self.retries)}")
                try:
                    ack = await self.js.publish(self.subject, payload, headers=dict(headers), timeout=1.0)
                    break
                except nats.js.errors.APIError as e:
                    if e.err_code not in IN_FLIGHT and (e.code or 0) < 500:
                        raise  # 10071, a wrong last sequence, would be a lost or reordered write
                    self.retries[f"{type(e).__name__} {e.err_code}"] += 1
                    await asyncio.sleep(0.05)
                except RETRYABLE as e:
                    self.retries[type(e).__name__] += 1
                    await asyncio.sleep(0.05)
            assert ack.seq > last, (self.subject, ack, last)
            self.acked.append((ack.seq, payload))
            last = ack.seq


@pytest.mark.slow
def test_killing_the_stream_leader_under_load_loses_no_acknowledged_message(
    nats_cluster: NatsCluster, nats_urls: list[str], token: str
) -> None:
    async def main() -> None:
        nc = await connect(nats_urls)
        js = nc.jetstream(timeout=5)
        poll = nc.jetstream(timeout=1)  # while the leader is gone, ask often
        await replicated_stream(js, token, [f"sidecar.test.{token}.>"])
        publishers = [Publisher(js, f"sidecar.test.{token}.c{k}") for k in range(4)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(p.run(stop)) for p in publishers]

        def acked() -> int:
            return sum(len(p.acked) for p in publishers)

        async def grown_by(n: int) -> Any:
            if any(t.done() for t in tasks):  # a publisher failed: surface its error now
                for t in tasks:
                    if t.done():
                        t.result()
            return acked() >= n

        try:
            await until(lambda: grown_by(200), "acknowledged publishes before the kill", 15)
            leader = (await js.stream_info(token)).cluster.leader
            victim = nats_cluster.index_of(leader)
            assert nats_cluster.stream_leader(token) == victim  # the monitoring port agrees
            before_kill = acked()
            killed_at = time.monotonic()
            nats_cluster.kill(victim)  # SIGKILL: no flush, no goodbye to the cluster

            async def new_leader() -> Any:
                try:
                    info = await poll.stream_info(token)
                except RETRYABLE:
                    return None
                return info.cluster.leader not in (None, leader) and info.cluster.leader

            await until(new_leader, "a new stream leader", 30, every=0.1)
            took = {"new leader": time.monotonic() - killed_at}
            await until(lambda: grown_by(before_kill + 200), "publishes acknowledged without the old leader", 30)

            restarted_at = time.monotonic()
            nats_cluster.start(victim, wait=False)  # same store dir and ports
            await asyncio.to_thread(nats_cluster.wait_healthy, [victim], timeout=30)  # caught up
            took["healthy again"] = time.monotonic() - restarted_at
            after_restart = acked()
            await until(lambda: grown_by(after_restart + 100), "publishes acknowledged after the restart", 15)
        finally:
            stop.set()
            done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        for result in done:
            if isinstance(result, BaseException):
                raise result

        # Every acknowledged message is in the stream, at the sequence its ack gave, and there is
        # nothing else: retries were recognised as duplicates, none was written twice.
        expected = {seq: (p.subject, payload) for p in publishers for seq, payload in p.acked}
        info = await js.stream_info(token)
        assert info.state.messages == len(expected), (info.state, len(expected))
        assert (info.state.first_seq, info.state.last_seq) == (1, len(expected))
        seen: dict[int, tuple[str, bytes]] = {}
        sub = await js.subscribe(f"sidecar.test.{token}.>", ordered_consumer=True)
        deadline = time.monotonic() + 20
        while len(seen) < len(expected) and time.monotonic() < deadline:
            msg = await sub.next_msg(timeout=5)
            seen[msg.metadata.sequence.stream] = (msg.subject, msg.data)
        await sub.unsubscribe()
        assert seen == expected

        # The restarted node holds the whole stream in its own store, and the leader counts
        # every replica current.
        want = {"messages": len(expected), "last_seq": len(expected)}

        async def caught_up() -> Any:
            states = [nats_cluster.stream_state(i, token) or {} for i in range(nats_cluster.n)]
            mine = [{k: s.get(k) for k in want} for s in states]
            info = await js.stream_info(token)
            replicas = info.cluster.replicas or []
            current = len(replicas) == 2 and all(r.current and not r.offline for r in replicas)
            return (all(m == want for m in mine) and current) or None

        await until(caught_up, f"{nats_cluster.nodes[victim].name} caught up", 30, every=0.1)
        retries = sum((p.retries for p in publishers), Counter())
        await nc.close()
        timings = ", ".join(f"{k} in {v:.1f} s" for k, v in took.items())
        print(f"acked {len(expected)} messages; killed {leader}: {timings}; retries {dict(retries)}")

    try:
        asyncio.run(main())
    except BaseException:
        print(nats_cluster.logs()[-20000:])
        raise
