"""The generated TypedDicts say what the daemon really answers, and the generator copes with
any schema: recursion, odd names, clashes; the same document always gives the same module."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import sidecar_client
from sidecar_client import Client, methods
from sidecar_client.generate import render

ROOT = Path(__file__).resolve().parents[2]
UUID = "0190a1b2-c3d4-7e5f-8a6b-9c0d1e2f3a4b"


def problems(value: Any, tp: Any, path: str = "$") -> list[str]:
    """Where ``value`` (a decoded reply) differs from the type ``tp``: a key missing, a key
    the type does not know, a value of another kind. Empty when it conforms."""
    if tp is Any:
        return []
    if is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not an object"]
        hints = get_type_hints(tp)
        out = [f"{path}: no {key!r}" for key in sorted(tp.__required_keys__ - value.keys())]
        out += [f"{path}: {key!r} is not in {tp.__name__}" for key in sorted(value.keys() - hints.keys())]
        for key in sorted(value.keys() & hints.keys()):
            out += problems(value[key], hints[key], f"{path}.{key}")
        return out
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        each = [problems(value, arg, path) for arg in args]
        return [] if any(not p for p in each) else [f"{path}: {value!r:.60} is none of {tp}"]
    if origin is Literal:
        ok = any(value == arg and type(value) is type(arg) for arg in args)
        return [] if ok else [f"{path}: {value!r} is not one of {args}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__}, not a list"]
        return [p for i, item in enumerate(value) for p in problems(item, args[0], f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not an object"]
        return [p for k, v in value.items() for p in problems(v, args[1], f"{path}.{k}")]
    if tp is type(None):
        return [] if value is None else [f"{path}: {value!r:.60} is not null"]
    if tp is float:
        return [] if isinstance(value, int | float) and not isinstance(value, bool) else [f"{path}: not a number"]
    if tp is int:
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{path}: {value!r:.60} not an int"]
    if tp in (str, bool):
        return [] if isinstance(value, tp) else [f"{path}: {value!r:.60} is not a {tp.__name__}"]
    raise AssertionError(f"{path}: the test does not know the type {tp}")


def returns(method: str) -> Any:
    """The return type of the sync wrapper of ``method``."""
    return get_type_hints(getattr(methods.SyncMethods, method.replace(".", "_")))["return"]


def test_the_checker_finds_a_drift() -> None:
    """problems() is what the next test relies on: it must see a missing, an extra and a wrong key."""
    good = {"id": "e", "seq": 1, "timestamp": "t", "clock": {"a": 1}}
    assert problems(good, methods.AppendResult) == []
    assert problems({**good, "duplicate": True}, methods.AppendResult) == []
    assert problems({"id": "e", "seq": 1, "clock": {}}, methods.AppendResult) == ["$: no 'timestamp'"]
    assert problems({**good, "extra": 1}, methods.AppendResult) == ["$: 'extra' is not in AppendResult"]
    assert problems({**good, "seq": "1"}, methods.AppendResult) == ["$.seq: '1' not an int"]
    assert problems({"events": [{"seq": True}], "next_cursor": None}, methods.Page)  # a bool is no int
    assert problems({"gate": "ajar"}, methods.ControllerStatus)


def test_result_types_are_the_daemons_replies(daemon) -> None:
    """Every reply here conforms to its wrapper's return type, nested records included: no key
    missing, none the type does not know, none of another kind."""
    replies: dict[str, Any] = {}
    with Client(daemon.socket_path) as c:
        ack = c.log_append(conversation_id="c1", type="agent.progress", id=UUID, agent_id="a", data={"pct": 1})
        replies["log.append"] = ack
        again = c.log_append(conversation_id="c1", type="agent.progress", id=UUID, agent_id="a", data={"pct": 1})
        assert again.get("duplicate") is True  # the one key AppendResult does not require
        replies["log.append (a repeat)"] = again
        replies["chat.user_message"] = c.chat_user_message(conversation_id="c1", text="how is it going?")
        replies["log.append_many"] = c.log_append_many(events=[{"conversation_id": "c1", "type": "x.y", "turn": 2}])
        replies["log.get"] = c.log_get(event_id=ack["id"])
        replies["log.query"] = c.log_query(conversation_id="c1")
        replies["log.tail"] = c.log_tail(conversation_id="c1")
        replies["log.by_type"] = c.log_by_type(types=["agent.progress"])
        replies["log.since"] = c.log_since(timestamp="2000-01-01T00:00:00Z")
        replies["log.causality"] = c.log_causality(event_id=ack["id"])
        replies["log.conversations"] = c.log_conversations()
        replies["tasks.create"] = c.tasks_create(type="build", id="t1", owner="me")
        replies["tasks.update"] = c.tasks_update(id="t1", status="running")
        replies["tasks.get"] = c.tasks_get(id="t1")
        replies["tasks.list_active"] = c.tasks_list_active()
        replies["tasks.ready"] = c.tasks_ready()
        replies["controller.status"] = c.controller_status(conversation_id="c1")
        replies["controller.heartbeat"] = c.controller_heartbeat(conversation_id="c1", agent_id="a")
        replies["context.build"] = c.context_build(conversation_id="c1", budget_tokens=500)
        replies["narrator.prompt"] = c.narrator_prompt(conversation_id="c1", budget_tokens=500)
        replies["summary.rolling"] = c.summary_rolling(conversation_id="c1")
        persisted = c.summary_persist(conversation_id="c1")
        replies["summary.persist"] = persisted
        replies["summary.get"] = c.summary_get(conversation_id="c1")
        replies["summary.snapshot"] = c.summary_snapshot(conversation_id="c1", summary_ref=persisted["summary_ref"])
        replies["sys.health"] = c.sys_health()
        replies["sys.stats"] = c.sys_stats()
        sub = c.log_subscribe(conversation_id="c1")
        replies["log.subscribe"] = sub
        replies["log.unsubscribe"] = c.log_unsubscribe(subscription=sub["subscription"])
        events = c.subscribe({"conversation_id": "c1", "from_seq": 1})
        first = next(events)
        events.close()
    found = {name: problems(reply, returns(name.split(" ")[0])) for name, reply in replies.items()}
    assert {name: p for name, p in found.items() if p} == {}
    assert problems(first, methods.Event) == []  # what a subscription yields
    assert problems({"subscription": sub["subscription"], "event": first}, methods.LogEventParams) == []


def test_result_keys_are_exactly_the_replies_for_some_methods(daemon) -> None:
    """For these the daemon always sends every key it knows: the TypedDict's keys are exactly
    the reply's (log.append's ``duplicate`` comes only with a repeat)."""
    with Client(daemon.socket_path) as c:
        ack = c.log_append(conversation_id="k1", type="a.b")
        task = c.tasks_create(type="t")
        health = c.sys_health()
    assert set(ack) == methods.AppendResult.__required_keys__
    assert set(ack) | {"duplicate"} == set(get_type_hints(methods.AppendResult))
    assert set(task) == set(get_type_hints(methods.Task))
    assert set(health) == set(get_type_hints(methods.Health)) == methods.Health.__required_keys__


def test_every_wrapper_but_discover_returns_a_named_record() -> None:
    """A wrapper returns its record's TypedDict (or a list of them), not Any; a $ref parameter
    takes the record's type; the records are exported, and the common ones re-exported."""
    for name in dir(methods.SyncMethods):
        if name.startswith("_") or name == "call":
            continue
        sync = get_type_hints(getattr(methods.SyncMethods, name))["return"]
        aio = get_type_hints(getattr(methods.AsyncMethods, name))["return"]
        assert sync == aio, name
        if name == "rpc_discover":
            assert sync == dict[str, Any]
            continue
        record = get_args(sync)[0] if get_origin(sync) is list else sync
        if get_origin(record) in (Union, types.UnionType):  # a record or null (playbooks.match)
            record, none = get_args(record)
            assert none is type(None), (name, sync)
        assert is_typeddict(record), (name, sync)
    assert get_type_hints(methods.SyncMethods.log_append_many)["events"] == list[methods.NewEvent]
    for name in methods.__all__:
        assert hasattr(methods, name)
    for name in ["AppendResult", "Event", "Task", "Page", "Summary", "Context", "ControllerStatus"]:
        assert getattr(sidecar_client, name) is getattr(methods, name)
        assert name in sidecar_client.__all__
    assert methods.Event.__optional_keys__ == {"agent_id", "task_id", "turn", "clock"}  # NotRequired, at run time


