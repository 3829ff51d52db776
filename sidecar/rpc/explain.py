"""Plain words for the schemas: what the reference says a field takes, what a -32602 says was
expected, and which names an unknown one was probably meant to be.

Everything here reads the JSON Schema that msgspec generates from the very Structs that
validate params, so an error's ``expected`` and the reference's description of a field are
the same sentence from the same definitions; nothing is written twice.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterable
from typing import Any

import msgspec

REF_PREFIX = "#/components/schemas/"
REF_TEMPLATE = REF_PREFIX + "{name}"

Schema = dict[str, Any]
Segment = str | int

# Keys whose values are data, not schemas: never rewritten, never walked.
_DATA_KEYS = frozenset({"default", "const", "examples", "enum"})
GOT_CHARS = 200  # how much of an offending value an error repeats


def with_string_enums(node: Any) -> Any:
    """``node`` with every enum of strings typed: msgspec writes a ``Literal`` as
    ``{"enum": [...]}``; readers of JSON Schema expect ``{"type": "string", "enum": [...]}``."""
    if isinstance(node, list):
        return [with_string_enums(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: v if k in _DATA_KEYS else with_string_enums(v) for k, v in node.items()}
    values = out.get("enum")
    if "type" not in out and isinstance(values, list) and values and all(isinstance(v, str) for v in values):
        out = {"type": "string", **out}
    return out


# --- schemas in words ---------------------------------------------------------------------------


def ref_name(schema: Schema) -> str | None:
    ref = schema.get("$ref")
    return ref[len(REF_PREFIX) :] if isinstance(ref, str) and ref.startswith(REF_PREFIX) else None


def resolve(schema: Any, components: dict[str, Schema]) -> Any:
    """``schema`` with ``$ref`` followed (an unknown reference is any value)."""
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 32:
        name = ref_name(schema)
        schema = components.get(name, {}) if name else {}
        seen += 1
    return schema


def is_object(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "object" and "properties" in schema


def _either(words: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _count(lo: int | None, hi: int | None, word: str) -> str:
    """``1 to 10 items``, ``at least 1 item``, ``at most 128 characters``."""
    if lo is not None and hi is not None:
        return f"exactly {_plural(lo, word)}" if lo == hi else f"{lo} to {hi} {word}s"
    if lo is not None:
        return f"at least {_plural(lo, word)}"
    return f"at most {_plural(hi or 0, word)}"


def _bounds(schema: Schema, noun: str) -> str:
    ge, le = schema.get("minimum"), schema.get("maximum")
    gt, lt = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if ge is not None and le is not None:
        return f"{noun} from {ge} to {le}"
    parts = []
    if ge is not None:
        parts.append(f"of at least {ge}")
    if gt is not None:
        parts.append(f"greater than {gt}")
    if le is not None:
        parts.append(f"of at most {le}" if not parts else f"at most {le}")
    if lt is not None:
        parts.append(f"less than {lt}")
    return f"{noun} {' and '.join(parts)}" if parts else noun


def _string(schema: Schema) -> str:
    # A pattern's description is its plain words (see the Meta definitions); a pattern with
    # none is shown as it is, once, without the escaping a repr would add.
    plain = schema.get("description") if "pattern" in schema else None
    lo, hi = schema.get("minLength"), schema.get("maxLength")
    if plain:
        text = plain.strip().rstrip(".")
        return f"{text} ({_count(lo, hi, 'character')})" if lo is not None or hi is not None else text
    text = "a string"
    if lo == 1 and hi is None:
        text = "a non-empty string"
    elif lo is not None or hi is not None:
        text = f"a string of {_count(lo, hi, 'character')}"
    if "pattern" in schema:
        text += " matching " + schema["pattern"].replace("\n", "\\n")
    if "format" in schema:
        text += f" ({schema['format']})"
    return text


def describe(schema: Any, components: dict[str, Schema]) -> str:
    """What a value of ``schema`` must be, in words: "an integer from 1 to 3600"."""
    if schema is True or schema == {} or schema is None:
        return "any JSON value"
    if schema is False or not isinstance(schema, dict):
        return "nothing (always refused)"
    name = ref_name(schema)
    if name is not None:
        target = resolve(schema, components)
        return f"an object ({name})" if is_object(target) else describe(target, components)
    if "anyOf" in schema or "oneOf" in schema:
        members = schema.get("anyOf") or schema.get("oneOf") or []
        words = [describe(m, components) for m in members if not (isinstance(m, dict) and m.get("type") == "null")]
        nullable = len(words) < len(members)
        if len(words) > 1:
            return "; or ".join(words) + ("; or null" if nullable else "")
        return (words[0] if words else "null") + (", or null" if nullable and words else "")
    if "const" in schema:
        return f"exactly {json.dumps(schema['const'])}"
    if "enum" in schema:
        return "one of " + _either([json.dumps(v) for v in schema["enum"]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return _either([describe({**schema, "type": k}, components) for k in kind])
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        return _bounds(schema, "an integer")
    if kind == "number":
        return _bounds(schema, "a number")
    if kind == "boolean":
        return "true or false"
    if kind == "null":
        return "null"
    if kind == "array":
        lo, hi = schema.get("minItems"), schema.get("maxItems")
        size = f" of {_count(lo, hi, 'item')}" if lo is not None or hi is not None else ""
        if "prefixItems" in schema:
            items = [describe(s, components) for s in schema["prefixItems"]]
            return f"a list of {len(items)}: " + ", ".join(items)
        if "items" not in schema or schema["items"] in ({}, True):
            return f"a list{size}"
        return f"a list{size}, each {describe(schema['items'], components)}"
    if kind == "object":
        props = schema.get("properties")
        if props:
            return "an object with " + _either([f"`{p}`" for p in props])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return f"an object whose values are each {describe(extra, components)}"
        return "an object"
    return "any JSON value"


# --- following a path -----------------------------------------------------------------------------

_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[([^\]]*)\]")


def parse_path(path: str) -> list[Segment] | None:
    """``$.events[3].conversation_id`` -> ``["events", 3, "conversation_id"]``; ``None`` when
    the path cannot be followed (msgspec writes ``[...]`` for a key of a dict)."""
    if not path.startswith("$"):
        return None
    out: list[Segment] = []
    at = 1
    while at < len(path):
        found = _SEGMENT.match(path, at)
        if found is None:
            return None
        name, index, key = found.groups()
        if key is not None:
            return None  # a dict key msgspec did not spell out
        out.append(name if name is not None else int(index))
        at = found.end()
    return out


def format_path(segments: Iterable[Segment]) -> str:
    """The inverse of :func:`parse_path`; odd keys are quoted, JSONPath style."""
    out = "$"
    for seg in segments:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", seg):
            out += f".{seg}"
        else:
            out += f"[{json.dumps(seg)}]"
    return out


def step(schema: Any, segment: Segment, components: dict[str, Schema]) -> Any | None:
    """The schema one step down (``None``: the schema has no such place)."""
    schema = resolve(schema, components)
    if not isinstance(schema, dict):
        return {} if schema is True else None
    members = schema.get("anyOf") or schema.get("oneOf") or [schema]
    for member in members:
        member = resolve(member, components)
        if not isinstance(member, dict):
            continue
        if isinstance(segment, int):
            if member.get("type") == "array":
                prefix = member.get("prefixItems")
                if isinstance(prefix, list):
                    return prefix[segment] if segment < len(prefix) else None
                return member.get("items", {})
            continue
        if member.get("type") != "object":
            continue
        props = member.get("properties", {})
        if segment in props:
            return props[segment]
        extra = member.get("additionalProperties", {} if "properties" not in member else False)
        if extra is not False:
            return extra if isinstance(extra, dict) else {}
    return None


def walk(schema: Any, segments: Iterable[Segment], components: dict[str, Schema]) -> Any | None:
    for seg in segments:
        schema = step(schema, seg, components)
        if schema is None:
            return None
    return schema


_ABSENT = object()


def value_at(value: Any, segments: Iterable[Segment]) -> Any:
    """The value at a path (``_ABSENT`` when there is none)."""
    for seg in segments:
        at_index = isinstance(seg, int) and isinstance(value, list) and seg < len(value)
        at_key = isinstance(seg, str) and isinstance(value, dict) and seg in value
        if not (at_index or at_key):
            return _ABSENT
        value = value[seg]
    return value


def shortened(value: Any, limit: int = GOT_CHARS) -> Any:
    """``value`` as it may be repeated back: a string over ``limit`` characters is cut (with
    "..."), and a list or object whose JSON is over ``limit`` becomes that JSON, cut."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "..."
    if isinstance(value, (list, dict)):
        text = json.dumps(value, ensure_ascii=False)
        return value if len(text) <= limit else text[:limit] + "..."
    return value


