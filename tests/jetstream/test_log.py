"""The JetStream log (sidecar.jetstream.log) on a real 3-node cluster: several processes'
logs on one stream keep every conversation's seqs gapless, catch stale expectations and
repeated ids across them, and see each other's appends."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sidecar.errors import ConflictError
from sidecar.jetstream import log as jetstream_log
from sidecar.jetstream.log import JetStreamConfig, JetStreamLog, subject_of
from sidecar.log.clocks import DEFAULT_WRITER
from sidecar.log.events import Event, as_new_event
from tests.support_nats import NatsCluster

pytestmark = pytest.mark.timeout(120)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


async def started(urls: list[str], stream: str, resume: Callable[[str], int] | None = None, **kw: Any) -> JetStreamLog:
    log = JetStreamLog(JetStreamConfig(servers=urls, stream=stream, replicas=3), **kw)
    await log.start(resume)
    return log


def ev(cid: str, **kw: Any) -> dict[str, Any]:
    return {"conversation_id": cid, "type": "agent.progress", "data": {"n": kw.pop("n", 0)}, **kw}


def test_subjects_keep_dotted_conversations_apart() -> None:
    assert subject_of("S", "a.b") == "S.log.a~b" and subject_of("S", "a") != subject_of("S", "a.b")


def test_two_processes_append_to_one_conversation_and_seqs_stay_gapless(nats_urls: list[str], token: str) -> None:
    async def test() -> None:
        a, b = await started(nats_urls, token), await started(nats_urls, token)
        try:

            async def writer(log: JetStreamLog, tag: str) -> list[int]:
                return [(await log.append(ev("c", agent_id=tag, n=i))).seq for i in range(40)]

            seqs_a, seqs_b = await asyncio.gather(writer(a, "A"), writer(b, "B"))
            assert sorted(seqs_a + seqs_b) == list(range(1, 81))  # gapless, none twice
            for log in (a, b):
                await until(lambda log=log: log.last_seq("c"), 80)
                events = await log.tail("c", 80)
                assert [e.seq for e in events] == list(range(1, 81))
                stamps = [e.timestamp for e in events]
                assert stamps == sorted(stamps)
            # Each writer's clock counts its own events; the other's entries are what it had seen.
            last_a = (await a.tail("c", 80))[-1]
            assert last_a.clock[last_a.agent_id or ""] == 40
        finally:
            await a.close()
            await b.close()

    run(test)


def test_expected_seq_and_repeated_ids_are_caught_across_processes(nats_urls: list[str], token: str) -> None:
    async def test() -> None:
        a, b = await started(nats_urls, token), await started(nats_urls, token)
        try:
            first = await a.append(ev("x"))
            # b has not necessarily seen a's event yet: its stale view must not pass for the truth.
            second = await b.append(ev("x", expected_seq=1))
            assert (first.seq, second.seq) == (1, 2)
            with pytest.raises(ConflictError) as err:
                await a.append(ev("x", expected_seq=1))
            assert err.value.data["last_seq"] == 2
            same = str(uuid.uuid4())
            one, two = await asyncio.gather(a.append(ev("x", id=same)), b.append(ev("x", id=same)))
            assert one.seq == two.seq == 3 and one.id == two.id == same and (one.duplicate or two.duplicate)
            again = await a.append(ev("x", id=same))
            assert again.duplicate and again.seq == 3
            await until(lambda: a.last_seq("x"), 3)
            await until(lambda: b.last_seq("x"), 3)
        finally:
            await a.close()
            await b.close()

    run(test)


def test_a_process_sees_what_another_appended_and_a_new_one_catches_up(nats_urls: list[str], token: str) -> None:
    async def test() -> None:
        seen: list[Event] = []
        a = await started(nats_urls, token)
        b = await started(nats_urls, token, on_event=lambda event, _: seen.append(event))
        try:
            acks = [await a.append(ev(cid, n=i)) for i in range(5) for cid in ("p", "q.r")]
            await until(lambda: len(seen), 10)
            assert [(e.conversation_id, e.seq) for e in seen if e.conversation_id == "q.r"] == [
                ("q.r", s) for s in range(1, 6)
            ]
            got = await b.get("q.r", acks[-1].id)
            assert got is not None and got.id == acks[-1].id
            late = await started(nats_urls, token)  # started after the fact: reads what it uses
            try:
                assert await late.last_seq("p") == 5 and [e.seq for e in await late.tail("q.r", 3)] == [3, 4, 5]
                assert (await late.append(ev("p"))).seq == 6
            finally:
                await late.close()
        finally:
            await a.close()
            await b.close()

    run(test)


def test_a_process_resumes_after_a_position_and_reads_only_the_conversations_it_uses(
    nats_urls: list[str], token: str
) -> None:
    async def test() -> None:
        a = await started(nats_urls, token)
        try:
            for i in range(3):
                await a.append(ev("old", n=i))
            await a.append(ev("gone"))
            await a.delete("gone")
            await a.append(ev("gone", n=1))
            mark = (await a.client.jetstream().stream_info(token)).state.last_seq
            seen: list[tuple[str, int]] = []
            asked: list[str] = []

            def resume(created: str) -> int:
                asked.append(created)
                return mark

            late = await started(
                nats_urls, token, resume, on_event=lambda e, _: seen.append((e.conversation_id, e.seq))
            )
            try:
                assert asked and asked[0] and late.resumed_from == mark
                await a.append(ev("new"))
                await until(lambda: len(seen), 1)
                assert seen == [("new", 1)]  # only what came after the position is passed on
                assert late._convs == {}  # and nothing is read until used
                assert await late.last_seq("old") == 3 and await late.last_seq("gone") == 1  # after its tombstone
                mine = await late.append(ev("old"))
                assert mine.seq == 4 and mine.clock == {DEFAULT_WRITER: 4}  # the clocks read from its history
                # A conversation read while another process appends to it: none missed, none twice.
                writes = asyncio.gather(*[a.append(ev("busy", n=i)) for i in range(40)])
                assert 0 <= await late.last_seq("busy") <= 40  # read while the appends go on
                await writes
                await until(lambda: late.last_seq("busy"), 40)
                assert [e.seq for e in await late.tail("busy", 50)] == list(range(1, 41))
                assert (await late.append(ev("busy"))).seq == 41
                assert set(late._convs) == {"old", "gone", "busy"}
            finally:
                await late.close()
            beyond = await started(nats_urls, token, lambda created: mark + 10**6)  # not this stream's
            try:
                assert beyond.resumed_from == 0 and await beyond.last_seq("old") == 4
            finally:
                await beyond.close()
        finally:
            await a.close()

    run(test)


def test_the_index_forgets_the_least_used_conversations_and_reads_them_again(
    nats_urls: list[str], token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jetstream_log, "MAX_CONVERSATIONS", 2)
    monkeypatch.setattr(jetstream_log, "MAX_INDEXED", 5)

    async def test() -> None:
        a = await started(nats_urls, token)
        try:
            for cid in ("c1", "c2", "c3"):
                assert [(await a.append(ev(cid))).seq for _ in range(2)] == [1, 2]
            assert list(a._convs) == ["c2", "c3"]  # at most 2 conversations
            assert (await a.append(ev("c1"))).seq == 3  # c1 read again from the stream
            assert list(a._convs) == ["c3", "c1"]
            await a.append(ev("c3"))
            await a.append(ev("c4"))  # 3 + 3 + 1 events: over 5, so c1 goes, the least used
            assert list(a._convs) == ["c3", "c4"]
            # Appends to more conversations at once than it holds: each lands after its last.
            got = await asyncio.gather(*[a.append(ev(cid)) for cid in ("c1", "c2", "c3", "c1", "c4", "c2")])
            assert [r.seq for r in got] == [4, 3, 4, 5, 2, 4]
        finally:
            await a.close()

    run(test)


def test_the_newest_events_kept_in_memory_are_bounded_and_older_ones_read_from_the_stream(
    nats_urls: list[str], token: str
) -> None:
    async def test() -> None:
        a = await started(nats_urls, token)
        try:
            news = [as_new_event(ev("long", n=i)) for i in range(400)]  # about 80 KiB
            await a.append_batch(news)
            conv = a._convs["long"]
            assert sum(map(len, conv.recent)) <= 2 * jetstream_log.RECENT_BYTES and conv.recent_first > 1
            assert [e.data["n"] for e in await a.tail("long", 400)] == list(range(400))
        finally:
            await a.close()

    run(test)


def test_ids_are_hints_checked_against_the_event(
    nats_urls: list[str], token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jetstream_log, "id_key", lambda event_id: 7)  # every id collides

    async def test() -> None:
        a = await started(nats_urls, token)
        try:
            first, second = str(uuid.uuid4()), str(uuid.uuid4())
            assert (await a.append(ev("h", id=first))).seq == 1
            fresh = await a.append(ev("h", id=second))
            assert fresh.seq == 2 and not fresh.duplicate  # not taken for the first
            again = await a.append(ev("h", id=second))
            assert again.duplicate and again.seq == 2
            # One hint a key: the first is now missed (as rare as a 64-bit hash collision), never mistaken.
            assert await a.get("h", first) is None
        finally:
            await a.close()

    run(test)


async def until(check: Callable[[], object], want: object = True, timeout: float = 10.0) -> None:
    """Wait for a process's feed to take in what another wrote: ask again until ``check()``
    gives ``want`` or the deadline passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = check()
        if (await got if inspect.isawaitable(got) else got) == want:
            return
        assert asyncio.get_running_loop().time() < deadline, "the feed never brought it"
        await asyncio.sleep(0.01)


