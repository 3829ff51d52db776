"""How deep a JSON text nests, found without decoding it.

Every decoder we use (msgspec, json) recurses once per level, so a line of 100,000 ``[``
would exhaust the stack before any schema is checked. This measures nesting at C speed
(``bytes.translate`` and ``replace``), so the wire and the log reader can refuse such text
before a decoder sees it. It lives apart from both, so neither depends on the other.
"""

from __future__ import annotations

# Bytes that are not JSON structure, which translate() deletes at C speed while it maps
# braces to brackets (for depth, an object is an array).
_NOT_STRUCTURE = bytes(range(256)).translate(None, b'[]{}"')
_BRACES_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")


def nesting_exceeds(line: bytes, limit: int) -> bool | None:
    """Whether ``line`` nests arrays and objects deeper than ``limit``; ``None`` when its
    brackets do not balance (it is not JSON). Brackets inside strings do not count.

    Runs at C speed (replace, translate), before any recursive decoder sees the line, so a
    hostile line costs at most ``limit`` passes over its brackets and never a deep stack."""
    s = line.translate(_BRACES_AS_BRACKETS, _NOT_STRUCTURE)
    if len(s) <= limit:  # the common case: too few brackets (and quotes) to nest that deep
        return False
    if b"\\" in line:  # escapes hide quotes: escaped backslashes first, then escaped quotes
        s = line.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_BRACES_AS_BRACKETS, _NOT_STRUCTURE)
    s = s.replace(b'""', b"")  # empty (or merged adjacent) strings: no brackets inside
    if b'"' in s:
        s = b"".join(s.split(b'"')[::2])  # drop what strings still enclose
    for _ in range(limit):
        if not s:
            return False
        inner = s.replace(b"[]", b"")  # one level: the innermost pairs
        if len(inner) == len(s):
            return None
        s = inner
    return bool(s)