# --- names that were probably meant ---------------------------------------------------------------


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[._]", name.lower()) if w]


def _contains_run(words: list[str], run: list[str]) -> bool:
    n = len(run)
    return 0 < n < len(words) and any(words[i : i + n] == run for i in range(len(words) - n + 1))


def close_names(given: str, names: Iterable[str], limit: int = 5) -> list[str]:
    """The names ``given`` was probably meant to be: near misses in spelling (``log.gett``),
    and names with ``given``'s words in them (``tasks.list`` -> ``tasks.list_active``,
    ``id`` -> ``event_id``), best first."""
    names = [n for n in names if n != given]
    scored = sorted(((difflib.SequenceMatcher(None, given, n).ratio(), n) for n in names), reverse=True)
    best = scored[0][0] if scored else 0.0
    words = _words(given)
    parts = sorted(n for n in names if _contains_run(_words(n), words))
    # A name holding all of given's words beats a loose near miss (tasks.list: tasks.list_active,
    # not tasks.claim); a clear misspelling still comes first.
    floor = 0.8 if parts else 0.75
    typos = [n for ratio, n in scored if ratio >= floor and ratio >= best - 0.06]
    out: list[str] = []
    for n in typos + parts:
        if n not in out:
            out.append(n)
    return out[:limit]


