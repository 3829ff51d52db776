"""Plain words for schemas, -32602 explained, -32601 suggestions, and the registry's document:
the sans-IO parts, in-process (the wire is tested against a real daemon in tests/daemon)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec import Meta

from sidecar import errors
from sidecar.api import registry as daemon_registry
from sidecar.notifications import NOTIFICATIONS
from sidecar.rpc.dispatch import ERROR_CODES, ERRORS, NoParams, Registry
from sidecar.rpc.explain import close_names, describe, explain, params_schema, with_string_enums
from sidecar.rpc.protocol import parse_message


def words(kind: Any) -> str:
    """What :func:`describe` says of a Python type, through its JSON Schema."""
    (schema,), components = msgspec.json.schema_components([kind], ref_template="#/components/schemas/{name}")
    return describe(with_string_enums(schema), with_string_enums(components))


class Item(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(pattern=r"^[a-z]+\.[a-z]+$")]
    tag: Annotated[str, Meta(pattern="^[a-z]+$", description="lower-case letters")] = "x"


class Order(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    order_id: Annotated[int, Meta(ge=1, le=3600)]
    mode: Literal["fast", "slow"] = "fast"
    items: Annotated[list[Item], Meta(min_length=1)] = []
    note: str | None = None


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (Annotated[int, Meta(ge=1, le=3600)], "an integer from 1 to 3600"),
        (Annotated[int, Meta(ge=0)], "an integer of at least 0"),
        (Annotated[float, Meta(gt=0)], "a number greater than 0"),
        (Annotated[int, Meta(le=5)], "an integer of at most 5"),
        (int, "an integer"),
        (bool, "true or false"),
        (Literal["a", "b", "c"], 'one of "a", "b" or "c"'),
        (Literal["a", "b"] | None, 'one of "a" or "b", or null'),
        (Annotated[str, Meta(min_length=1, max_length=256)], "a string of 1 to 256 characters"),
        (Annotated[str, Meta(min_length=1)], "a non-empty string"),
        (Annotated[str, Meta(pattern="^x$", description="an x")], "an x"),
        (Annotated[str, Meta(pattern="^x$", max_length=9, description="an x")], "an x (at most 9 characters)"),
        (Annotated[str, Meta(pattern=r"^\d+$")], r"a string matching ^\d+$"),
        (Annotated[list[int], Meta(min_length=1, max_length=3)], "a list of 1 to 3 items, each an integer"),
        (dict[str, Any], "an object"),
        (dict[str, int], "an object whose values are each an integer"),
        (Item, "an object (Item)"),
        (Any, "any JSON value"),
    ],
)
def test_schemas_in_plain_words(kind: Any, expected: str) -> None:
    assert words(kind) == expected


def test_string_enums_get_their_type_and_data_is_left_alone() -> None:
    schema = {"enum": ["a", "b"], "default": {"enum": ["kept"]}, "properties": {"enum": {"enum": [1, 2]}}}
    typed = with_string_enums(schema)
    assert typed["type"] == "string" and typed["enum"] == ["a", "b"]
    assert typed["default"] == {"enum": ["kept"]}  # a default is a value, not a schema
    assert "type" not in typed["properties"]["enum"]  # numbers: not a string enum


def refusal(params: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    try:
        msgspec.convert(params, Order)
    except msgspec.ValidationError as exc:
        return explain(Order, msgspec.Raw(json.dumps(params).encode()), str(exc))
    raise AssertionError("the params were accepted")


def test_a_bad_value_names_path_expected_and_got() -> None:
    message, data = refusal({"order_id": 0})
    assert data == {"path": "$.order_id", "field": "order_id", "expected": "an integer from 1 to 3600", "got": 0}
    assert message == "Invalid params: $.order_id must be an integer from 1 to 3600; got 0"


def test_a_choice_lists_what_is_allowed() -> None:
    message, data = refusal({"order_id": 1, "mode": "medium"})
    assert data is not None and data["allowed"] == ["fast", "slow"] and data["got"] == "medium"
    assert '"fast" or "slow"' in message


def test_nested_paths_and_patterns_without_doubled_backslashes() -> None:
    message, data = refusal({"order_id": 1, "items": [{"name": "a.b"}, {"name": "a.b"}, {"name": "A"}]})
    assert data is not None and data["path"] == "$.items[2].name" and data["field"] == "items[2].name"
    assert data["expected"] == r"a string matching ^[a-z]+\.[a-z]+$" and data["got"] == "A"
    assert "\\\\" not in message and r"[a-z]+\.[a-z]+" in message
    _, described = refusal({"order_id": 1, "items": [{"name": "a.b", "tag": "UP"}]})
    assert described is not None and described["expected"] == "lower-case letters"  # the plain words win


def test_a_missing_field_has_no_got_and_an_unknown_one_gets_a_suggestion() -> None:
    message, data = refusal({"order_id": 1, "items": [{"tag": "x"}]})
    assert data is not None and data["path"] == "$.items[0].name" and "got" not in data
    assert message.startswith("Invalid params: $.items[0].name is required")
    message, data = refusal({"id": 5})
    assert data is not None and data["path"] == "$.id" and data["got"] == 5
    assert data["allowed"] == ["order_id", "mode", "items", "note"]
    assert "did you mean order_id?" in message


def test_what_came_is_shortened() -> None:
    _, data = refusal({"order_id": "x" * 5000})
    assert data is not None and data["got"] == "x" * 200 + "..."
    _, data = refusal({"order_id": list(range(1000))})
    assert data is not None and isinstance(data["got"], str) and len(data["got"]) == 203


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("tasks.list", ["tasks.list_active"]),
        ("log.gett", ["log.get"]),
        ("task.get", ["tasks.get"]),
        ("get", ["log.get", "summary.get", "tasks.get"]),
        ("narrator.speak", ["narrator.say"]),
        ("foobar", []),
        ("no.such", []),
    ],
)
def test_unknown_method_names_get_the_close_ones(given: str, meant: list[str]) -> None:
    assert daemon_registry.suggestions(given) == meant


def test_close_names_match_on_words_too() -> None:
    assert close_names("id", ["event_id", "limit"]) == ["event_id"]
    assert close_names("conversation", ["conversation_id", "cursor"]) == ["conversation_id"]


def test_method_not_found_suggests_in_message_and_data() -> None:
    out = anyio.run(daemon_registry.handle, parse_message(b'{"jsonrpc":"2.0","id":1,"method":"tasks.list"}'), None)
    assert out is not None
    error = json.loads(out)["error"]
    assert error["code"] == -32601 and error["data"] == {"suggestions": ["tasks.list_active"]}
    assert error["message"] == "Method not found: 'tasks.list'; did you mean tasks.list_active?"


def test_registrations_refuse_unknown_codes_and_bad_examples() -> None:
    reg: Registry[None] = Registry()
    with pytest.raises(ValueError, match="-32602"):
        reg.method("x", NoParams, None, "standard codes are not listed", errors={-32602: "never"})
    with pytest.raises(ValueError, match="-32042"):
        reg.method("x", NoParams, None, "not in the table", errors={-32042: "never"})
    with pytest.raises(msgspec.ValidationError):
        reg.method("x", Order, None, "an example that does not validate", example={"order_id": 0})


def test_every_sidecar_error_code_is_in_the_table() -> None:
    codes = {
        cls.code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.SidecarError)
    }
    assert codes <= set(ERRORS)
    assert [e.code for e in ERROR_CODES] == [-32700, -32600, -32601, -32602, -32603] + list(range(-32001, -32007, -1))


def _nodes(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [n for item in node for n in _nodes(item)]
    if isinstance(node, dict):
        return [node, *(n for k, v in node.items() if k not in ("default", "examples") for n in _nodes(v))]
    return []


def test_the_daemon_document_describes_everything() -> None:
    doc = daemon_registry.openrpc("sidecar", "0")
    for method in doc["methods"]:
        assert isinstance(method["errors"], list), method["name"]
        for error in method["errors"]:
            assert -32099 <= error["code"] <= -32000 and error["message"].startswith(ERRORS[error["code"]].name)
        (example,) = method["examples"]
        params = {p["name"]: p["value"] for p in example["params"]}
        msgspec.convert(params, daemon_registry.methods[method["name"]].params)
    by_name = {m["name"]: m for m in doc["methods"]}
    assert [e["code"] for e in by_name["log.get"]["errors"]] == [-32002]
    assert {e["code"] for e in by_name["log.append"]["errors"]} == {-32001, -32003, -32006}
    assert {e["code"] for e in by_name["narrator.say"]["errors"]} >= {-32004}
    assert {e["code"] for e in by_name["tasks.update"]["errors"]} >= {-32001, -32002}
    assert {e["code"] for e in by_name["log.subscribe"]["errors"]} == {-32001, -32005}
    notes = {n["name"]: n for n in doc["x-notifications"]}
    assert set(notes) == {"log.event", "log.overflow", "narrator.delta", "sys.shutdown"} == set(NOTIFICATIONS)
    overflow = notes["log.overflow"]["params"]
    assert overflow["type"] == "object" and set(overflow["required"]) == {"subscription", "resume_from", "reason"}
    assert overflow["properties"]["reason"] == {"type": "string", "enum": ["error", "overflow"]}
    assert set(notes["narrator.delta"]["params"]["properties"]) == {
        "subscription",
        "conversation_id",
        "grant_id",
        "index",
        "delta",
    }
    for node in _nodes(doc):
        if isinstance(node.get("enum"), list):
            assert node.get("type") == "string", node  # never a bare {"enum": [...]}
        if isinstance(node.get("pattern"), str):
            assert node.get("description"), f"a pattern without plain words: {node['pattern']}"


def test_params_schemas_are_made_once() -> None:
    assert params_schema(Order) is params_schema(Order)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(["conversation_id", "type", "events", "level", "caused_by", "data", "limit", "x"])


probe: Registry[None] = Registry()  # the daemon's params, with handlers that accept anything valid
for _name, _method in daemon_registry.methods.items():
    probe.method(_name, _method.params, None, _method.summary)(lambda p, ctx: anyio.sleep(0))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["log.append", "log.append_many", "log.query", "tasks.update", "log.by_type"]),
    st.dictionaries(field_names, json_values | st.lists(st.dictionaries(field_names, json_values), max_size=3)),
)
def test_every_refusal_is_explained_without_fail(method: str, params: dict[str, Any]) -> None:
    line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    out = anyio.run(probe.handle, parse_message(line), None)
    assert out is not None
    error = json.loads(out).get("error")
    if error is None:
        return  # valid params
    assert error["code"] == -32602
    data = error["data"]
    assert data["path"].startswith("$") and isinstance(data["expected"], str) and data["expected"]
    said = error["message"].split("; got ")[0]  # what came is repeated as JSON, escapes and all
    assert said.startswith("Invalid params: $") and "\\\\" not in said
