"""Property test: the store agrees with a plain in-memory model through any sequence of operations."""

from __future__ import annotations

import shutil
import tempfile
import uuid

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sidecar.clock import ManualClock
from sidecar.log import Event, EventStore
from sidecar.log.timestamps import format_timestamp

CIDS = st.sampled_from(["a", "b", "c.d"])
TYPES = st.sampled_from(["agent.progress", "task.updated", "user.message"])
VIS = st.sampled_from(["status", "internal"])
LEVELS = st.sampled_from(["milestone", "action", "detail"])
AGENTS = st.sampled_from([None, "coder", "rag"])
TURNS = st.one_of(st.none(), st.integers(0, 4))


def key(e: Event | dict) -> tuple[str, str, int]:
    if isinstance(e, dict):
        return e["timestamp"], e["conversation_id"], e["seq"]
    return e.timestamp, e.conversation_id, e.seq


class LogModel(RuleBasedStateMachine):
    @initialize(burst=st.lists(st.tuples(CIDS, TYPES, VIS, AGENTS, TURNS), max_size=25))
    def setup(self, burst) -> None:
        self.dir = tempfile.mkdtemp(prefix="sidecar-model-")
        self.clock = ManualClock()
        self.store = EventStore(self.dir, clock=self.clock, rotate_bytes=1200)
        self.events: list[dict] = []  # the model: every acknowledged event
        self.append_many(burst)

    @rule(burst=st.lists(st.tuples(CIDS, TYPES, VIS, AGENTS, TURNS), min_size=1, max_size=10))
    def append_many(self, burst) -> None:
        self.clock.advance(0.001)
        batch = [
            {"conversation_id": c, "type": t, "visibility": v, "turn": n, **({"agent_id": a} if a else {})}
            for c, t, v, a, n in burst
        ]
        acks = self.store.append_many(batch)
        for event, ack in zip(batch, acks):
            assert ack.seq == len(self.of(event["conversation_id"])) + 1
            self.events.append({"level": "action", **event, "id": ack.id, "seq": ack.seq, "timestamp": ack.timestamp})

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def of(self, cid: str) -> list[dict]:
        return [e for e in self.events if e["conversation_id"] == cid]

    @rule(
        cid=CIDS,
        type_=TYPES,
        vis=VIS,
        level=LEVELS,
        agent=AGENTS,
        turn=TURNS,
        own_id=st.booleans(),
        step=st.integers(-2_000_000, 3_000_000),
    )
    def append(self, cid, type_, vis, level, agent, turn, own_id, step) -> None:
        self.clock.set_wall(self.clock.now_ns() + step * 1000)  # the wall clock may step back
        event = {"conversation_id": cid, "type": type_, "visibility": vis, "level": level, "turn": turn}
        if agent:
            event["agent_id"] = agent
        if own_id:
            event["id"] = str(uuid.uuid4())
        ack = self.store.append(event)
        mine = self.of(cid)
        assert ack.seq == len(mine) + 1
        if mine:
            assert ack.timestamp >= mine[-1]["timestamp"]
        self.events.append({**event, "id": ack.id, "seq": ack.seq, "timestamp": ack.timestamp})

    @precondition(lambda self: self.events)
    @rule(data=st.data())
    def repeat_an_id(self, data) -> None:
        old = data.draw(st.sampled_from(self.events))
        ack = self.store.append({"conversation_id": old["conversation_id"], "type": "x.y", "id": old["id"]})
        assert (ack.seq, ack.timestamp, ack.duplicate) == (old["seq"], old["timestamp"], True)

    @rule(cid=CIDS, limit=st.integers(0, 12))
    def tail(self, cid, limit) -> None:
        got = [(e.id, e.seq) for e in self.store.tail(cid, limit)]
        want = [(e["id"], e["seq"]) for e in self.of(cid)[-limit:]] if limit else []
        assert got == want

    @rule(data=st.data(), page=st.integers(1, 7))
    def since(self, data, page) -> None:
        stamps = sorted({e["timestamp"] for e in self.events}) or [format_timestamp(self.clock.now_ns())]
        start = data.draw(st.sampled_from(stamps))
        want = sorted((e for e in self.events if e["timestamp"] >= start), key=key)
        got: list[Event] = []
        cursor = None
        while True:
            res = self.store.since(start, limit=page, cursor=cursor)
            got.extend(res.events)
            if res.next_cursor is None:
                break
            cursor = res.next_cursor
        assert [key(e) for e in got] == [key(e) for e in want]

    @rule(types=st.lists(TYPES, min_size=1, max_size=2, unique=True), vis=st.one_of(st.none(), VIS))
    def by_type(self, types, vis) -> None:
        want = [e for e in self.events if e["type"] in types and (vis is None or e["visibility"] == vis)]
        got = self.store.by_type(types, vis).events
        assert [key(e) for e in got] == [key(e) for e in sorted(want, key=key)]

    @rule(
        cid=st.one_of(st.none(), CIDS),
        agents=st.one_of(st.none(), st.lists(st.sampled_from(["coder", "rag"]), min_size=1)),
        levels=st.one_of(st.none(), st.lists(LEVELS, min_size=1)),
        turn_lo=TURNS,
        turn_hi=TURNS,
    )
    def query(self, cid, agents, levels, turn_lo, turn_hi) -> None:
        def ok(e: dict) -> bool:
            if cid is not None and e["conversation_id"] != cid:
                return False
            if agents is not None and e.get("agent_id") not in agents:
                return False
            if levels is not None and e["level"] not in levels:
                return False
            if turn_lo is not None or turn_hi is not None:
                if e["turn"] is None:
                    return False
                if turn_lo is not None and e["turn"] < turn_lo:
                    return False
                if turn_hi is not None and e["turn"] > turn_hi:
                    return False
            return True

        got = self.store.query(
            conversation_id=cid, agent_ids=agents, levels=levels, turn_start=turn_lo, turn_end=turn_hi, limit=None
        ).events
        assert [key(e) for e in got] == [key(e) for e in sorted(filter(ok, self.events), key=key)]

    @precondition(lambda self: self.events)
    @rule(data=st.data())
    def get(self, data) -> None:
        want = data.draw(st.sampled_from(self.events))
        got = self.store.get(want["id"])
        assert got is not None and key(got) == key(want) and got.type == want["type"]

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = EventStore(self.dir, clock=self.clock, rotate_bytes=1200)

    @invariant()
    def conversations_agree(self) -> None:
        if not hasattr(self, "store"):
            return
        info = {c.conversation_id: c for c in self.store.conversations()}
        for cid in {e["conversation_id"] for e in self.events}:
            mine = self.of(cid)
            assert info[cid].last_seq == len(mine)
            assert (info[cid].first_timestamp, info[cid].last_timestamp) == (
                mine[0]["timestamp"],
                mine[-1]["timestamp"],
            )


TestLogModel = LogModel.TestCase
TestLogModel.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
