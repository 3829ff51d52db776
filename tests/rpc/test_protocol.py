"""The sans-IO JSON-RPC layer: the specification's own examples, framing, and a fuzzer."""

from __future__ import annotations

import json

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import ConflictError
from sidecar.jsondepth import nesting_exceeds
from sidecar.rpc.dispatch import NoParams, Registry
from sidecar.rpc.protocol import (
    Framer,
    FrameTooLarge,
    Invalid,
    Limits,
    mend_lone_surrogates,
    parse_message,
)


class Subtract(msgspec.Struct, forbid_unknown_fields=True):
    minuend: int
    subtrahend: int


registry: Registry[None] = Registry()


@registry.method("subtract", Subtract, int, "a - b")
async def subtract(p: Subtract, ctx: None) -> int:
    return p.minuend - p.subtrahend


class Pad(msgspec.Struct, forbid_unknown_fields=True):
    n: int


class Greet(msgspec.Struct, forbid_unknown_fields=True):
    name: str


@registry.method("greet", Greet, str, "hello")
async def greet(p: Greet, ctx: None) -> str:
    return f"hello {p.name}"


@registry.method("pad", Pad, str, "n bytes of answer")
async def pad(p: Pad, ctx: None) -> str:
    return "x" * p.n


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


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(1, 8))
def test_nesting_is_measured_exactly_and_strings_do_not_count(value: object, limit: int) -> None:
    line = json.dumps(value).encode()
    assert nesting_exceeds(line, limit) is (_depth(value) > limit)
    quoted = json.dumps({"s": json.dumps(value)}).encode()  # the same brackets, inside a string
    assert nesting_exceeds(quoted, 1) is False


def test_unbalanced_brackets_are_not_json() -> None:
    assert nesting_exceeds(b"[" * 100, 64) is None
    assert nesting_exceeds(b'{"a":"\\\\"}' + b"]" * 100, 64) is None
    assert parse_message(b"[" * 1000).items[0].code == -32700  # type: ignore[union-attr]


def test_deep_lines_are_refused_before_any_decoder_recurses() -> None:
    deep = b'{"jsonrpc":"2.0","id":1,"method":"subtract","params":{"a":' + b"[" * 3000 + b"]" * 3000 + b"}}"
    item = parse_message(deep).items[0]
    assert isinstance(item, Invalid) and item.code == -32600 and "max_depth" in item.message
    ok = parse_message(deep, Limits(max_depth=3002))  # were it allowed, msgspec itself would recurse
    assert isinstance(ok.items[0], Invalid)  # ... and that is caught too, never raised


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20))
def test_lone_surrogates_mend_and_everything_else_is_kept(text: str) -> None:
    escaped = json.dumps(text)  # ascii escapes: every non-BMP character is a surrogate pair
    assert json.loads(mend_lone_surrogates(escaped.encode())) == text
    lone = escaped[:-1] + '\\ud83d"'
    assert json.loads(mend_lone_surrogates(lone.encode())) == text + "\ufffd"
    literal = escaped[:-1] + '\\\\ud83d"'  # an escaped backslash, then letters: not an escape
    assert json.loads(mend_lone_surrogates(literal.encode())) == text + "\\ud83d"


def test_ids_are_echoed_byte_for_byte() -> None:
    for rid in ["123456789012345678901234567890", "1e400", "1.0", "-0", '"a"', "null"]:
        out = anyio.run(
            registry.handle, parse_message(f'{{"jsonrpc":"2.0","id":{rid},"method":"update"}}'.encode()), None
        )
        assert out is not None and out.startswith(f'{{"jsonrpc":"2.0","id":{rid},'.encode())
    bad = roundtrip('{"jsonrpc":"2.0","id":true,"method":"update"}')
    assert bad["error"]["code"] == -32600 and bad["id"] is None


def test_batch_members_and_reply_bytes_are_capped() -> None:
    member = '{{"jsonrpc":"2.0","id":{0},"method":"pad","params":{{"n":300}}}}'
    members = ",".join(member.format(i) for i in range(11))
    too_many = parse_message(f"[{members}]".encode(), Limits(max_batch=10))
    assert not too_many.batch and "max_batch" in too_many.items[0].message  # type: ignore[union-attr]
    # 11 answers of ~340 bytes: a 2,000-byte line holds some; the rest are refused, each by id.
    out = anyio.run(registry.handle, parse_message(f"[{members}]".encode()), None, 2000)
    assert out is not None and len(out) <= 2000
    replies = json.loads(out)
    assert sorted(r["id"] for r in replies) == list(range(11))
    kept = [r for r in replies if "result" in r]
    assert 0 < len(kept) < 11 and all(r["error"]["code"] == -32005 for r in replies if "error" in r)
    # When not even the refusals fit, the batch gets one error.
    out = anyio.run(registry.handle, parse_message(f"[{members}]".encode()), None, 300)
    assert out is not None and json.loads(out)["error"]["code"] == -32005
    # A single answer too large is refused by its id.
    single = anyio.run(registry.handle, parse_message(member.format(7).encode()), None, 300)
    assert single is not None and json.loads(single)["id"] == 7 and json.loads(single)["error"]["code"] == -32005


def test_invalid_params_name_the_field() -> None:
    bad = roundtrip('{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": "x", "subtrahend": 1}, "id": 1}')
    assert bad["error"]["data"] == {"field": "minuend", "path": "$.minuend", "expected": "an integer", "got": "x"}
    utf8 = roundtrip(b'{"jsonrpc": "2.0", "method": "greet", "params": {"name": "\xff"}, "id": 2}')
    assert utf8["error"]["code"] == -32602 and "UTF-8" in utf8["error"]["message"]
