"""The search syntax, and its translation into an SQLite FTS5 query.

FTS5's own syntax has column filters, ``NEAR``, ``^`` and bare operators that a user typing
words can trip over (``state-of-the-art`` is a syntax error there). So users write a small
language of their own, and every word reaches FTS5 quoted:

- ``deploy failed``: both words, anywhere in the event (its type or the strings in its data);
- ``"connection refused"``: the words next to each other, in that order;
- ``timeout OR refused``: either; ``OR`` binds tighter than the space between words;
- ``-retry``: events without the word (at least one word must be wanted);
- ``deploy*``: words starting with ``deploy``.

Matching ignores case and accents; words are what Unicode calls letters and digits, so
``agent.error`` is the phrase ``agent error`` and ``x_y`` is ``x`` then ``y``. A query that
cannot be read (an unclosed quote, nothing to look for) is :class:`InvalidParams` saying why.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from msgspec import Meta

from sidecar.errors import InvalidParams

MAX_QUERY_CHARS = 1000
SearchQuery = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description='words (all of them), "a phrase", a OR b, -excluded, prefix* (see docs/search.md)',
    ),
]
MAX_TERMS = 32
_TOKEN = re.compile(r'"(?P<phrase>[^"]*)"(?P<pstar>\*?)|(?P<word>[^\s"]+)')
_WORD_CHARS = re.compile(r"\w+")


def words_of(text: str) -> list[str]:
    """The words FTS5's ``unicode61`` tokenizer (``remove_diacritics 2``) would see: folded to
    lower case without accents. For callers that match as the index does (tests, the naive
    scan in the benchmark)."""
    folded = unicodedata.normalize("NFD", text.lower())
    plain = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return [w for w in re.split(r"[\W_]+", plain) if w]


def _quoted(words: list[str], prefix: bool) -> str:
    return '"' + " ".join(words) + '"' + (" *" if prefix else "")


def to_fts(query: str) -> str:
    """The FTS5 expression for a user's query (see the module's docstring)."""
    if not isinstance(query, str) or not query.strip():
        raise InvalidParams("q is empty: give at least one word to look for", {"field": "q"})
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidParams(f"q is {len(query)} characters, over the limit of {MAX_QUERY_CHARS}", {"field": "q"})
    if query.count('"') % 2:
        at = query.rfind('"')
        raise InvalidParams(f"q has an unclosed quote at character {at + 1}", {"field": "q", "position": at + 1})
    wanted: list[list[str]] = []  # groups joined by OR, the groups joined by AND
    unwanted: list[str] = []
    or_next = False
    for m in _TOKEN.finditer(query):
        if m["word"] == "OR":
            if not wanted or or_next:
                raise InvalidParams("q has OR without a term before and after it", {"field": "q"})
            or_next = True
            continue
        negated = False
        if m["phrase"] is not None:
            words, prefix = words_of(m["phrase"]), bool(m["pstar"])
        else:
            raw = m["word"]
            negated = raw.startswith("-") and len(raw) > 1
            raw = raw[1:] if negated else raw
            prefix = raw.endswith("*")
            words = words_of(raw.rstrip("*"))
        if not words:
            continue  # punctuation alone: nothing FTS5 could match
        term = _quoted(words, prefix)
        if negated:
            if or_next:
                raise InvalidParams(
                    "q has OR before an excluded term: exclusions cannot be alternatives", {"field": "q"}
                )
            unwanted.append(term)
        elif or_next:
            wanted[-1].append(term)
            or_next = False
        else:
            wanted.append([term])
    if or_next:
        raise InvalidParams("q ends with OR: give a term after it", {"field": "q"})
    if not wanted:
        raise InvalidParams("q has nothing to look for: give at least one word that is not excluded", {"field": "q"})
    if sum(map(len, wanted)) + len(unwanted) > MAX_TERMS:
        raise InvalidParams(f"q has more than {MAX_TERMS} terms", {"field": "q", "max_terms": MAX_TERMS})
    expr = " AND ".join(group[0] if len(group) == 1 else "(" + " OR ".join(group) + ")" for group in wanted)
    for term in unwanted:
        expr = f"({expr}) NOT {term}"
    return expr
