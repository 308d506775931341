"""btcpipe, the package both scripts install, stands on its own: it imports nothing of the
producer, the consumer or the tests, and of other libraries only orjson and msgspec (what
both images install anyway); nothing in it imports in a cycle."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.imports import find_cycle, import_graph, restricted, within

SOURCE = Path(__file__).resolve().parents[2] / "btcpipe" / "src"
GRAPH = import_graph(SOURCE, "btcpipe")
ALLOWED_LIBRARIES = ("orjson", "msgspec")


def test_every_module_of_the_package_is_read() -> None:
    assert {"btcpipe.contract.rules", "btcpipe.contract.events", "btcpipe.settings"} <= set(GRAPH)
    assert "btcpipe.contract.rules" in GRAPH["btcpipe.contract.events"]


def test_it_imports_only_itself_the_standard_library_orjson_and_msgspec() -> None:
    foreign = {
        (module, name)
        for module, imports in GRAPH.items()
        for name in imports
        if not within(name, "btcpipe", *ALLOWED_LIBRARIES)
        and name.split(".")[0] not in sys.stdlib_module_names
    }
    assert foreign == set()


def test_it_has_no_import_cycle() -> None:
    assert find_cycle(restricted(GRAPH, "btcpipe")) is None