# --- the generator on documents the daemon does not (yet) serve ------------------------------

ODD_DOC: dict[str, Any] = {
    "openrpc": "1.3.2",
    "info": {"title": "odd", "version": "0"},
    "components": {
        "schemas": {
            "Node": {  # a record that contains its own kind
                "description": 'A tree node; its """label""" may hold \\ and "quotes"',
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
                    "parent": {"anyOf": [{"$ref": "#/components/schemas/Node"}, {"type": "null"}]},
                    "peer": {"$ref": "#/components/schemas/Zed"},
                },
                "required": ["label", "children"],
            },
            "Zed": {"type": "object", "properties": {"back": {"$ref": "#/components/schemas/Node"}}},
            "Keywords": {  # keys that cannot be class attributes
                "type": "object",
                "properties": {"from": {"type": "integer"}, "a-b": {"type": "string"}, "__x": {"type": "boolean"}},
                "required": ["from"],
            },
            "Any": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
            "list": {"type": "string", "enum": ["a", "b"]},
            "Foo-Bar": {"type": "object", "properties": {}},
            "Foo_Bar": {"type": "object", "properties": {"n": {"type": "number", "nullable": True}}},
            "Loop1": {"anyOf": [{"$ref": "#/components/schemas/Loop2"}, {"type": "null"}]},
            "Loop2": {"$ref": "#/components/schemas/Loop1"},
            "Json": {  # a recursive alias through containers: fine
                "anyOf": [
                    {"type": "array", "items": {"$ref": "#/components/schemas/Json"}},
                    {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Json"}},
                    {"type": ["string", "integer", "boolean", "null"]},
                ]
            },
            "Flags": {
                "type": "object",
                "properties": {
                    "on": {"const": True},
                    "mode": {"enum": ["x", 1, None]},
                    "weights": {"type": "object", "additionalProperties": {"type": "number"}},
                    "ratio": {"enum": [0.5, 1.5]},
                },
                "required": ["on", "mode"],
            },
        }
    },
    "x-notifications": [
        {
            "name": "thing.changed",
            "params": {"type": "object", "properties": {"node": {"$ref": "#/components/schemas/Node"}}},
        }
    ],
    "methods": [
        {
            "name": "tree.get",
            "summary": "A tree",
            "params": [
                {"name": "from", "required": True, "schema": {"type": "integer"}},
                {"name": "self", "required": False, "schema": {"type": "string"}},
                {"name": "root", "required": False, "schema": {"$ref": "#/components/schemas/Node"}},
                {"name": "sep", "required": False, "schema": {"anyOf": [{"enum": ['a|"b]']}, {"type": "null"}]}},
            ],
            "result": {"name": "r", "schema": {"$ref": "#/components/schemas/Node"}},
        },
        {
            "name": "call",
            "params": [],
            "result": {"name": "r", "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Foo-Bar"}}},
        },
        {"name": "loose", "params": [], "result": {"name": "r", "schema": {"$ref": "#/nowhere/X"}}},
    ],
}


