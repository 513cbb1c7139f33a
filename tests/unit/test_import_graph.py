"""The module import graph: no circle, and collectors see the daemon only through their context.

Every ``import`` and ``from ... import`` in every module is read from its syntax tree (function-level
and TYPE_CHECKING imports included: a circle drawn lazily is still a boundary in the wrong place).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.support.peers import REPO

#: source folder -> the package it is installed as (pyproject's package-dir)
PACKAGES = {"mevwatch": "mevwatch", "daemon": "mevwatch.daemon", "collectors": "mevwatch.collectors",
            "alerts": "mevwatch.alerts"}


def modules(repo: Path = REPO) -> dict[str, Path]:
    """Every module of the package by dotted name (the mevwatch/ symlinks are not followed twice)."""
    out: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        root = repo / folder
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if folder == "mevwatch" and rel.parts[0] in PACKAGES:
                continue  # the symlinks to daemon/, collectors/, alerts/
            parts = [p for p in rel.with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def imported_names(path: Path, module: str) -> Iterator[str]:
    """Dotted names ``path`` imports: each ``import a.b``, and for ``from a import b`` both a and a.b."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(repo: Path = REPO) -> dict[str, set[str]]:
    """module -> the modules of the package it imports."""
    mods = modules(repo)
    return {name: {n for n in imported_names(path, name) if n in mods and n != name} for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_every_package_and_its_edges() -> None:
    graph = import_graph()
    assert {"mevwatch.daemon.config", "mevwatch.collectors.base", "mevwatch.alerts.config",
            "mevwatch.alerts.sinks.webhook"} <= set(graph)
    assert "mevwatch.alerts.config" in graph["mevwatch.daemon.config"]
    assert "mevwatch.collectors.base" in graph["mevwatch.collectors.memory"]


def test_the_cycle_finder_finds_a_circle_drawn_through_a_function_level_import(tmp_path: Path) -> None:
    for folder in PACKAGES:
        (tmp_path / folder).mkdir()
    (tmp_path / "daemon" / "a.py").write_text("from mevwatch.daemon.b import x\n")
    (tmp_path / "daemon" / "b.py").write_text("def f() -> None:\n    from mevwatch.daemon import a\n")
    (tmp_path / "daemon" / "c.py").write_text("from . import a\n")
    graph = import_graph(tmp_path)
    assert graph["mevwatch.daemon.c"] == {"mevwatch.daemon.a"}
    assert cycles(graph) == [["mevwatch.daemon.a", "mevwatch.daemon.b"]]


def test_no_import_circle() -> None:
    assert cycles(import_graph()) == []


def test_no_collector_imports_the_daemon() -> None:
    """Collectors see the daemon only through their context (options, blocking pool, state store)."""
    graph = import_graph()
    reaching = {(mod, dep) for mod, deps in graph.items() if mod.startswith("mevwatch.collectors")
                for dep in deps if dep.startswith("mevwatch.daemon")}
    assert reaching == set()


def test_the_shared_modules_import_no_part_of_mevwatch() -> None:
    """mevwatch/*.py (families, fields, redaction, blocking) sit under all three packages."""
    graph = import_graph()
    shared = [m for m in graph if m.count(".") == 1 and m.split(".")[1] not in {*PACKAGES, "__main__"}]
    assert "mevwatch.families" in shared
    assert {m: sorted(d for d in graph[m] if d.count(".") > 1 or d.split(".")[1] in PACKAGES)
            for m in shared} == {m: [] for m in shared}


def test_a_checkout_maps_the_three_folders_as_installing_does() -> None:
    """mevwatch/<part> links to <part>/, as package-dir maps mevwatch.<part> to <part>: an editor or checker
    that does not install the package resolves the same modules from the repository root."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_dir = project["tool"]["setuptools"]["package-dir"]
    for folder in ("daemon", "collectors", "alerts"):
        link = REPO / "mevwatch" / folder
        assert link.is_symlink(), link
        assert link.resolve() == (REPO / folder).resolve()
        assert package_dir[f"mevwatch.{folder}"] == folder
    pyright = project["tool"]["pyright"]
    assert {"daemon", "collectors", "alerts", "mevwatch"} <= set(pyright["include"])
    assert pyright["reportMissingImports"] == "error"
