"""The consumer's layers, read from the imports of its modules (ast, nothing imported):

- settings.py is a leaf: the standard library and btcpipe only;
- core/ is pure: nothing of Kafka or PostgreSQL, nothing of the consumer outside core/;
- the edges (kafka_reader/, postgres/) import the core and the settings, never each other, the
  loop, the flusher, the report or app;
- only app, loop and flusher import the edges; nothing imports app;
- no import cycle anywhere.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

CONSUMER = Path(__file__).resolve().parents[2] / "consumer"
PACKAGE = "aggregator"
CORE = f"{PACKAGE}.core"
EDGES = (f"{PACKAGE}.kafka_reader", f"{PACKAGE}.postgres")
SETTINGS = f"{PACKAGE}.settings"
APP = f"{PACKAGE}.app"
EDGE_USERS = {APP, f"{PACKAGE}.loop", f"{PACKAGE}.flusher"}
DRIVERS = ("kafka", "psycopg2")  # the clients of the two edges


def module_name(path: Path) -> str:
    parts = list(path.relative_to(CONSUMER).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_paths() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((CONSUMER / PACKAGE).rglob("*.py"))}


def imported_names(path: Path, name: str, modules: Iterable[str]) -> set[str]:
    """Every module `path` imports (also inside functions or `if TYPE_CHECKING`), by full
    name; `from package import module` counts as that module."""
    known = set(modules)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package that holds this module
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = module_paths()
    return {name: imported_names(path, name, paths) for name, path in paths.items()}


GRAPH = import_graph()


def within(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def ours(imports: Iterable[str]) -> set[str]:
    return {name for name in imports if within(name, PACKAGE)}


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle of `graph` (its modules in order, the first repeated at the end), or
    None. Depth first, marking each module on the current path."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph.get(module, ())):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done and target in graph:
                cycle = visit(target)
                if cycle is not None:
                    return cycle
        path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle is not None:
                return cycle
    return None


def test_the_modules_of_every_layer_are_read() -> None:
    """Guards the checks below against reading nothing (a moved folder, a wrong root)."""
    expected = {
        APP,
        SETTINGS,
        f"{PACKAGE}.loop",
        f"{PACKAGE}.flusher",
        f"{PACKAGE}.report",
        f"{CORE}.windows",
        f"{CORE}.accumulator",
        f"{CORE}.decoding",
        f"{CORE}.catch_up",
        f"{CORE}.migrations",
        f"{EDGES[0]}.client",
        f"{EDGES[0]}.positions",
        f"{EDGES[0]}.spin_guard",
        f"{EDGES[1]}.connection",
        f"{EDGES[1]}.store",
    }
    assert expected <= GRAPH.keys()
    assert f"{EDGES[1]}.store" in GRAPH[f"{PACKAGE}.flusher"]  # imports are resolved


def test_settings_is_a_leaf() -> None:
    imports = GRAPH[SETTINGS]
    assert not ours(imports), f"settings.py imports {sorted(ours(imports))}"
    foreign = {
        name
        for name in imports
        if name.split(".")[0] not in sys.stdlib_module_names and not within(name, "btcpipe")
    }
    assert not foreign, f"settings.py imports {sorted(foreign)}: only btcpipe and the stdlib"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if within(m, CORE)))
def test_the_core_imports_no_edge_and_no_driver(module: str) -> None:
    imports = GRAPH[module]
    outside = {name for name in ours(imports) if not within(name, CORE)}
    assert not outside, f"{module} (pure) imports {sorted(outside)}"
    drivers = {name for name in imports if within(name, *DRIVERS)}
    assert not drivers, f"{module} (pure) imports {sorted(drivers)}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if within(m, *EDGES)))
def test_an_edge_imports_only_the_core_the_settings_and_itself(module: str) -> None:
    (edge,) = (prefix for prefix in EDGES if within(module, prefix))
    wrong = {name for name in ours(GRAPH[module]) if not within(name, CORE, SETTINGS, edge)}
    assert not wrong, f"{module} imports {sorted(wrong)}"


def test_only_app_the_loop_and_the_flusher_import_the_edges() -> None:
    users = {
        module
        for module, imports in GRAPH.items()
        for name in imports
        if within(name, *EDGES) and not within(module, *EDGES)
    }
    assert users <= EDGE_USERS, sorted(users - EDGE_USERS)


def test_nothing_imports_app() -> None:
    importers = sorted(module for module, imports in GRAPH.items() if APP in imports)
    assert importers == [], f"{importers} import {APP}: only consumer.py runs it"


def test_there_is_no_import_cycle() -> None:
    internal = {module: ours(imports) for module, imports in GRAPH.items()}
    cycle = find_cycle(internal)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    """The check above, on graphs with and without a cycle."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
