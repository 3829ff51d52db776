"""The search index on its own: FTS5 agrees with a brute-force scan, ranking makes sense,
filters filter, and a damaged file is put aside and built again from the log."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.log import EventStore
from sidecar.search.index import Doc, SearchIndex, body_of
from sidecar.search.indexer import Indexer
from sidecar.search.query import to_fts, words_of
from sidecar.search.service import SearchService

VOCAB = ["deploy", "Déjà", "timeout", "refused", "agent", "error", "café", "x_y", "retry", "42", "ÉCOLE", "naïve"]


def doc(i: int, body: str, *, cid: str = "c", type_: str = "note.added", agent: str | None = None) -> Doc:
    data = json.dumps({"text": body})
    return Doc(cid, i, f"id-{cid}-{i}", type_, agent, None, f"2026-01-01T00:00:{i % 60:02d}.000000Z", data)


def index_of(tmp_path: Path, docs: list[Doc]) -> SearchIndex:
    index = SearchIndex(str(tmp_path))
    (tmp_path / "archive").mkdir(exist_ok=True)
    index.open()
    index.add(docs, {d.conversation_id: d.seq for d in docs})
    return index


texts = st.lists(
    st.lists(st.sampled_from(VOCAB + ["", " ", ".", "-", "!"]), max_size=8).map(" ".join), min_size=1, max_size=30
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=texts, word=st.sampled_from(VOCAB))
def test_single_word_results_equal_a_brute_force_scan(tmp_path: Path, bodies: list[str], word: str) -> None:
    path = tmp_path / f"i{len(list(tmp_path.iterdir()))}"
    path.mkdir()
    index = index_of(path, [doc(i, body) for i, body in enumerate(bodies, 1)])
    try:
        wanted = set(words_of(word))
        expected = {i for i, body in enumerate(bodies, 1) if wanted <= set(words_of(body + " note.added"))}
        found = {h.seq for h in index.search(to_fts(word), limit=1000)}
        assert found == expected
    finally:
        index.close()


def test_ranking_prefers_more_and_rarer_matches_and_the_type(tmp_path: Path) -> None:
    index = index_of(
        tmp_path,
        [
            doc(1, "the build passed " + "filler words here " * 30 + "timeout once"),
            doc(2, "timeout timeout: the deploy hit a timeout"),
            doc(3, "nothing to see"),
            doc(4, "a short note", type_="agent.timeout"),
        ],
    )
    hits = index.search(to_fts("timeout"), limit=10)
    seqs = [h.seq for h in hits]
    assert seqs[0] in (2, 4) and seqs[-1] == 1 and 3 not in seqs
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert "**timeout**" in hits[0].snippet


def test_filters_by_conversation_type_agent_and_time(tmp_path: Path) -> None:
    index = index_of(
        tmp_path,
        [
            doc(1, "deploy one", cid="a", agent="x"),
            doc(2, "deploy two", cid="a", type_="agent.error", agent="y"),
            doc(3, "deploy three", cid="b", agent="x"),
        ],
    )
    q = to_fts("deploy")
    assert {(h.conversation_id, h.seq) for h in index.search(q, limit=9, conversation_id="a")} == {("a", 1), ("a", 2)}
    assert [h.seq for h in index.search(q, limit=9, types=["agent.error"])] == [2]
    assert {h.seq for h in index.search(q, limit=9, agent_ids=["x"])} == {1, 3}
    assert [h.seq for h in index.search(q, limit=9, start="2026-01-01T00:00:02", end="2026-01-01T00:00:02.9")] == [2]
    assert [h.seq for h in index.search(q, limit=9, conversation_id="a", before_seq=2)] == [1]


def test_body_holds_the_strings_in_data_depth_first_and_bounded() -> None:
    data: dict[str, Any] = {"a": "first", "n": 3, "b": ["second", {"c": "third"}], "d": None}
    assert body_of(data) == "first\nsecond\nthird"
    assert len(body_of({"big": "x" * 100_000})) == 32 * 1024


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(st.text(max_size=5), json_values, max_size=5))
def test_the_index_draws_the_same_body_as_body_of(tmp_path: Path, data: dict[str, Any]) -> None:
    """SQLite's json_tree draws the body in the index; body_of is the same rule in Python."""
    path = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
    path.mkdir()
    index = index_of(path, [Doc("c", 1, "e", "t.x", None, None, "t", json.dumps(data))])
    try:
        (stored,) = index._w.execute("SELECT body FROM docs").fetchone()
        assert stored == body_of(data)
    finally:
        index.close()


def test_a_damaged_index_file_is_put_aside_and_built_again_from_the_log(data_dir: Path) -> None:
    with EventStore(data_dir) as store:
        store.append({"conversation_id": "c", "type": "note.added", "data": {"text": "the quick brown fox"}})
        index_dir = data_dir / "index"
        index_dir.mkdir(mode=0o700)
        (index_dir / "search.sqlite3").write_bytes(b"this is not a database" * 100)
        index = SearchIndex(str(data_dir))
        indexer = Indexer(store, index)
        indexer.start()
        assert indexer.caught_up.wait(10)
        service = SearchService(store, index, indexer)
        hits = service.search("brown").hits
        assert [h.event.data["text"] for h in hits] == ["the quick brown fox"]
        assert list((data_dir / "archive").glob("search.sqlite3.*.damaged"))
        assert (index_dir / "search.sqlite3").stat().st_mode & 0o777 == 0o600
        indexer.stop()


def test_add_counts_the_docs_it_inserted_not_the_full_text_writes(tmp_path: Path) -> None:
    index = index_of(tmp_path, [])
    docs = [doc(i, f"word{i} and more words") for i in range(1, 4)]
    assert index.add(docs, {"c": 3}) == 3
    assert index.add(docs, {"c": 3}) == 0  # already there: skipped
    assert index.add([doc(4, "four")], {"c": 4}) == 1


def test_what_a_batch_reads_of_many_conversations_is_one_transaction(data_dir: Path) -> None:
    with EventStore(data_dir) as store:
        store.append_many(
            [{"conversation_id": f"c{j}", "type": "note.added", "data": {"text": f"n{j}"}} for j in range(40)] * 2
        )
        indexer = Indexer(store, SearchIndex(str(data_dir)))
        indexer.start()
        assert indexer.caught_up.wait(10)
        before = indexer.stats.batches
        store.append_many(
            [{"conversation_id": f"c{j}", "type": "note.added", "data": {"text": "y"}} for j in range(40)]
        )
        done = threading.Event()
        indexer.on_batch = done.set
        for j in range(40):
            indexer.behind(f"c{j}", 3)
        assert done.wait(10)
        indexer.stop()
        assert indexer.stats.indexed == 120 and indexer.stats.batches - before <= 2  # not one per conversation
        again = SearchIndex(str(data_dir))
        again.open()
        assert again.progress() == {f"c{j}": 3 for j in range(40)}
        again.close()
