"""The import graph of the library, read from the source (every import statement: module level,
function-local and ``if TYPE_CHECKING:`` ones alike)."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "shared"
PACKAGE = "sendit"


def module_files(base: Path = LIBRARY, package: str = PACKAGE) -> dict[str, Path]:
    """``{"sendit.store.files": path, ...}`` for every module of the package (``__init__`` as the package)."""
    found: dict[str, Path] = {}
    for path in sorted((base / package).rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported_names(path: Path, module: str, is_package: bool = False) -> set[str]:
    """Every absolute module name an import statement of ``path`` may load (``from a import b``: ``a.b``
    and ``a``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """``module -> the library modules it imports`` (edges inside the package only)."""
    modules = modules if modules is not None else module_files()
    edges: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = {n for n in imported_names(path, module, is_package) if n in modules}
        edges[module] = targets - {module}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def importers(edges: dict[str, set[str]], target: str) -> set[str]:
    """Modules that import ``target`` or a module below it."""
    return {m for m, ts in edges.items() if any(t == target or t.startswith(target + ".") for t in ts)}


def reachable(start_names: Iterable[str], edges: dict[str, set[str]]) -> set[str]:
    """Every library module loaded, transitively, by importing ``start_names`` (their packages included)."""
    seen: set[str] = set()
    todo = [n for n in start_names if n in edges]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        parents = [".".join(parts[:i]) for i in range(1, len(parts))]
        todo.extend(p for p in parents if p in edges and p not in seen)
        todo.extend(edges[module] - seen)
    return seen


def entry_point_modules() -> set[str]:
    """The library modules ``functions/main.py`` loads, transitively."""
    edges = graph()
    main = ROOT / "functions" / "main.py"
    return reachable(imported_names(main, "main"), edges)
