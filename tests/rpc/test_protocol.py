"""The sans-IO JSON-RPC layer: the specification's own examples, framing, and a fuzzer."""

from __future__ import annotations

import json

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import ConflictError
from sidecar.rpc.dispatch import NoParams, Registry
from sidecar.rpc.protocol import Framer, FrameTooLarge, parse_message


class Subtract(msgspec.Struct, forbid_unknown_fields=True):
    minuend: int
    subtrahend: int


registry: Registry[None] = Registry()


@registry.method("subtract", Subtract, int, "a - b")
async def subtract(p: Subtract, ctx: None) -> int:
    return p.minuend - p.subtrahend


@registry.method("update", NoParams, None, "a notification target")
async def update(p: NoParams, ctx: None) -> None:
    return None


@registry.method("conflict", NoParams, None, "always conflicts")
async def conflict(p: NoParams, ctx: None) -> None:
    raise ConflictError("nope", {"why": "test"})


@registry.method("crash", NoParams, None, "a bug")
async def crash(p: NoParams, ctx: None) -> None:
    raise RuntimeError("boom")


def roundtrip(line: str | bytes):
    raw = line.encode() if isinstance(line, str) else line
    out = anyio.run(registry.handle, parse_message(raw), None)
    return None if out is None else json.loads(out)


def test_named_params() -> None:
    assert roundtrip(
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}'
    ) == {
        "jsonrpc": "2.0",
        "result": 19,
        "id": 3,
    }


def test_notification_gets_no_reply() -> None:
    assert roundtrip('{"jsonrpc": "2.0", "method": "update"}') is None
    assert roundtrip('{"jsonrpc": "2.0", "method": "missing"}') is None  # even an unknown one


def test_method_not_found() -> None:
    assert roundtrip('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}')["error"]["code"] == -32601


def test_parse_error() -> None:
    reply = roundtrip('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert reply["error"]["code"] == -32700 and reply["id"] is None


def test_invalid_request() -> None:
    assert roundtrip('{"jsonrpc": "2.0", "method": 1, "params": "bar"}')["error"]["code"] == -32600
    assert roundtrip('{"jsonrpc": "1.0", "method": "update", "id": 7}')["error"]["code"] == -32600
    assert roundtrip('{"jsonrpc": "2.0", "method": "update", "id": {"a": 1}}')["error"]["code"] == -32600


def test_batch_examples() -> None:
    assert roundtrip("[]")["error"]["code"] == -32600
    one = roundtrip("[1]")
    assert isinstance(one, list) and one[0]["error"]["code"] == -32600 and one[0]["id"] is None
    three = roundtrip("[1,2,3]")
    assert [r["error"]["code"] for r in three] == [-32600] * 3
    mixed = roundtrip(
        "["
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": "1"},'
        '{"jsonrpc": "2.0", "method": "update"},'
        '{"foo": "boo"},'
        '{"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"}'
        "]"
    )
    assert [r.get("result", r.get("error", {}).get("code")) for r in mixed] == [19, -32600, -32601]
    assert roundtrip('[{"jsonrpc": "2.0", "method": "update"}, {"jsonrpc": "2.0", "method": "update"}]') is None


def test_invalid_params_and_server_errors() -> None:
    bad = roundtrip('{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": "x", "subtrahend": 1}, "id": 1}')
    assert bad["error"]["code"] == -32602 and "minuend" in bad["error"]["message"]
    positional = roundtrip('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 2}')
    assert positional["error"]["code"] == -32602
    c = roundtrip('{"jsonrpc": "2.0", "method": "conflict", "id": 3}')
    assert c["error"] == {"code": -32001, "message": "nope", "data": {"why": "test"}}
    assert roundtrip('{"jsonrpc": "2.0", "method": "crash", "id": 4}')["error"]["code"] == -32603


def test_framer_splits_lines_and_keeps_partials() -> None:
    f = Framer(100)
    assert f.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert f.feed(b":2}\n\n") == [b'{"b":2}']
    assert f.pending == 0


def test_framer_refuses_oversize_even_without_newline() -> None:
    f = Framer(10)
    with pytest.raises(FrameTooLarge):
        f.feed(b"x" * 11)
    with pytest.raises(FrameTooLarge):
        Framer(10).feed(b"y" * 20 + b"\n")


def test_openrpc_document_covers_every_method() -> None:
    doc = registry.openrpc("test", "0")
    assert doc["openrpc"].startswith("1.")
    names = [m["name"] for m in doc["methods"]]
    assert names == sorted(registry.methods)
    sub = next(m for m in doc["methods"] if m["name"] == "subtract")
    assert {p["name"] for p in sub["params"]} == {"minuend", "subtrahend"}
    assert all(p["required"] for p in sub["params"])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
requestish = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
        "method": st.sampled_from(["subtract", "update", "conflict", "crash", "nope"]) | json_values,
        "params": json_values | st.fixed_dictionaries({"minuend": json_values, "subtrahend": json_values}),
        "id": json_values,
    },
)


def check_reply(reply: object) -> None:
    assert isinstance(reply, dict) and reply["jsonrpc"] == "2.0" and "id" in reply
    assert ("result" in reply) != ("error" in reply)
    if "error" in reply:
        assert isinstance(reply["error"]["code"], int) and isinstance(reply["error"]["message"], str)


@settings(max_examples=300, deadline=None)
@given(st.one_of(requestish, st.lists(requestish, max_size=5), json_values).map(json.dumps) | st.binary(max_size=64))
def test_fuzz_never_crashes_and_always_answers_validly(line: str | bytes) -> None:
    raw = line if isinstance(line, bytes) else line.encode()
    out = anyio.run(registry.handle, parse_message(raw), None)
    if out is None:
        return
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    reply = json.loads(out)
    for r in reply if isinstance(reply, list) else [reply]:
        check_reply(r)