def load(text: str, path: Path) -> types.ModuleType:
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # get_type_hints resolves the quoted names in it
    spec.loader.exec_module(module)
    return module


def test_the_generator_copes_with_recursion_clashes_and_odd_names(tmp_path: Path) -> None:
    mod = load(render(ODD_DOC), tmp_path / "odd_methods.py")
    try:
        node = get_type_hints(mod.Node)
        assert node["children"] == list[mod.Node] and node["parent"] == mod.Node | None
        assert node["peer"] is mod.Zed and get_type_hints(mod.Zed)["back"] is mod.Node
        assert mod.Node.__required_keys__ == {"label", "children"}
        assert mod.Keywords.__required_keys__ == {"from"} and mod.Keywords.__optional_keys__ == {"a-b", "__x"}
        assert mod.Any is typing.Any and mod.AnySchema.__required_keys__ == {"x"}  # no clash with typing.Any
        assert mod.listSchema == Literal["a", "b"]
        assert is_typeddict(mod.Foo_Bar) and is_typeddict(mod.Foo_Bar2)  # "Foo-Bar" and "Foo_Bar"
        assert get_type_hints(mod.Foo_Bar2)["n"] == float | None
        assert mod.Loop1 is typing.Any and mod.Loop2 is typing.Any  # no alias that is its own member
        assert mod.Json == "list[Json] | dict[str, Json] | str | int | bool | None"  # recursive, in a container
        flags = get_type_hints(mod.Flags)
        assert flags["on"] == Literal[True] and flags["mode"] == Literal["x", 1] | None
        assert flags["weights"] == dict[str, float] and flags["ratio"] is float
        assert get_type_hints(mod.ThingChangedParams)["node"] is mod.Node
        assert "thing.changed" in (mod.ThingChangedParams.__doc__ or "")
        assert '"""label"""' in (mod.Node.__doc__ or "")
        tree = get_type_hints(mod.SyncMethods.tree_get)
        assert tree["from_"] is int and tree["self_"] == str | None and tree["return"] is mod.Node
        assert tree["sep"] == Literal['a|"b]'] | None
        assert get_type_hints(mod.SyncMethods.call_)["return"] == list[mod.Foo_Bar]  # not Client.call
        assert get_type_hints(mod.SyncMethods.loose)["return"] is Any

        sent: list[tuple[str, dict[str, Any]]] = []
        client = mod.SyncMethods()
        client.call = lambda method, params: sent.append((method, params)) or {"label": "x", "children": []}
        assert client.tree_get(from_=1, self_="s") == {"label": "x", "children": []}
        assert sent == [("tree.get", {"from": 1, "self": "s"})]
    finally:
        sys.modules.pop("odd_methods", None)

    # ...and a type checker takes it, strictly.
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
        + ["--cache-dir", str(tmp_path / "cache"), str(tmp_path / "odd_methods.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_same_document_in_any_order_gives_the_same_module(daemon) -> None:
    with Client(daemon.socket_path) as c:
        doc = c.rpc_discover()
    first = render(doc)
    rng = random.Random(14)
    for _ in range(3):
        schemas = list(doc["components"]["schemas"].items())
        rng.shuffle(schemas)
        shuffled = {
            **doc,
            "methods": rng.sample(doc["methods"], len(doc["methods"])),
            "x-notifications": rng.sample(doc["x-notifications"], len(doc["x-notifications"])),
            "components": {**doc["components"], "schemas": dict(schemas)},
        }
        assert render(shuffled) == first
    assert (ROOT / "clients" / "python" / "sidecar_client" / "methods.py").read_text() == first
