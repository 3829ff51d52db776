"""The search syntax: what it means in FTS5, and hostile queries that must end as -32602."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import InvalidParams
from sidecar.search.query import to_fts, words_of


@pytest.mark.parametrize(
    ("query", "fts"),
    [
        ("deploy failed", '"deploy" AND "failed"'),
        ('"connection refused"', '"connection refused"'),
        ("timeout OR refused", '("timeout" OR "refused")'),
        ("deploy -retry", '("deploy") NOT "retry"'),
        ("depl*", '"depl" *'),
        ("agent.error", '"agent error"'),
        ("state-of-the-art", '"state of the art"'),
        ("NEAR(a b) col:x ^y", '"near a" AND "b" AND "col x" AND "y"'),  # FTS5's operators are words here
        ("Café", '"cafe"'),
    ],
)
def test_the_syntax_means_what_the_docs_say(query: str, fts: str) -> None:
    assert to_fts(query) == fts


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ('"unclosed', "unclosed quote at character 1"),
        ("-only -excluded", "nothing to look for"),
        ("OR a", "OR without a term"),
        ("a OR", "ends with OR"),
        ("a OR -b", "exclusion"),
        ("!!! ???", "nothing to look for"),
        ("x" * 1001, "over the limit"),
        (" ".join(f"w{i}" for i in range(40)), "more than 32 terms"),
    ],
)
def test_a_query_that_cannot_be_read_says_why(query: str, says: str) -> None:
    with pytest.raises(InvalidParams, match=says) as err:
        to_fts(query)
    assert err.value.data["field"] == "q"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_a_valid_fts5_query_or_a_clear_refusal(query: str) -> None:
    """Whatever a user types, FTS5 never sees a syntax error: the translation quotes every word."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(body, tokenize='unicode61 remove_diacritics 2')")
    conn.execute("INSERT INTO t VALUES ('some text here')")
    try:
        expr = to_fts(query)
    except InvalidParams:
        return
    conn.execute("SELECT * FROM t WHERE t MATCH ?", (expr,)).fetchall()


def test_words_are_folded_as_the_index_folds_them() -> None:
    assert words_of("Déjà-vu x_y AGENT.error 42") == ["deja", "vu", "x", "y", "agent", "error", "42"]
