"""The import graph of ``sidecar/``: no cycles, and the daemon does not lean on its client.

Every module is parsed with :mod:`ast` (nothing is imported), and an edge is drawn for each
import that runs: at module level or inside a function, but not under ``if TYPE_CHECKING:``.
``import a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``; ``from a.b import c`` runs ``a``, ``a.b``
and, when ``c`` is a module, ``a.b.c``. The packages a module sits in are already being
imported when it runs, so an edge to one of them is drawn only when a name (not a submodule)
is taken from it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from sidecar_client import default_socket_path as client_default

from sidecar.paths import default_socket_path as daemon_default

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sidecar"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, skipping ``if TYPE_CHECKING:`` bodies."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node.test):
            for child in node.orelse:
                yield from _runtime_imports(ast.Module(body=[child], type_ignores=[]))
            continue  # the test itself imports nothing
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _runtime_imports(node)


def imports_of(module: str) -> dict[str, int]:
    """The modules of ``sidecar`` (and any other top-level name) this module's import runs,
    each with the line of its first import."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    own = set(_prefixes(package))
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target != module:
            found.setdefault(target, line)

    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                for target in _prefixes(alias.name):
                    if target not in own:
                        add(target, node.lineno)
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for target in _prefixes(source):
            if target not in own:
                add(target, node.lineno)
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in MODULES:
                add(submodule, node.lineno)
            elif source in own:
                add(source, node.lineno)  # a name from a package still being imported
    return found


def _graph() -> dict[str, dict[str, int]]:
    return {m: {t: line for t, line in imports_of(m).items() if t in MODULES} for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:
        start = min(component)
        # Breadth-first from start back to start, inside the component: a shortest cycle.
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            following = []
            for node in frontier:
                for target in sorted(graph.get(node, ())):
                    if target == start:
                        cycle = [*paths[node], start]
                        break
                    if target in component and target not in paths:
                        paths[target] = [*paths[node], target]
                        following.append(target)
                if cycle:
                    break
            frontier = following
        assert cycle is not None
        cycles.append(cycle)
    return cycles


def _describe(cycle: list[str], graph: dict[str, dict[str, int]] | None = None) -> str:
    if graph is None:
        return " -> ".join(cycle)
    steps = [cycle[0]]
    for here, there in zip(cycle, cycle[1:], strict=False):
        steps.append(f"(line {graph[here][there]}) {there}")
    return " -> ".join(steps)


def test_the_module_graph_has_no_cycle() -> None:
    graph = _graph()
    cycles = _cycles({m: set(targets) for m, targets in graph.items()})
    assert not cycles, "import cycles:\n" + "\n".join(_describe(c, graph) for c in cycles)


# Modules that exist only because the contract (§7) names them as the embedded API's import
# paths; each re-exports the room that holds the code, and nothing inside imports them.
CONTRACT_ALIASES = {"sidecar.log.summarize": "sidecar.summary", "sidecar.task_graph.store": "sidecar.tasks"}


def test_contract_aliases_only_re_export() -> None:
    """An alias imports from its room alone, defines nothing, and no module of ours uses it."""
    for alias, home in CONTRACT_ALIASES.items():
        assert all(t in (home, "__future__") or t.startswith(home + ".") for t in imports_of(alias)), alias
        tree = ast.parse(MODULES[alias].read_text())
        defined = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        assert not defined, f"{alias} should only re-export {home}"
        assert not [m for m in MODULES if alias in imports_of(m)], f"{alias} is for callers, not for us"


def test_the_subpackages_import_one_way() -> None:
    """Between the subpackages (``sidecar.log``, ``sidecar.context``, ...) and the top-level
    modules, arrows run one way too."""

    def room(module: str) -> str:
        return ".".join(module.split(".")[:2])

    rooms: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        if module in CONTRACT_ALIASES:
            continue  # a name kept for callers, not a part of its room
        for target in targets:
            if room(target) != room(module):
                rooms.setdefault(room(module), set()).add(room(target))
    cycles = _cycles(rooms)
    assert not cycles, "cycles between subpackages:\n" + "\n".join(_describe(c) for c in cycles)


def test_the_check_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_only_the_command_line_uses_the_client() -> None:
    """The daemon does not depend on its client (which installs alone and imports no
    ``sidecar``): only the command line, the demo, the web console and the MCP server, which talk to a
    daemon, import it; and nothing of the daemon imports the console."""
    users = sorted(m for m in MODULES if "sidecar_client" in imports_of(m))
    assert users == [
        "sidecar.cli",
        "sidecar.demo",
        "sidecar.mcp.link",
        "sidecar.mcp.resources",
        "sidecar.mcp.server",
        "sidecar.web.app",
        "sidecar.web.link",
        "sidecar.web.stream",
    ]
    leaning = [m for m in MODULES if "sidecar.web.main" in imports_of(m) and not m.startswith("sidecar.web")]
    assert leaning == ["sidecar.cli"], leaning  # `sidecar web` starts it; nothing else reaches in
    into_mcp = [m for m in MODULES if "sidecar.mcp.server" in imports_of(m) and not m.startswith("sidecar.mcp")]
    assert into_mcp == ["sidecar.cli"], into_mcp  # `sidecar mcp` starts it; nothing else reaches in


@pytest.mark.parametrize(
    "environ",
    [
        {"SIDECAR_SOCKET": "/run/elsewhere/s.sock", "XDG_RUNTIME_DIR": "/run/user/1000"},
        {"XDG_RUNTIME_DIR": "/run/user/1000"},
        {},
        {"SIDECAR_SOCKET": "", "XDG_RUNTIME_DIR": ""},
    ],
)
def test_the_daemon_and_the_client_agree_on_the_default_socket(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]
) -> None:
    for name in ("SIDECAR_SOCKET", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert daemon_default() == client_default()