def did_you_mean(names: list[str]) -> str:
    return f"did you mean {_either(names)}?" if names else ""


# --- invalid params, explained --------------------------------------------------------------------


@functools.cache
def params_schema(params_type: type) -> tuple[Schema, dict[str, Schema]]:
    """The JSON Schema of a params Struct and its components (made once, on first error)."""
    (schema,), components = msgspec.json.schema_components([params_type], ref_template=REF_TEMPLATE)
    return with_string_enums(schema), with_string_enums(components)


_AT = re.compile(r"^(?P<what>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$")


def _decoded(params: Any) -> Any:
    if isinstance(params, msgspec.Raw):
        try:
            return msgspec.json.decode(params)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return _ABSENT
    return params


def _brief(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def explain(params_type: type, params: Any, message: str) -> tuple[str, dict[str, Any] | None]:
    """A -32602's message and ``data`` for params that ``params_type`` refused with msgspec's
    ``message``: where (``path``, and ``field`` as before), what would do (``expected``, and
    ``allowed`` for a choice), and what came (``got``, shortened; absent when missing)."""
    found = _AT.match(message)
    what, path = (found.group("what"), found.group("path") or "$") if found else (message, "$")
    segments = parse_path(path)
    if segments is None:  # somewhere we cannot follow: msgspec's words, with its escaping undone
        return f"Invalid params: {message.replace(chr(92) * 2, chr(92))}", None
    schema, components = params_schema(params_type)
    missing, unknown = _MISSING.match(what), _UNKNOWN.match(what)
    if missing or unknown:
        segments = [*segments, (missing or unknown).group("name")]  # type: ignore[union-attr]
    path = format_path(segments)
    data: dict[str, Any] = {"path": path}
    if segments:
        data["field"] = path[2:] if path.startswith("$.") else path[1:]
    value = value_at(_decoded(params), segments)
    if unknown:
        parent = resolve(walk(schema, segments[:-1], components), components)
        known = list(parent.get("properties", {})) if isinstance(parent, dict) else []
        data["expected"] = "one of the fields " + _either(known) if known else "no fields"
        data["allowed"] = known
        if value is not _ABSENT:
            data["got"] = shortened(value)
        hint = did_you_mean(close_names(str(segments[-1]), known))
        return f"Invalid params: {path} is not a known field{'; ' + hint if hint else ''}", data
    leaf = walk(schema, segments, components)
    if leaf is None:
        return f"Invalid params: {message.replace(chr(92) * 2, chr(92))}", data
    data["expected"] = describe(leaf, components)
    choices = _choices(leaf, components)
    if choices:
        data["allowed"] = choices
    if missing:
        return f"Invalid params: {path} is required: {data['expected']}", data
    if value is not _ABSENT:
        data["got"] = shortened(value)
        return f"Invalid params: {path} must be {data['expected']}; got {_brief(value)}", data
    return f"Invalid params: {path} must be {data['expected']}", data


def _choices(schema: Any, components: dict[str, Schema]) -> list[Any] | None:
    """The allowed values, when the schema is a choice (or a choice or null)."""
    schema = resolve(schema, components)
    if not isinstance(schema, dict):
        return None
    if "enum" in schema:
        return list(schema["enum"])
    members = [resolve(m, components) for m in schema.get("anyOf", [])]
    enums = [m for m in members if isinstance(m, dict) and "enum" in m]
    if len(enums) == 1:
        return list(enums[0]["enum"])
    return None
