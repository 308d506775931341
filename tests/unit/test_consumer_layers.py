"""The consumer's layers, read from the imports of its modules (ast, nothing imported):

- settings.py is a leaf: the standard library and btcpipe only;
- core/ is pure: nothing of Kafka or PostgreSQL, nothing of the consumer outside core/;
- the edges (kafka_reader/, postgres/) import the core and the settings, never each other, the
  loop, the flusher, the report or app;
- only app, loop and flusher import the edges; nothing imports app;
- no import cycle anywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.imports import find_cycle, import_graph, within

CONSUMER = Path(__file__).resolve().parents[2] / "consumer"
PACKAGE = "aggregator"
CORE = f"{PACKAGE}.core"
EDGES = (f"{PACKAGE}.kafka_reader", f"{PACKAGE}.postgres")
SETTINGS = f"{PACKAGE}.settings"
APP = f"{PACKAGE}.app"
EDGE_USERS = {APP, f"{PACKAGE}.loop", f"{PACKAGE}.flusher"}
DRIVERS = ("kafka", "psycopg2")  # the clients of the two edges


GRAPH = import_graph(CONSUMER, PACKAGE)


def ours(imports: Iterable[str]) -> set[str]:
    return {name for name in imports if within(name, PACKAGE)}


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
