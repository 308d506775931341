"""The producer's layers, read from the imports of every module under producer/pricefeed (with
ast, so that an import under TYPE_CHECKING or inside a function counts as much as any):
settings is a leaf; the source seam imports no concrete part; sources see neither Kafka nor
the settings; the edges see no source; only the app wires Kafka in; no cycle at all."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

from tests.imports import Graph, find_cycle, restricted, within
from tests.imports import import_graph as read_graph

PRODUCER = Path(__file__).resolve().parents[2] / "producer"


def is_module(name: str) -> bool:
    path = PRODUCER.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@cache
def import_graph() -> Graph:
    """module -> the pricefeed modules it imports."""
    return restricted(read_graph(PRODUCER, "pricefeed"), "pricefeed")


def importers_of(target: str, graph: Graph) -> set[str]:
    """The modules importing `target` or anything inside it."""
    return {module for module, imports in graph.items() if any(within(n, target) for n in imports)}


def inside(package: str, graph: Graph) -> list[str]:
    return [m for m in graph if within(m, package)]


# --- the graph is read right -----------------------------------------------------------------


def test_the_graph_holds_every_module_and_its_imports() -> None:
    graph = import_graph()
    assert {"pricefeed.app", "pricefeed.settings", "pricefeed.sources.base"} <= set(graph)
    assert "pricefeed.kafka_sink" in graph["pricefeed.app"]
    assert "pricefeed.sources.registry" in graph["pricefeed.app"]
    assert "pricefeed.settings" in graph["pricefeed.sources.registry"]


def test_the_cycle_check_finds_a_cycle_and_only_find_cycle() -> None:
    graph = {
        "a": frozenset({"b"}),
        "b": frozenset({"c", "d"}),
        "c": frozenset({"d"}),
        "d": frozenset(),
    }
    assert find_cycle(graph) is None
    assert find_cycle({**graph, "d": frozenset({"b"})}) in (["b", "c", "d", "b"], ["b", "d", "b"])
    assert find_cycle({"x": frozenset({"x"})}) == ["x", "x"]


# --- the layers ------------------------------------------------------------------------------


def test_no_import_cycle_at_all() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_settings_is_a_leaf_and_only_the_app_and_the_registry_read_it() -> None:
    graph = import_graph()
    assert graph["pricefeed.settings"] == frozenset()
    assert importers_of("pricefeed.settings", graph) == {
        "pricefeed.app",
        "pricefeed.sources.registry",
    }


def test_the_source_seam_imports_only_leaves_and_never_settings() -> None:
    graph = import_graph()
    for seam in ("pricefeed.sources.base",):
        for module in graph[seam]:
            assert module != "pricefeed.settings", seam
            assert graph.get(module) == frozenset(), f"{seam} imports {module}, not a leaf"


CONCRETE_SOURCES = [
    m for m in inside("pricefeed.sources", import_graph()) if m != "pricefeed.sources.registry"
]


@pytest.mark.parametrize("module", CONCRETE_SOURCES)
def test_sources_see_neither_kafka_nor_the_settings(module: str) -> None:
    forbidden = [
        name
        for name in import_graph()[module]
        if name.startswith(("pricefeed.kafka_sink", "pricefeed.kafka_tail"))
        or name == "pricefeed.settings"
    ]
    assert not forbidden, f"{module} imports {forbidden}"


@pytest.mark.parametrize(
    "module", ["pricefeed.sources.base", "pricefeed.sources.polling", "pricefeed.sources.streaming"]
)
def test_the_seam_and_the_runners_know_no_concrete_source_and_no_binance(module: str) -> None:
    concrete = (
        "pricefeed.binance",
        "pricefeed.sources.ticker",
        "pricefeed.sources.simulated",
        "pricefeed.sources.replay",
        "pricefeed.sources.registry",
    )
    forbidden = [n for n in import_graph()[module] if n.startswith(concrete)]
    assert not forbidden, f"{module} imports {forbidden}"


@pytest.mark.parametrize(
    "edge", ["pricefeed.binance", "pricefeed.kafka_sink", "pricefeed.kafka_tail"]
)
def test_the_edges_import_no_source(edge: str) -> None:
    graph = import_graph()
    allowed = {"pricefeed.sources.base"} if edge == "pricefeed.kafka_sink" else set()
    for module in inside(edge, graph):
        sources = {n for n in graph[module] if n.startswith("pricefeed.sources")}
        assert sources <= allowed, f"{module} imports {sources - allowed}"


def test_only_the_app_wires_kafka_in_and_nothing_imports_the_app() -> None:
    graph = import_graph()
    kafka_users = importers_of("pricefeed.kafka_sink", graph)
    assert kafka_users - set(inside("pricefeed.kafka_sink", graph)) == {"pricefeed.app"}
    assert importers_of("pricefeed.app", graph) == set()
    # The topic's tail (where a trade source resumes) is handed to it by the registry.
    assert importers_of("pricefeed.kafka_tail", graph) == {"pricefeed.sources.registry"}


def test_the_trade_sources_core_does_no_io() -> None:
    """Reading frames and joining REST with the stream import no edge: pure, unit-tested."""
    graph = import_graph()
    for module in ("pricefeed.sources.trades.frames", "pricefeed.sources.trades.join"):
        assert {n for n in graph[module] if not n.startswith("pricefeed.sources.trades")} == set()


def names(graph: Graph) -> Iterable[str]:
    return (name for imports in graph.values() for name in imports)


def test_every_import_names_a_module_that_exists() -> None:
    """A typo'd or stale module name would slip past the rules above."""
    missing = sorted({name for name in names(import_graph()) if not is_module(name)})
    assert missing == []
