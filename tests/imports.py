"""The import graph of a package, read with ast (nothing is imported): the layer tests of the
producer, the consumer and btcpipe hold their rules against it. An import inside a function
or under TYPE_CHECKING counts as much as any."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

Graph = Mapping[str, frozenset[str]]


def module_paths(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` (a folder under `root`) by its dotted name."""
    paths = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        paths[".".join(parts)] = path
    return paths


def imported_names(path: Path, name: str, modules: Iterable[str]) -> set[str]:
    """Every module `path` imports, by full name; `from package import module` counts as
    that module when it is one of `modules`."""
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


def import_graph(root: Path, package: str) -> dict[str, frozenset[str]]:
    """module -> every module it imports (its own package's and any other)."""
    paths = module_paths(root, package)
    return {name: frozenset(imported_names(path, name, paths)) for name, path in paths.items()}


def within(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def restricted(graph: Graph, *prefixes: str) -> dict[str, frozenset[str]]:
    """The graph with only the imports inside `prefixes`."""
    return {
        m: frozenset(n for n in imports if within(n, *prefixes)) for m, imports in graph.items()
    }


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