@pytest.mark.slow
def test_killing_the_stream_leader_under_load_loses_no_acknowledged_event(
    nats_cluster: NatsCluster, nats_urls: list[str], token: str
) -> None:
    """Two processes append to one conversation while the stream's leader is killed -9: every
    acknowledged event is there afterwards, at its seq, and the seqs have no gap."""

    async def test() -> None:
        a, b = await started(nats_urls, token), await started(nats_urls, token)
        acked: list[tuple[int, str]] = []
        stop = asyncio.Event()

        async def writer(log: JetStreamLog, tag: str) -> None:
            n = 0
            while not stop.is_set():
                ack = await log.append(ev("load", agent_id=tag, n=n))
                acked.append((ack.seq, ack.id))
                n += 1

        tasks = [asyncio.create_task(writer(a, "A")), asyncio.create_task(writer(b, "B"))]
        try:
            await until(lambda: len(acked) >= 100)
            assert a._js is not None
            leader = (await a._js.stream_info(token)).cluster.leader
            victim = nats_cluster.index_of(leader or "")
            nats_cluster.kill(victim)
            before = len(acked)
            await until(lambda: len(acked) >= before + 100, timeout=60)  # a new leader took over
            nats_cluster.start(victim)
            await until(lambda: len(acked) >= before + 200, timeout=60)
        finally:
            stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        try:
            fresh = await started(nats_urls, token)  # reads the stream from scratch
            try:
                events = await fresh.tail("load", len(acked) + 10)
                assert [e.seq for e in events] == list(range(1, len(events) + 1))
                by_seq = {e.seq: e.id for e in events}
                assert all(by_seq.get(seq) == event_id for seq, event_id in acked)  # nothing acknowledged lost
                assert len(events) == len(acked)
            finally:
                await fresh.close()
        finally:
            await a.close()
            await b.close()

    run(test)
