"""Rolling summaries (S24): grouping, determinism, the hard token cap, compression, persistence."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.context.tokens import DEFAULT_COUNTER
from sidecar.errors import InvalidParams
from sidecar.log.summarize import _drop_bullets, load_snapshot, load_summary, persist_summary, rolling_summary


def event(
    seq: int,
    type_: str,
    *,
    level: str = "action",
    agent: str | None = "coder",
    task: str | None = None,
    data: dict | None = None,
    minute: int = 0,
) -> dict:
    return {
        "id": f"00000000-0000-7000-8000-{seq:012d}",
        "seq": seq,
        "timestamp": f"2020-05-01T10:{minute:02d}:{seq % 60:02d}.000000Z",
        "conversation_id": "c1",
        "type": type_,
        "visibility": "status",
        "level": level,
        "agent_id": agent,
        "task_id": task,
        "caused_by": [],
        "data": data or {},
    }


def realistic(n: int = 400, seed: int = 3) -> list[dict]:
    """Agent traffic: lots of progress and tool calls, some task changes, a few errors and decisions."""
    rng = random.Random(seed)
    out = []
    for seq in range(1, n + 1):
        kind = rng.random()
        task = f"task-{rng.randint(1, 12)}"
        agent = rng.choice(["coder", "search", "rag"])
        if kind < 0.5:
            out.append(
                event(
                    seq,
                    "agent.progress",
                    level="detail",
                    agent=agent,
                    task=task,
                    minute=seq // 60,
                    data={"msg": f"reading file src/module_{rng.randint(1, 80)}.py and planning", "pct": seq % 100},
                )
            )
        elif kind < 0.8:
            out.append(
                event(
                    seq,
                    "tool.call",
                    agent=agent,
                    task=task,
                    minute=seq // 60,
                    data={
                        "tool": "grep",
                        "args": {"pattern": f"def handler_{seq}", "path": "src/"},
                        "result_lines": rng.randint(0, 40),
                    },
                )
            )
        elif kind < 0.93:
            out.append(
                event(
                    seq,
                    "task.updated",
                    level="state",
                    agent=agent,
                    task=task,
                    minute=seq // 60,
                    data={"status": rng.choice(["running", "blocked", "pending"])},
                )
            )
        elif kind < 0.97:
            out.append(
                event(
                    seq,
                    "agent.error",
                    level="action",
                    agent=agent,
                    task=task,
                    minute=seq // 60,
                    data={"error": f"tool timed out after {rng.randint(5, 60)} s"},
                )
            )
        else:
            out.append(
                event(
                    seq,
                    "agent.decision",
                    level="decision",
                    agent=agent,
                    task=task,
                    minute=seq // 60,
                    data={"text": f"switch to plan {chr(65 + seq % 5)} for {task}"},
                )
            )
    return out


def test_older_events_group_and_the_newest_stay_whole() -> None:
    evs = [event(i, "agent.progress", data={"msg": f"step {i}"}) for i in range(1, 11)]
    evs.append(event(11, "task.updated", task="t9", level="milestone", data={"status": "done"}))
    s = rolling_summary("c1", evs, keep_recent=3)
    md = s["markdown"]
    assert "### agent.progress x8" in md and "agents coder" in md
    for seq in (9, 10, 11):
        assert f"#{seq} 2020-05-01T" in md  # the newest three in full, with their timestamps
    assert '{"status":"done"}' in md
    assert (s["from_seq"], s["to_seq"], s["recent"]) == (1, 11, 3)
    assert s["groups"][0] == {
        "type": "agent.progress",
        "count": 8,
        "first_timestamp": evs[0]["timestamp"],
        "last_timestamp": evs[7]["timestamp"],
        "agents": ["coder"],
        "task_ids": [],
        "errors": 0,
    }


def test_deterministic_with_no_wall_clock() -> None:
    evs = realistic(120)
    a, b = rolling_summary("c1", evs), rolling_summary("c1", list(reversed(evs)))
    assert a["markdown"] == b["markdown"] and a["summary_ref"] == b["summary_ref"]
    assert datetime.now(UTC).strftime("%Y-%m-%d") not in a["markdown"]
    assert a["summary_ref"] == hashlib.sha256(a["markdown"].encode()).hexdigest()


@pytest.mark.parametrize("cap", [40, 80, 150, 300, 600, 1200])
def test_max_tokens_is_a_hard_cap(cap: int) -> None:
    s = rolling_summary("c1", realistic(300), keep_recent=5, max_tokens=cap)
    assert s["token_estimate"] <= cap
    assert DEFAULT_COUNTER.count(s["markdown"]) == s["token_estimate"]


def test_the_cap_drops_the_least_important_first() -> None:
    evs = realistic(300)
    full = rolling_summary("c1", evs, keep_recent=5)
    capped = rolling_summary("c1", evs, keep_recent=5, max_tokens=full["token_estimate"] * 2 // 3)
    assert capped["recent"] == 5  # recent events were not the first thing to go
    errors = [e for e in evs[:-5] if e["type"] == "agent.error"]
    assert all(f"#{e['seq']} " in capped["markdown"] for e in errors)  # errors outlive details


def test_compression_keeps_what_matters() -> None:
    evs = realistic(400)
    s = rolling_summary("c1", evs, keep_recent=5)
    raw_tokens = sum(DEFAULT_COUNTER.count(json.dumps(e)) for e in evs)
    assert raw_tokens / s["token_estimate"] >= 5, (raw_tokens, s["token_estimate"])
    md = s["markdown"]
    for e in evs:
        if e["task_id"]:
            assert e["task_id"] in md
        if e["type"] in ("agent.error", "agent.decision"):
            assert f"#{e['seq']} " in md


def test_bad_input() -> None:
    with pytest.raises(InvalidParams):
        rolling_summary("../x", [])
    with pytest.raises(InvalidParams):
        rolling_summary("c1", [], keep_recent=-1)
    assert "No events yet" in rolling_summary("c1", [])["markdown"]


def test_persist_and_load(data_dir: Path) -> None:
    first = rolling_summary("c1", realistic(50))
    path = Path(persist_summary("c1", first, data_dir=data_dir))
    assert path == data_dir / "summaries" / "c1.md"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first["summary_ref"]
    loaded = load_summary("c1", data_dir=data_dir)
    assert loaded["markdown"] == first["markdown"] and loaded["to_seq"] == 50
    second = rolling_summary("c1", realistic(80))
    persist_summary("c1", second, data_dir=data_dir)
    assert load_summary("c1", data_dir=data_dir)["summary_ref"] == second["summary_ref"]
    assert load_snapshot("c1", first["summary_ref"], data_dir=data_dir) == first["markdown"]  # still rebuildable
    assert not list((data_dir / "summaries").rglob("*.tmp.*"))
    assert load_summary("other", data_dir=data_dir) is None
    with pytest.raises(InvalidParams):
        persist_summary("c1", {**first, "summary_ref": "0" * 64}, data_dir=data_dir)


def test_incremental_state_matches_the_full_summary() -> None:
    from sidecar.log.summarize import SummaryState

    evs = realistic(300)
    state = SummaryState("c1", ring=8)  # most events leave the ring and are folded in
    for e in evs:
        state.add(e)
    state.add(evs[10])  # a repeat is ignored
    for keep in (0, 1, 5, 8):
        for cap in (None, 500):
            assert state.render(keep_recent=keep, max_tokens=cap) == rolling_summary(
                "c1", evs, keep_recent=keep, max_tokens=cap
            )
    with pytest.raises(InvalidParams, match="at most 8"):
        state.render(keep_recent=9)


@given(
    sizes=st.lists(st.integers(0, 40), min_size=0, max_size=30),
    cap=st.integers(0, 600),
)
def test_dropping_bullets_drops_the_fewest_least_important(sizes: list[int], cap: int) -> None:
    """The binary search finds what dropping one bullet at a time (least important first) would."""
    bullets = {"t": [(len(sizes) - i, i, "x" * size) for i, size in enumerate(sizes)]}

    def render(kept: dict) -> str:
        return "\n".join(["header", *(text for _, _, text in kept["t"])])

    def fits(text: str) -> bool:
        return len(text) <= cap

    order = sorted(bullets["t"])
    linear = render(bullets)
    for k in range(1, len(order) + 1):
        gone = {seq for _, seq, _ in order[:k]}
        linear = render({"t": [b for b in bullets["t"] if b[1] not in gone]})
        if fits(linear):
            break
    assert _drop_bullets(bullets, render, fits) == linear
