"""The package imports without cycles: each module alone, and no cycle among its imports.

A cycle that works only in one import order, or only because one side imports lazily
inside a function (module A importing B's private helpers while B imports A when it
runs), is a tangle even when it does not fail: the import graph, lazy imports included,
must have no cycle, and every module must import with nothing of emclass2d loaded before.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

import pytest

import emclass2d.core
import emclass2d.jobtypes
import emclass2d.nodes

PACKAGES = (emclass2d.core, emclass2d.nodes, emclass2d.jobtypes)
#: Modules that need an optional third-party package, and that package.
OPTIONAL = {"emclass2d.jobtypes.ccpem.job": "pipeliner"}


def _modules() -> dict[str, Path]:
    """Every module of the product packages: dotted name -> source file."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        out[pkg.__name__] = Path(pkg.__file__)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + "."):
            if info.name.endswith(".__main__"):
                continue
            spec = importlib.util.find_spec(info.name)
            out[info.name] = Path(spec.origin)
    return out


MODULES = _modules()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_imports_alone(name):
    """Import ``name`` with no emclass2d module loaded before it."""
    saved = {k: v for k, v in sys.modules.items() if k == "emclass2d" or k.startswith("emclass2d.")}
    for k in saved:
        del sys.modules[k]
    try:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if OPTIONAL.get(name) and exc.name == OPTIONAL[name]:
                pytest.skip(f"{name} needs {exc.name}")
            raise
    finally:
        for k in [k for k in sys.modules if k == "emclass2d" or k.startswith("emclass2d.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def _imports(name: str, path: Path) -> set[str]:
    """emclass2d modules that ``name`` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("emclass2d"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("emclass2d"))
    return {m for m in out if m in MODULES and m != name}


def test_no_import_cycles():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_core_imports_neither_nodes_nor_jobtypes():
    for name, path in MODULES.items():
        if name.startswith("emclass2d.core"):
            bad = {m for m in _imports(name, path) if not m.startswith("emclass2d.core")}
            assert not bad, f"{name} imports {sorted(bad)}"
