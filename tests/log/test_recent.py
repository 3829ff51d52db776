"""Recent events from memory (``shared=True``): the same answers as the file, and the file
again whenever anyone but this writer changed it."""

from __future__ import annotations

from pathlib import Path

import msgspec

from sidecar.log import EventStore
from sidecar.log.recent import KEEP, KEEP_BYTES, VIEWS


def ev(cid: str = "c1", n: int = 0) -> dict:
    return {"conversation_id": cid, "type": "agent.progress", "data": {"n": n, "pad": "x" * 100}}


def as_dicts(events: list) -> list[dict]:
    return [msgspec.to_builtins(e) for e in events]


def served_from_memory(store: EventStore, cid: str) -> bool:
    """Whether the writer's view of ``cid`` still answers for its file."""
    conv = store._writer.conversations[cid]
    return conv.recent is not None and conv.recent.current(conv.path)


def test_tail_from_memory_is_the_tail_of_the_file(data_dir: Path) -> None:
    with EventStore(data_dir) as store:
        for i in range(2 * KEEP + 50):  # past the point where the view starts a fresh list
            store.append(ev(n=i))
            if i in (0, 5, KEEP, 2 * KEEP + 49):
                for limit in (1, 3, 20, KEEP, 10_000):
                    assert as_dicts(store.tail("c1", limit, shared=True)) == as_dicts(store.tail("c1", limit))
        assert served_from_memory(store, "c1")
        assert [e.seq for e in store.tail("c1", 20, shared=True)] == list(range(2 * KEEP + 31, 2 * KEEP + 51))


def test_a_young_conversation_is_whole_in_memory(data_dir: Path) -> None:
    with EventStore(data_dir) as store:
        store.append_many([ev(n=i) for i in range(3)])
        assert [e.data["n"] for e in store.tail("c1", 50, shared=True)] == [0, 1, 2]


def test_another_writer_sends_readers_back_to_the_file(data_dir: Path) -> None:
    a, b = EventStore(data_dir), EventStore(data_dir)
    try:
        a.append(ev(n=1))
        assert served_from_memory(a, "c1")
        b.append(ev(n=2))  # behind a's back: a's view no longer matches the file
        assert not served_from_memory(a, "c1")
        assert [e.data["n"] for e in a.tail("c1", 5, shared=True)] == [1, 2]
        got = a.get(b.tail("c1", 1)[0].id, shared=True)
        assert got is not None and got.data["n"] == 2
        a.append(ev(n=3))  # a's own append after b's: a new view of just that
        assert served_from_memory(a, "c1")
        assert [e.data["n"] for e in a.tail("c1", 5, shared=True)] == [1, 2, 3]
    finally:
        a.close()
        b.close()


def test_an_outside_edit_that_changes_the_size_is_read_from_the_file(data_dir: Path) -> None:
    with EventStore(data_dir) as store:
        store.append_many([ev(n=i) for i in range(4)])
        path = data_dir / "logs" / "c1.jsonl"
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(lines[:3]))  # someone cut the last event off by hand
        assert not served_from_memory(store, "c1")
        assert [e.data["n"] for e in store.tail("c1", 10, shared=True)] == [0, 1, 2]


def test_get_from_memory_and_after_rotation(data_dir: Path) -> None:
    with EventStore(data_dir, rotate_bytes=2000) as store:
        ids = [store.append(ev(n=i)).id for i in range(30)]  # several rotations
        assert list((data_dir / "archive").glob("c1.*.jsonl"))
        for i, eid in enumerate(ids):
            got = store.get(eid, shared=True)
            assert got is not None and got.data["n"] == i
        assert [e.data["n"] for e in store.tail("c1", 25, shared=True)] == list(range(5, 30))


def test_a_page_cut_by_bytes_comes_from_the_file(data_dir: Path) -> None:
    with EventStore(data_dir) as store:
        store.append_many([ev(n=i) for i in range(10)])
        store.max_read_bytes = 700  # about three events
        assert as_dicts(store.tail("c1", 10, shared=True)) == as_dicts(store.tail("c1", 10))
        assert len(store.tail("c1", 10, shared=True)) < 10


def test_without_shared_the_caller_gets_its_own_events(data_dir: Path) -> None:
    with EventStore(data_dir) as store:
        store.append(ev(n=1))
        mine = store.tail("c1", 1)[0]
        mine.data["n"] = 99  # an embedded caller may do what it likes with what it got
        assert store.tail("c1", 1, shared=True)[0].data["n"] == 1


def test_a_tail_read_from_the_file_is_kept_for_the_next(data_dir: Path) -> None:
    with EventStore(data_dir) as writer:
        writer.append_many([ev(n=i) for i in range(40)])
    with EventStore(data_dir) as store:  # a daemon restarted on a log it did not write
        store.load()
        assert not served_from_memory(store, "c1")
        first = store.tail("c1", 20, shared=True)
        assert served_from_memory(store, "c1")
        assert as_dicts(store.tail("c1", 20, shared=True)) == as_dicts(first) == as_dicts(store.tail("c1", 20))
        assert [e.data["n"] for e in store.tail("c1", 30, shared=True)] == list(range(10, 40))  # more: the file
        path = data_dir / "logs" / "c1.jsonl"
        with open(path, "ab") as f:
            f.write(b"\n")  # a blank line appended by hand: the view no longer answers
        assert not served_from_memory(store, "c1")
        assert [e.data["n"] for e in store.tail("c1", 2, shared=True)] == [38, 39]
        assert not served_from_memory(store, "c1")  # blank lines in the way: no view is made


def test_memory_is_bounded_in_events_bytes_and_conversations(data_dir: Path) -> None:
    with EventStore(data_dir) as store:
        for i in range(3 * KEEP):
            store.append(ev(n=i))
        view = store._writer.conversations["c1"].recent
        assert view is not None and view.count <= 2 * KEEP
        big = {"conversation_id": "big", "type": "a.b", "data": {"pad": "y" * (KEEP_BYTES // 4)}}
        for _ in range(12):
            store.append(big)
        view = store._writer.conversations["big"].recent
        assert view is not None and view.size - view.starts[0] <= 2 * KEEP_BYTES
        assert as_dicts(store.tail("big", 12, shared=True)) == as_dicts(store.tail("big", 12))  # the file
        for i in range(VIEWS + 5):
            store.append(ev(cid=f"x{i}"))
        holding = [cid for cid, conv in store._writer.conversations.items() if conv.recent is not None]
        assert len(holding) == VIEWS and "c1" not in holding  # the least recently used gave theirs up
        assert [e.data["n"] for e in store.tail("c1", 2, shared=True)] == [3 * KEEP - 2, 3 * KEEP - 1]
        assert served_from_memory(store, "c1")  # read again: it holds a view again
