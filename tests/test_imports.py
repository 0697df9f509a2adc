"""The import graph of ``steerlib/``: no circle between modules, and the library below the
application layer and the test factory.

Every ``import`` / ``from ... import`` of every module counts, wherever it sits (module level,
inside a function, under ``if TYPE_CHECKING``), with relative imports resolved. An edge goes to
the module named, or to ``package.name`` when that is a module (``from . import x``). Importing a
submodule also runs its packages' ``__init__``, but those implicit edges are not counted: they
would make every package that re-exports its modules a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "steerlib"

#: May import steerlib.app / steerlib.testing: the application layer, the test factory, the model
#: zoo, and the deprecated shims of moved modules (one release).
ALLOWED_PREFIXES = ("steerlib.app", "steerlib.testing", "steerlib.zoo")
DEPRECATED_SHIMS = {"steerlib.cli", "steerlib.demo", "steerlib.weights", "steerlib.loading", "steerlib.models",
                    "steerlib.models.tiny_llava"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The steerlib modules ``name`` imports (anywhere in its source)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()

    def add(target: str) -> None:
        # the longest prefix of ``target`` that is a steerlib module
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "steerlib":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "steerlib":
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in modules else source)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(_closed_path(sorted(comp), graph))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _closed_path(comp: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest circle through the component's first module (breadth-first back to it)."""
    members = set(comp)
    start = comp[0]
    prev: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [*reversed(path), start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return comp  # pragma: no cover - a component always closes


def test_the_scanner_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "steerlib.eval.store" in graph["steerlib.eval.rows"]  # from .store import ... (relative)
    assert "steerlib.eval.rows" in graph["steerlib.eval.report"]
    assert "steerlib.zoo" in graph["steerlib.app.cli"]  # imported inside the subcommand functions
    fake = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(fake) == [["a", "b", "c", "a"]]


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import circles (each module imports the next): " + "; ".join(" -> ".join(c) for c in found)


@pytest.mark.parametrize("forbidden", ["steerlib.app", "steerlib.testing"])
def test_the_library_does_not_import_the_app_or_the_test_factory(forbidden):
    bad = []
    for name, targets in import_graph().items():
        if name.startswith(ALLOWED_PREFIXES) or name in DEPRECATED_SHIMS:
            continue
        hits = sorted(t for t in targets if t == forbidden or t.startswith(forbidden + "."))
        if hits:
            bad.append(f"{name} imports {', '.join(hits)}")
    assert not bad, f"library modules must not import {forbidden}: " + "; ".join(bad)
