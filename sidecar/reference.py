"""The reference: every method, notification, error code and config key, generated.

    python -m sidecar.reference > docs/reference.md

It reads the daemon's own OpenRPC document (built in-process from the registry, the same
document ``rpc.discover`` answers) and the config Structs, so it says what the daemon does;
tests/test_reference.py fails when docs/reference.md differs from what this prints.
``sidecar methods [NAME]`` prints the same descriptions on a terminal.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import re
import sys
import textwrap
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from sidecar.rpc.explain import GOT_CHARS, REF_TEMPLATE, close_names, describe, is_object, resolve, with_string_enums

Doc = dict[str, Any]
Schema = dict[str, Any]

REGENERATE = "python -m sidecar.reference > docs/reference.md"


def discover() -> Doc:
    """The OpenRPC document ``rpc.discover`` answers, without a daemon."""
    from sidecar import __version__
    from sidecar.api import registry

    return registry.openrpc("sidecar", __version__)


def _components(doc: Doc) -> dict[str, Schema]:
    return doc.get("components", {}).get("schemas", {})


def _rst(text: str) -> str:
    """Docstring markup (````x````) as Markdown (```x```), on one line."""
    return " ".join(text.replace("``", "`").split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class Field:
    """One param, result field or config key, in words."""

    name: str
    kind: str  # what it takes, in words
    required: bool
    default: str  # "" when none
    description: str  # "" when none, or when ``kind`` already says it


def _field_words(name: str, schema: Any, required: bool, components: dict[str, Schema]) -> Field:
    schema = schema if isinstance(schema, dict) else {}
    kind = describe(schema, components)
    inner = [schema, *schema.get("anyOf", [])]
    # A pattern's description is already ``kind``; any other description says what it is for.
    said = any(isinstance(s, dict) and "pattern" in s for s in inner)
    description = "" if said else _rst(schema.get("description", ""))
    default = _json(schema["default"]) if "default" in schema else ""
    return Field(name, kind, required, default, description)


def fields_of(schema: Any, components: dict[str, Schema]) -> list[Field]:
    """The fields of an object schema (a ``$ref`` is followed)."""
    target = resolve(schema, components)
    if not isinstance(target, dict):
        return []
    required = set(target.get("required", []))
    return [_field_words(n, s, n in required, components) for n, s in target.get("properties", {}).items()]


def method_of(doc: Doc, name: str) -> Doc | None:
    return next((m for m in doc["methods"] if m["name"] == name), None)


def notification_of(doc: Doc, name: str) -> Doc | None:
    return next((n for n in doc.get("x-notifications", []) if n["name"] == name), None)


def example_params(method: Doc) -> dict[str, Any] | None:
    examples = method.get("examples") or []
    if not examples:
        return None
    return {p["name"]: p["value"] for p in examples[0].get("params", [])}


def example_lines(method: Doc) -> list[str]:
    """The example as a ``sidecar call`` command and as the JSON-RPC line it sends."""
    params = example_params(method)
    if params is None:
        return []
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method["name"]}
    if params:
        request["params"] = params
    quoted = " '" + _json(params).replace("'", "'\\''") + "'" if params else ""
    return [f"sidecar call {method['name']}{quoted}", _json(request)]


def suggestions(doc: Doc, name: str) -> list[str]:
    names = [m["name"] for m in doc["methods"]] + [n["name"] for n in doc.get("x-notifications", [])]
    return close_names(name, names)


# --- config keys -----------------------------------------------------------------------------------


def _comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: the comment lines just above it and the one at
    the end of its line. (The config's descriptions are written where a reader of the code
    sees them, and read from there.)"""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    alone: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
            if not tok.line[: tok.start[1]].strip():
                alone.add(tok.start[0])
    out: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        line = node.lineno - 1
        while line in alone:
            above.insert(0, comments[line])
            line -= 1
        after = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments]
        out[node.target.id] = " ".join(above + after)
    return out


