"""Every metric is declared once, as a ``MetricSpec``, and its families are built from that declaration.

Each module's syntax tree is read: a family class constructed by hand (``GaugeMetricFamily("name", "help")``),
a bare ``Metric`` given a written name, or a ``MetricSpec`` made inside a function (a declaration docs/metrics.md
cannot see) fails here. Only ``mevwatch/families.py`` itself, where ``MetricSpec`` builds families, constructs
family classes. Copies of families whose name comes from elsewhere (the store's copy, textfile passthrough) pass
the name on from the family they copy and are not declarations.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from mevwatch.daemon.docgen import all_metric_specs
from mevwatch.families import MetricSpec
from tests.unit.test_import_graph import PACKAGES, modules

#: the one module that constructs family classes: MetricSpec's builders and the classes themselves
BUILDER = "mevwatch.families"


def hand_built_families(path: Path) -> list[str]:
    """Where ``path`` builds a family without a declaration, as ``file:line: what``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[str] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            first = node.args[0] if node.args else None
            if name.endswith("MetricFamily"):
                found.append(f"{path.name}:{node.lineno}: {name} built by hand")
            elif name == "Metric" and isinstance(first, ast.Constant | ast.JoinedStr):
                found.append(f"{path.name}:{node.lineno}: Metric built by hand with a written name")
            elif name == "MetricSpec" and in_function:
                found.append(f"{path.name}:{node.lineno}: MetricSpec declared inside a function")
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def test_no_module_builds_a_family_without_a_declaration() -> None:
    problems = [p for name, path in modules().items() if name != BUILDER for p in hand_built_families(path)]
    assert problems == []


def test_the_finder_sees_each_way_of_building_a_family_by_hand(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from mevwatch.families import GaugeMetricFamily, Metric, MetricSpec\n"
        "from mevwatch import families\n"
        "OK = MetricSpec('mevwatch_ok', 'gauge', 'Declared')\n"
        "SPECS = {n: MetricSpec(f'mevwatch_{n}', 'gauge', 'h') for n in ('a', 'b')}\n"
        "def f(fam: Metric) -> list[Metric]:\n"
        "    copy = Metric(fam.name, fam.documentation, fam.type, fam.unit)\n"
        "    return [OK.gauge(1.0), copy,\n"
        "            GaugeMetricFamily('mevwatch_x', 'h', value=1.0),\n"
        "            families.CounterMetricFamily('mevwatch_y', 'h', value=1.0),\n"
        "            Metric('mevwatch_z', 'h', 'gauge'),\n"
        "            MetricSpec('mevwatch_w', 'gauge', 'h').gauge(1.0)]\n"
    )
    assert hand_built_families(source) == [
        "m.py:8: GaugeMetricFamily built by hand",
        "m.py:9: CounterMetricFamily built by hand",
        "m.py:10: Metric built by hand with a written name",
        "m.py:11: MetricSpec declared inside a function",
    ]


def test_every_declaration_in_the_package_is_documented() -> None:
    """A module-level MetricSpec that no declaration table lists would be emitted but missing from
    docs/metrics.md and the contract test."""
    documented = all_metric_specs()
    undocumented: list[str] = []
    seen = 0
    for name in modules():
        if not name.startswith(tuple(f"mevwatch.{p}" for p in PACKAGES if p != "mevwatch")):
            continue
        for value in vars(importlib.import_module(name)).values():
            items = value.values() if isinstance(value, dict) else value if isinstance(value, tuple) else (value,)
            for spec in items:
                if isinstance(spec, MetricSpec):
                    seen += 1
                    if documented.get(spec.name, ("", None))[1] != spec:
                        undocumented.append(f"{name}: {spec.name}")
    assert seen >= len(documented)
    assert undocumented == []
