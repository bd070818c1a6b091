"""The package's layers: no import cycle between its subpackages (and top-level modules), counting imports
inside functions too (only ``if TYPE_CHECKING:`` blocks are left out)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "crosstask"


def unit(module: str) -> str:
    """``crosstask.x`` for anything inside subpackage or module ``x``."""
    return ".".join(module.split(".")[:2])


def imported(tree: ast.AST) -> list[str]:
    found: list[str] = []

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module and node.module.startswith("crosstask."):
                found.append(node.module)

        def visit_Import(self, node: ast.Import) -> None:
            found.extend(a.name for a in node.names if a.name.startswith("crosstask."))

    Visitor().visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        if module == "crosstask":
            continue  # the package's own lazy front door names everything
        for target in imported(ast.parse(path.read_text())):
            if unit(target) != unit(module):
                graph[unit(module)].add(unit(target))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_subpackages() -> None:
    graph = import_graph()
    found = cycles(graph)
    edges = [f"{a} -> {b}" for c in found for a in c for b in sorted(graph[a]) if b in c]
    assert not found, "import cycles: " + "; ".join(edges)