def _default(name: str, value: Any) -> str:
    """A key's default as TOML would have it; bytes also readable: ``16777216 (16 MiB)``."""
    if value is None:
        return "unset"
    if not name.endswith("_bytes") or isinstance(value, bool) or not isinstance(value, int) or value < 1024:
        return f"`{_json(value)}`"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value % size == 0:
            return f"`{value}` ({value // size} {unit})"
    return f"`{value}`"


@dataclass(frozen=True)
class Section:
    name: str  # "" for the top level, else the table's name ("server")
    description: str
    keys: list[Field]


def config_sections() -> list[Section]:
    """Every config key with its default, type and meaning, from the config Structs."""
    from sidecar.daemon.config import Config

    (_,), components = msgspec.json.schema_components([Config], ref_template=REF_TEMPLATE)
    components = with_string_enums(components)

    def keys(cls: type[msgspec.Struct]) -> tuple[list[Field], list[tuple[str, type[msgspec.Struct]]]]:
        schema = components[cls.__name__]
        notes = _comments(cls)
        plain: list[Field] = []
        tables: list[tuple[str, type[msgspec.Struct]]] = []
        for info in msgspec.structs.fields(cls):
            prop = schema["properties"].get(info.encode_name, {})
            target = resolve(prop, components)
            if is_object(target) and isinstance(info.type, type) and issubclass(info.type, msgspec.Struct):
                tables.append((info.encode_name, info.type))
                continue
            default = info.default if info.default is not msgspec.NODEFAULT else info.default_factory()
            kind = describe(prop, components).removesuffix(", or null")
            shown = _default(info.encode_name, default)
            plain.append(Field(info.encode_name, kind, False, shown, notes.get(info.name, "")))
        return plain, tables

    top, tables = keys(Config)
    sections = [Section("", _rst(Config.__doc__ or ""), top)]
    for name, cls in tables:
        fields, _ = keys(cls)
        sections.append(Section(name, _rst(cls.__doc__ or ""), fields))
    return sections


# --- Markdown --------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    """GitHub's heading anchor."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


