"""Rolling summaries (S24): grouping, determinism, the hard token cap, compression, persistence."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.errors import InvalidParams, StorageError
from sidecar.summary.files import load_snapshot, load_summary, persist_summary
from sidecar.summary.state import _drop_bullets, rolling_summary
from sidecar.tokens import DEFAULT_COUNTER
from tests.support import event, realistic


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
    assert loaded is not None and loaded.markdown == first["markdown"] and loaded.to_seq == 50
    second = rolling_summary("c1", realistic(80))
    persist_summary("c1", second, data_dir=data_dir)
    assert load_summary("c1", data_dir=data_dir).summary_ref == second["summary_ref"]
    assert load_snapshot("c1", first["summary_ref"], data_dir=data_dir) == first["markdown"]  # still rebuildable
    assert not list((data_dir / "summaries").rglob("*.tmp.*"))
    assert load_summary("other", data_dir=data_dir) is None
    with pytest.raises(InvalidParams):
        persist_summary("c1", {**first, "summary_ref": "0" * 64}, data_dir=data_dir)


def test_incremental_state_matches_the_full_summary() -> None:
    from sidecar.summary.state import SummaryState, as_dict

    evs = realistic(300)
    state = SummaryState("c1", ring=8)  # most events leave the ring and are folded in
    for e in evs:
        state.add(e)
    state.add(evs[10])  # a repeat is ignored
    for keep in (0, 1, 5, 8):
        for cap in (None, 500):
            assert as_dict(state.render(keep_recent=keep, max_tokens=cap)) == rolling_summary(
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


# --- untrusted files, concurrent writers, and ids that look like file names ---------------------


def test_conversations_a_and_a_md_keep_apart(data_dir: Path) -> None:
    mine, theirs = rolling_summary("a", realistic(30, seed=1)), rolling_summary("a.md", realistic(20, seed=2))
    for _ in range(2):  # and again, over what the first round left
        persist_summary("a.md", theirs, data_dir=data_dir)
        persist_summary("a", mine, data_dir=data_dir)
    assert load_summary("a", data_dir=data_dir).markdown == mine["markdown"]
    assert load_summary("a.md", data_dir=data_dir).markdown == theirs["markdown"]
    assert load_snapshot("a", mine["summary_ref"], data_dir=data_dir) == mine["markdown"]
    assert load_snapshot("a.md", theirs["summary_ref"], data_dir=data_dir) == theirs["markdown"]


def test_the_old_layout_is_still_read_and_moved_when_in_the_way(data_dir: Path) -> None:
    old = rolling_summary("a.md", realistic(10))
    # an older version kept conversation a.md's snapshots in summaries/a.md/
    (data_dir / "summaries" / "a.md").mkdir(parents=True)
    (data_dir / "summaries" / "a.md" / f"{old['summary_ref']}.md").write_text(old["markdown"])
    (data_dir / "summaries" / "c1").mkdir()
    (data_dir / "summaries" / "c1" / f"{old['summary_ref']}.md").write_text(old["markdown"])
    assert load_snapshot("c1", old["summary_ref"], data_dir=data_dir) == old["markdown"]
    assert load_summary("a", data_dir=data_dir) is None  # a.md is someone else's directory
    mine = rolling_summary("a", realistic(5))
    assert persist_summary("a", mine, data_dir=data_dir).endswith("summaries/a.md")
    assert load_summary("a", data_dir=data_dir).summary_ref == mine["summary_ref"]
    assert load_snapshot("a.md", old["summary_ref"], data_dir=data_dir) == old["markdown"]  # moved, kept


def test_a_symlink_in_summaries_is_never_followed(data_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root's secret")
    summary = rolling_summary("c1", realistic(10))
    persist_summary("c1", summary, data_dir=data_dir)
    md = data_dir / "summaries" / "c1.md"
    md.unlink()
    md.symlink_to(secret)
    with pytest.raises(StorageError, match="c1") as info:
        load_summary("c1", data_dir=data_dir)
    assert "root's secret" not in info.value.message
    snapshot = data_dir / "summaries" / "_snapshots" / "c1" / f"{summary['summary_ref']}.md"
    snapshot.unlink()
    snapshot.symlink_to(secret)
    with pytest.raises(StorageError, match="c1"):
        load_snapshot("c1", summary["summary_ref"], data_dir=data_dir)
    persist_summary("c1", rolling_summary("c1", realistic(12)), data_dir=data_dir)  # replaces the link
    assert secret.read_text() == "root's secret" and not md.is_symlink()
    assert load_summary("other", data_dir=data_dir) is None
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "c1").mkdir(parents=True)
    (elsewhere / "c1" / f"{'0' * 64}.md").write_text("not ours")
    (data_dir / "summaries" / "_snapshots").rename(tmp_path / "moved")
    (data_dir / "summaries" / "_snapshots").symlink_to(elsewhere)
    with pytest.raises(StorageError, match="symbolic link"):
        load_snapshot("c1", "0" * 64, data_dir=data_dir)
    with pytest.raises(StorageError, match="symbolic link"):
        persist_summary("c1", rolling_summary("c1", realistic(3)), data_dir=data_dir)


def test_a_garbage_summary_fails_its_own_conversation_only(data_dir: Path) -> None:
    for cid in ("c1", "c2"):
        persist_summary(cid, rolling_summary(cid, realistic(10)), data_dir=data_dir)
    (data_dir / "summaries" / "c1.json").write_bytes(b"[" * 100_000)
    with pytest.raises(StorageError, match="c1"):
        load_summary("c1", data_dir=data_dir)
    (data_dir / "summaries" / "c1.json").write_bytes(b'{"to_seq": "ten"}')  # JSON, but not a summary's
    with pytest.raises(StorageError, match="c1"):
        load_summary("c1", data_dir=data_dir)
    assert load_summary("c2", data_dir=data_dir).to_seq == 10


def test_concurrent_persists_agree(data_dir: Path) -> None:
    summaries = [rolling_summary("c1", realistic(n)) for n in (20, 30, 40, 50)]
    errors: list[BaseException] = []

    def persist(i: int) -> None:
        try:
            persist_summary("c1", summaries[i % 4], data_dir=data_dir)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=persist, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    md = (data_dir / "summaries" / "c1.md").read_bytes()
    meta = json.loads((data_dir / "summaries" / "c1.json").read_text())
    assert meta["summary_ref"] == hashlib.sha256(md).hexdigest()  # the two files tell one summary
    assert not [p for p in (data_dir / "summaries").rglob("*") if p.name.startswith(".tmp")]
