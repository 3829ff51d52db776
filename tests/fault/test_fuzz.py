"""Random input into the real socket, with hypothesis: raw bytes, and JSON-RPC requests with
random methods and params (path tricks included). Every answer is well-formed JSON-RPC, no
request ever meets an internal error, and the daemon serves on, in bounded time."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sidecar_client import Client

from tests.daemon.conftest import Raw

PROBE = b'{"jsonrpc":"2.0","id":"probe","method":"sys.health"}\n'
CODES = {-32700, -32600, -32601, -32602, -32001, -32002, -32003, -32004, -32005, -32006}  # never -32603
FUZZ = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
tricky_ids = st.sampled_from(["../../etc/passwd", "a/b", "", ".", "..", "x" * 300, "c\x00d", "ok-1", "ü", " "])
field_names = st.sampled_from(
    [
        "conversation_id",
        "event_id",
        "limit",
        "cursor",
        "types",
        "type",
        "data",
        "text",
        "grant_id",
        "budget_tokens",
        "task_id",
        "agent_id",
        "visibility",
        "level",
        "caused_by",
        "expected_seq",
        "from_seq",
        "subscription",
        "events",
        "title",
        "owner",
        "parents",
        "depends_on",
        "status",
        "version",
        "ref",
        "timestamp",
        "start",
        "end",
    ]
)
params = st.dictionaries(field_names, json_values | tricky_ids, max_size=6) | json_values


def method_names() -> st.SearchStrategy[str]:
    known = [
        "chat.user_message", "context.build", "controller.heartbeat", "controller.status", "log.append",
        "log.append_many", "log.by_type", "log.causality", "log.conversations", "log.get", "log.query",
        "log.since", "log.subscribe", "log.tail", "log.unsubscribe", "narrator.prompt", "narrator.say",
        "summary.get", "summary.persist", "summary.rolling", "summary.snapshot", "sys.stats", "tasks.create",
        "tasks.get", "tasks.list_active", "tasks.ready", "tasks.update",
    ]  # fmt: skip
    return st.sampled_from(known) | st.text(max_size=20)


requests = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0") | json_values, "method": method_names(), "params": params},
    optional={"id": st.integers(0, 10**6) | st.text(max_size=8)},
)


def exchange(path: str, payload: bytes) -> list[dict]:
    """Send ``payload``, then a probe; every message the daemon sends until the probe's answer."""
    raw = Raw(path)
    try:
        raw.send(payload + b"\n" + PROBE)
        messages = []
        while True:
            msg = raw.recv()  # every line is JSON; the connection stays open until the probe
            messages.append(msg)
            if isinstance(msg, dict) and msg.get("id") == "probe":
                assert msg["result"]["status"] == "ok"
                return messages
    finally:
        raw.close()


def check(message: object) -> None:
    """A JSON-RPC 2.0 response (or a batch of them) or a notification; no internal error."""
    if isinstance(message, list):
        assert message, "an empty batch answer"
        for m in message:
            check(m)
        return
    assert isinstance(message, dict) and message["jsonrpc"] == "2.0"
    if "method" in message:  # a notification we subscribed to by chance
        return
    assert "id" in message and (("result" in message) != ("error" in message)), message
    if "error" in message:
        assert message["error"]["code"] in CODES, message
        assert isinstance(message["error"]["message"], str) and message["error"]["message"]


def test_random_bytes(daemon) -> None:
    @FUZZ
    @given(st.binary(max_size=4096))
    def run(payload: bytes) -> None:
        for message in exchange(daemon.socket_path, payload.replace(b"\n", b" ")):
            check(message)

    run()
    assert_still_whole(daemon)


def test_random_requests_and_batches(daemon) -> None:
    @FUZZ
    @given(requests | st.lists(requests | json_values, min_size=1, max_size=5))
    def run(request: object) -> None:
        for message in exchange(daemon.socket_path, json.dumps(request).encode()):
            check(message)

    run()
    assert_still_whole(daemon)


# --- structure-aware: valid requests, then broken the ways an adversary breaks them ---------

hostile_ids = st.sampled_from(
    ["c1\n", "c1\r", "a/b", "..", "a..b", ".hidden", "a.md", "CON", "x" * 129, "c1\x00", "c\u2215d", "ｃ１", "-a", ""]
)
huge_numbers = st.sampled_from(["123456789012345678901234567890", "1e400", "-1e400", "-0", "1e-400", "1.0", "9" * 400])


def _nest(inner: bytes, depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + inner + b"]" * depth
    return b'{"k":' * depth + inner + b"}" * depth


@st.composite
def hostile_lines(draw: st.DrawFn) -> bytes:
    method = draw(method_names())
    base = {"conversation_id": draw(st.sampled_from(["c1", "c2"]) | hostile_ids), "type": "agent.note"}
    line = json.dumps({"jsonrpc": "2.0", "id": draw(st.integers(0, 99)), "method": method, "params": base}).encode()
    how = draw(st.sampled_from(["deep", "utf8", "surrogate", "number", "batch"]))
    if how == "deep":  # nesting around the limit, and far past it
        depth = draw(st.sampled_from([60, 62, 63, 64, 65, 66, 200, 999, 5000]))
        value = _nest(b"1", depth, draw(st.sampled_from(["array", "object"])))
        return line[:-2] + b',"data":' + value + b"}}"
    if how == "utf8":  # invalid UTF-8 at any offset
        at = draw(st.integers(0, len(line)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"]))
        return line[:at] + bad + line[at:]
    if how == "surrogate":  # lone halves, as JavaScript's slice leaves them, anywhere a string is
        half = draw(st.sampled_from([b"\\ud83d", b"\\udc00", b"\\ud800\\ud800", b"\\\\ud83d"]))
        return line[:-2] + b',"data":{"t":"a' + half + b'","' + half + b'":1}}}'
    if how == "number":  # numbers no machine type holds, where ints and ids go
        n = draw(huge_numbers).encode()
        where = draw(st.sampled_from(["id", "limit", "turn", "expected_seq"]))
        if where == "id":
            return b'{"jsonrpc":"2.0","id":' + n + b',"method":"sys.health"}'
        return line[:-2] + b',"' + where.encode() + b'":' + n + b"}}"
    size = draw(st.sampled_from([1, 2, 999, 1000, 1001]))  # giant batches, at the cap and past it
    return b"[" + b",".join([line] * size) + b"]"


def test_structured_hostile_messages(daemon) -> None:
    @settings(FUZZ, max_examples=300)
    @given(hostile_lines())
    def run(line: bytes) -> None:
        for message in exchange(daemon.socket_path, line):
            check(message)

    run()
    assert_still_whole(daemon)


def assert_still_whole(daemon) -> None:
    with Client(daemon.socket_path) as c:
        assert c.call("sys.health")["status"] == "ok"
        for conv in c.call("log.conversations")["conversations"]:  # whatever the fuzz appended is intact
            # Appends of a batch may still be landing (the probe can be answered first), so
            # the log may have grown since: gapless from 1, and at least what was listed.
            seqs, cursor = [], None
            while True:
                page = c.call("log.query", {"conversation_id": conv["conversation_id"], "cursor": cursor})
                seqs += [e["seq"] for e in page["events"]]
                if (cursor := page["next_cursor"]) is None:
                    break
            assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= conv["last_seq"]
    assert "Traceback" not in daemon.stderr()
    assert daemon.stop() == 0
