"""The in-memory id index: event id -> (conversation, seq), and parent id -> children.

One million ids must fit in well under 300 MB and load in about a second, so keys are the
process's own 64-bit string hash and values pack the conversation number with the seq into
one int. Entries are hints: every hit is checked against the event on disk, which makes hash
collisions and stale entries (a log truncated by hand) harmless.
"""

from __future__ import annotations

from collections.abc import Iterable

_SEQ_BITS = 40
_SEQ_MASK = (1 << _SEQ_BITS) - 1

Location = tuple[int, int]  # (conversation number, seq)


def id_key(event_id: str) -> int:
    return hash(event_id)


class _MultiMap:
    """``dict[int, int]`` that keeps every value when two differ under one key."""

    __slots__ = ("_map",)

    def __init__(self) -> None:
        self._map: dict[int, int | list[int]] = {}

    def add(self, key: int, value: int) -> None:
        old = self._map.get(key)
        if old is None:
            self._map[key] = value
        elif isinstance(old, list):
            if value not in old:
                old.append(value)
        elif old != value:
            self._map[key] = [old, value]

    def add_run(self, keys: list[int], first_value: int) -> None:
        """Values ``first_value, first_value + 1, ...`` for ``keys``: the bulk path for a scan."""
        if self._map.keys().isdisjoint(keys) and len(set(keys)) == len(keys):
            self._map.update(zip(keys, range(first_value, first_value + len(keys))))
        else:
            for offset, key in enumerate(keys):
                self.add(key, first_value + offset)

    def get(self, key: int) -> list[int]:
        found = self._map.get(key)
        if found is None:
            return []
        return list(found) if isinstance(found, list) else [found]

    def __len__(self) -> int:
        return len(self._map)


class IdIndex:
    """Where each event id lives, and which events name it in ``caused_by``."""

    def __init__(self) -> None:
        self._ids = _MultiMap()
        self._children = _MultiMap()

    @staticmethod
    def _pack(conv_no: int, seq: int) -> int:
        return conv_no << _SEQ_BITS | seq

    @staticmethod
    def _unpack(values: Iterable[int]) -> list[Location]:
        return [(v >> _SEQ_BITS, v & _SEQ_MASK) for v in values]

    def add(self, event_id: str, conv_no: int, seq: int, caused_by: Iterable[str] = ()) -> None:
        packed = self._pack(conv_no, seq)
        self._ids.add(id_key(event_id), packed)
        for parent in caused_by:
            self._children.add(id_key(parent), packed)

    def add_run(self, ids: list[str], conv_no: int, first_seq: int) -> None:
        """Index consecutive events ``first_seq, first_seq + 1, ...`` of one conversation."""
        self._ids.add_run(list(map(hash, ids)), self._pack(conv_no, first_seq))

    def add_children(self, parent_ids: Iterable[str], conv_no: int, seq: int) -> None:
        packed = self._pack(conv_no, seq)
        for parent in parent_ids:
            self._children.add(id_key(parent), packed)

    def locate(self, event_id: str) -> list[Location]:
        """Candidate places for ``event_id``; verify each against the log."""
        return self._unpack(self._ids.get(id_key(event_id)))

    def children(self, event_id: str) -> list[Location]:
        """Candidate events whose ``caused_by`` names ``event_id``; verify each."""
        return self._unpack(self._children.get(id_key(event_id)))

    def __len__(self) -> int:
        return len(self._ids)