class _Links:
    """Component names in words (``an object (Event)``) become links to their section."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def __call__(self, text: str) -> str:
        def link(found: re.Match[str]) -> str:
            name = found.group(1)
            return f"([{name}](#{_slug(name)}))" if name in self.names else found.group(0)

        return re.sub(r"\(([A-Z][A-Za-z0-9_]*)\)", link, text)


def _field_table(fields: list[Field], links: _Links, first: str = "param") -> list[str]:
    rows = [f"| {first} | type | required | default | notes |", "|---|---|---|---|---|"]
    for f in fields:
        rows.append(
            f"| `{f.name}` | {_cell(links(f.kind))} | {'yes' if f.required else 'no'} | "
            f"{_cell(f'`{f.default}`' if f.default else '')} | {_cell(f.description)} |"
        )
    return rows


def _method_md(doc: Doc, method: Doc, links: _Links) -> list[str]:
    components = _components(doc)
    out = [f"### {method['name']}", "", _rst(method.get("summary", ""))]
    params_schema = method.get("x-params-schema", {})
    target = resolve(params_schema, components)
    if isinstance(target, dict) and target.get("description") and target.get("title") != "NoParams":
        out += ["", _rst(target["description"])]
    fields = fields_of(params_schema, components)
    out += [""] + (["**Params**", "", *_field_table(fields, links)] if fields else ["**Params**: none."])
    result = method.get("result", {}).get("schema", {})
    out += ["", f"**Result**: {links(describe(result, components))}."]
    errors = method.get("errors", [])
    if errors:
        out += ["", "**Errors**", "", "| code | when |", "|---|---|"]
        out += [f"| {e['code']} | {_cell(e['message'])} |" for e in errors]
    else:
        out += ["", "**Errors**: only the standard ones (see [Errors](#errors))."]
    lines = example_lines(method)
    if lines:
        out += ["", "**Example**", "", "```sh", lines[0], "```", "", "```json", lines[1], "```"]
    return out + [""]


def _notification_md(doc: Doc, note: Doc, links: _Links) -> list[str]:
    components = _components(doc)
    out = [f"### {note['name']}", "", _rst(note.get("summary", "")), ""]
    out += _field_table(fields_of(note.get("params", {}), components), links)
    for example in note.get("examples", [])[:1]:
        out += ["", "```json", _json({"jsonrpc": "2.0", "method": note["name"], "params": example}), "```"]
    return out + [""]


def markdown(doc: Doc | None = None) -> str:
    """docs/reference.md."""
    from sidecar.rpc.dispatch import ERROR_CODES

    doc = doc or discover()
    components = _components(doc)
    methods = sorted(doc["methods"], key=lambda m: m["name"])
    notes = sorted(doc.get("x-notifications", []), key=lambda n: n["name"])
    pushed = {n.get("params", {}).get("title") for n in notes}
    types = sorted(n for n, s in components.items() if is_object(s) and n not in pushed and n != "NoParams")
    links = _Links(set(types))
    out = [
        "# sidecar reference",
        "",
        "<!-- GENERATED by `" + REGENERATE + "` from the daemon's schemas: do not edit by hand. -->",
        "",
        "Every method, notification, error code and config key of the daemon, generated from the",
        "same definitions the daemon validates with (its `rpc.discover` document and its config",
        "Structs); `tests/test_reference.py` fails when this file is out of date. On a terminal,",
        "`sidecar methods` lists the methods and `sidecar methods NAME` shows one.",
        "",
        "The wire: JSON-RPC 2.0 over the daemon's Unix socket, one JSON message per line (NDJSON),",
        "params by name (a JSON object). `sidecar call METHOD 'PARAMS'` sends one call.",
        "",
        "- [Methods](#methods)",
        "- [Notifications](#notifications)",
        "- [Errors](#errors)",
        "- [Types](#types)",
        "- [Configuration](#configuration)",
        "",
        "## Methods",
        "",
        "| method | what it does |",
        "|---|---|",
    ]
    out += [f"| [{m['name']}](#{_slug(m['name'])}) | {_cell(_rst(m.get('summary', '')))} |" for m in methods]
    out += [""]
    for m in methods:
        out += _method_md(doc, m, links)
    out += [
        "## Notifications",
        "",
        "What the daemon pushes: JSON-RPC notifications (no `id`), on the connection that subscribed.",
        "",
    ]
    for n in notes:
        out += _notification_md(doc, n, links)
    out += [
        "## Errors",
        "",
        "Every error answer is `{code, message, data?}`. The standard codes can come from any method;",
        "each method above lists the server-defined ones it can answer with.",
        "",
        "| code | name | meaning |",
        "|---|---|---|",
    ]
    out += [f"| {e.code} | {e.name} | {_cell(e.meaning)} |" for e in ERROR_CODES]
    out += [
        "",
        "**-32602 `data`**, when params do not fit the method's schema:",
        "",
        "- `path`: where, as a JSONPath from the params object: `$.level`, `$.events[3].conversation_id`;",
        "- `field`: the same without `$.` (`events[3].conversation_id`), as earlier versions gave it;",
        "- `expected`: what would do, in words (the allowed values, the bounds, the pattern's plain words);",
        "- `allowed`: for a choice, the allowed values; for an unknown field, the known ones;",
        f"- `got`: the value sent (a string cut at {GOT_CHARS} characters, a list or object longer than that as its",
        "  JSON text, cut); absent when the field is missing.",
        "",
        '**-32601 `data`**: `suggestions`, the method names it may have meant (`"tasks.list"` ->',
        '`["tasks.list_active"]`); no `data` when nothing is close.',
        "",
        "## Types",
        "",
        "The objects that params and results are made of.",
        "",
    ]
    for name in types:
        schema = components[name]
        out += [f"### {name}", ""]
        if schema.get("description"):
            out += [_rst(schema["description"]), ""]
        out += _field_table(fields_of(schema, components), links, first="field") + [""]
    out += [
        "## Configuration",
        "",
        "A TOML file, given with `--config FILE` or `SIDECAR_CONFIG`. Every key is optional; a key the",
        "daemon does not know is an error naming it. `SIDECAR_DATA_DIR` and `SIDECAR_SOCKET` (and the",
        "flags `--data-dir`, `--socket`) override `data_dir` and `socket`; `SIDECAR_LLM_URL` and",
        "`SIDECAR_LLM_MODEL` set `[llm] url` and `model`. SIGHUP re-reads the `[server]` limits and",
        "`[controller]`.",
        "",
    ]
    for section in config_sections():
        out += [f"### {'[' + section.name + ']' if section.name else 'Top level'}", ""]
        if section.description:
            out += [section.description, ""]
        out += ["| key | default | type | meaning |", "|---|---|---|---|"]
        out += [f"| `{f.name}` | {_cell(f.default)} | {_cell(f.kind)} | {_cell(f.description)} |" for f in section.keys]
        out += [""]
    return "\n".join(out).rstrip("\n") + "\n"


# --- the terminal (`sidecar methods`) --------------------------------------------------------------


def _wrap(text: str, width: int, indent: str = "") -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent) or [indent.rstrip()]


def method_index(doc: Doc) -> str:
    """Every method, one line each: name and summary."""
    methods = sorted(doc["methods"], key=lambda m: m["name"])
    pad = max(len(m["name"]) for m in methods) + 2
    lines = [f"{m['name']:<{pad}}{_rst(m.get('summary', ''))}" for m in methods]
    notes = sorted(n["name"] for n in doc.get("x-notifications", []))
    lines += [
        "",
        f"notifications: {', '.join(notes)}",
        "`sidecar methods NAME` shows one in full; docs/reference.md has everything.",
    ]
    return "\n".join(lines) + "\n"


def _field_lines(fields: list[Field], width: int) -> Iterator[str]:
    """``  name  required  what it takes``, wrapped under its column (or below, when narrow)."""
    tags = [("required" if f.required else f"default {f.default}" if f.default else "optional") for f in fields]
    name_pad = max((len(f.name) for f in fields), default=0) + 2
    tag_pad = max((len(t) for t in tags), default=0) + 2
    column = 2 + name_pad + tag_pad
    for f, tag in zip(fields, tags, strict=True):
        words = f.kind + (f" — {f.description}" if f.description else "")
        if column <= width // 2:
            lines = _wrap(words, width, " " * column)
            yield f"  {f.name:<{name_pad}}{tag:<{tag_pad}}{lines[0].lstrip()}"
            yield from lines[1:]
        else:
            yield f"  {f.name}  {tag}"
            yield from _wrap(words, width, "      ")


def method_text(doc: Doc, name: str, width: int = 100) -> str | None:
    """One method (or notification) in full, for a terminal; ``None`` when there is no such name."""
    components = _components(doc)
    method = method_of(doc, name)
    if method is None:
        note = notification_of(doc, name)
        if note is None:
            return None
        lines = [f"{name} (notification)", *_wrap(_rst(note.get("summary", "")), width, "  "), "", "params"]
        lines += _field_lines(fields_of(note.get("params", {}), components), width)
        return "\n".join(lines) + "\n"
    lines = [name, *_wrap(_rst(method.get("summary", "")), width, "  "), ""]
    fields = fields_of(method.get("x-params-schema", {}), components)
    lines += ["params", *_field_lines(fields, width)] if fields else ["params: none"]
    result = method.get("result", {}).get("schema", {})
    lines += ["", "result", *_wrap(describe(result, components), width, "  ")]
    target = resolve(result, components)
    if isinstance(target, dict) and target.get("type") == "array":
        target = resolve(target.get("items", {}), components)
    if is_object(target):
        lines += list(_field_lines(fields_of(target, components), width))
    lines += ["", "errors"]
    errors = method.get("errors", [])
    lines += [f"  {e['code']}  {e['message']}" for e in errors] or ["  only the standard ones (-32600..-32603)"]
    example = example_lines(method)
    if example:
        lines += ["", "example", *(f"  {line}" for line in example)]
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.stdout.write(markdown())


if __name__ == "__main__":
    main()
