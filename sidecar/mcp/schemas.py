"""Tool input schemas, derived from the daemon's ``rpc.discover``: never written by hand, so
they cannot drift from what the daemon validates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The daemon methods exposed as tools (contract §12), in the order tools/list shows them.
# A method the daemon does not offer (log.search, before it exists) is simply left out.
TOOL_METHODS = (
    "log.append",
    "log.query",
    "log.tail",
    "log.search",
    "tasks.create",
    "tasks.update",
    "tasks.get",
    "tasks.ready",
    "tasks.claim",
    "summary.rolling",
    "context.build",
    "controller.heartbeat",
)

REF_PREFIX = "#/components/schemas/"


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its name, the daemon method behind it, its schema and its description."""

    name: str
    method: str
    input_schema: dict[str, Any]
    description: str


def tool_name(method: str) -> str:
    """``log.append`` -> ``log_append``: MCP tool names carry no dots in most hosts."""
    return method.replace(".", "_")


def inline_refs(schema: Any, components: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """``schema`` with every ``$ref`` to a component replaced by the component itself, so the
    result stands alone (an MCP inputSchema cannot point into an OpenRPC document)."""
    if isinstance(schema, list):
        return [inline_refs(item, components, seen) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(REF_PREFIX):
        name = ref[len(REF_PREFIX) :]
        if name in seen:
            raise ValueError(f"recursive schema {name!r} cannot be inlined")
        resolved = inline_refs(components[name], components, (*seen, name))
        rest = {k: inline_refs(v, components, seen) for k, v in schema.items() if k != "$ref"}
        return {**resolved, **rest}
    return {key: inline_refs(value, components, seen) for key, value in schema.items()}


def params_schema(doc: dict[str, Any], method: str) -> dict[str, Any] | None:
    """The self-contained params schema of ``method`` in an ``rpc.discover`` document."""
    components = doc.get("components", {}).get("schemas", {})
    for entry in doc.get("methods", []):
        if entry.get("name") == method:
            schema = inline_refs(entry["x-params-schema"], components)
            assert isinstance(schema, dict)
            return schema
    return None


def _description(entry: dict[str, Any]) -> str:
    """The method's summary, and the daemon errors it can answer (what a model may see)."""
    text = f"{entry.get('summary', '')} (daemon method {entry['name']})"
    errors = [f"{e['code']} {e['message']}" for e in entry.get("errors", [])]
    if errors:
        text += ". Errors: " + "; ".join(errors)
    return text


def tool_specs(doc: dict[str, Any]) -> list[ToolSpec]:
    """Every tool the daemon described in ``doc`` offers, in :data:`TOOL_METHODS` order."""
    entries = {entry.get("name"): entry for entry in doc.get("methods", [])}
    specs = []
    for method in TOOL_METHODS:
        entry = entries.get(method)
        schema = params_schema(doc, method)
        if entry is None or schema is None:
            continue
        specs.append(ToolSpec(tool_name(method), method, schema, _description(entry)))
    return specs


def error_name(doc: dict[str, Any] | None, code: int) -> str:
    """The daemon's name for an error code (``forbidden`` for -32003), from ``rpc.discover``."""
    entry = ((doc or {}).get("components", {}).get("errors", {})).get(str(code), {})
    name = entry.get("message")
    return name if isinstance(name, str) else "error"
