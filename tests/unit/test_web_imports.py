"""The web package (worker/web/) imports one way: no module of it is imported back,
directly or through others, by what it imports (the old server <-> ui cycle).

Read from the source (imports inside functions included), not from sys.modules: a
cycle hidden in a function body is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "worker"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each module of the package and the modules of the package it imports."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[_module_name(path)] = names
    return {m: {n for n in names if n in found and n != m} for m, names in found.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def test_no_web_module_is_imported_back_by_what_it_imports() -> None:
    graph = _imports()
    web = sorted(m for m in graph if m == "worker.web" or m.startswith("worker.web."))
    assert {"worker.web.app", "worker.web.api", "worker.web.ui"} <= set(web)
    cycles = [m for m in web if m in _reachable(graph, m)]
    assert cycles == []


def test_the_app_is_imported_by_no_other_web_module() -> None:
    graph = _imports()
    importers = sorted(m for m, names in graph.items() if "worker.web.app" in names)
    assert all(not m.startswith("worker.web") for m in importers), importers
