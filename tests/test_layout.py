"""The core's modules import each other without cycles, so each can be read, tested and replaced on its own.

Every import in image_search/ that runs counts, at the top of a module or inside a function (a function-level import
can hide a cycle, but it is one all the same). Imports under `if TYPE_CHECKING:` never run: they name the service
in the internals' type hints, so they are left out. Run it with:

    /work/main/.venv/bin/python -m pytest tests/test_layout.py -q
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "image_search"

# Cycles in modules that are being re-laid elsewhere, each one edge (importer, imported) that is left out of the
# graph until that work is merged; a listed edge that no longer exists fails the test, so it cannot linger.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package's __init__ under the package's own name)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The module that importing `name` runs: itself, or the nearest enclosing package of ours."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's own modules that `module` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    type_hints_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                       for statement in node.body for inner in ast.walk(statement)}
    for node in ast.walk(tree):
        if id(node) in type_hints_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[:len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from package import name` imports the submodule package.name when there is one.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            known = _known(target, modules) if target.split(".")[0] == PACKAGE.name else None
            if known and known != module:
                found.add(known)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for neighbour in sorted(graph.get(node, ())):
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_is_read_from_every_kind_of_import():
    """The parser sees relative, absolute, submodule and function-level imports (else the cycle test proves nothing)."""
    graph = import_graph()
    assert "image_search.errors" in graph["image_search.config"]  # only imported inside a function
    assert "image_search.vectors.kinds" in graph["image_search.config"]  # from .vectors.kinds import ...
    assert "image_search.store.schema" in graph["image_search.store.sql"]  # from . import schema
    assert "image_search.config" in graph["image_search.store"]  # from ..config import ...
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "image_search.service" not in graph["image_search.search.run"]  # only under TYPE_CHECKING
    assert "image_search.search.query" in graph["image_search.ingest.plan"]


def test_no_import_cycles_among_image_search_modules():
    graph = import_graph()
    for importer, imported in sorted(KNOWN_CYCLE_EDGES):
        assert imported in graph.get(importer, set()), (
            f"{importer} no longer imports {imported}: remove that edge from KNOWN_CYCLE_EDGES")
        graph[importer].discard(imported)
    found = cycles(graph)
    assert not found, f"modules that import each other (directly or around a loop): {found}"
