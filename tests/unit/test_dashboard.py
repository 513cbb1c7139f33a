"""deploy/grafana/mevwatch.json: current, current Grafana schema, variables, and queries over declared metrics."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mevwatch.alerts.runbooks import runbook_anchors
from mevwatch.daemon.dashboard import ROWS, dashboard_json, metric_names, panel_queries
from mevwatch.daemon.docgen import all_metric_specs
from tests.support.peers import REPO

FILE = REPO / "deploy" / "grafana" / "mevwatch.json"
SECTIONS = ("fleet", "alerts", "memory", "disk", "services", "cpu governor", "rpc", "peers", "mempool", "gas",
            "wallets", "engine latency", "postgresql", "integrity", "logs", "mevwatch itself")


def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(FILE.read_text())
    return doc


def test_dashboard_file_is_current() -> None:
    assert FILE.read_text() == dashboard_json(), "regenerate with `.venv/bin/python -m mevwatch.daemon.dashboard`"


def test_schema_and_variables() -> None:
    doc = _doc()
    assert doc["schemaVersion"] >= 39
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    inst = variables["host"]
    assert inst["query"]["query"] == "label_values(mevwatch_build_info, host)"
    assert inst["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert inst["includeAll"] is True


def test_a_row_per_runbook_section() -> None:
    rows = [p["title"].lower() for p in _doc()["panels"] if p["type"] == "row"]
    for section in SECTIONS:
        assert any(section in r for r in rows), f"no row for {section}: {rows}"


def test_panels_use_the_datasource_variable_and_fit_the_grid() -> None:
    panels = _doc()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"


@pytest.mark.parametrize(("row", "panel", "expr"), panel_queries(), ids=lambda v: str(v)[:60])
def test_every_query_uses_declared_metrics_of_the_chosen_host(row: str, panel: str, expr: str) -> None:
    declared = {name for _, spec in all_metric_specs().values() for name in spec.sample_names}
    names = metric_names(expr)
    assert names, f"{row} / {panel}: no mevwatch metric in {expr}"
    assert names <= declared, f"{row} / {panel}: undeclared {sorted(names - declared)}"
    for name in names:
        assert expr.count(name + '{host=~"$host"') >= 1, f"{name} not filtered by $host in {expr}"


def test_metric_names_finds_every_name() -> None:
    expr = 'rate(mevwatch_a_total{x="mevwatch_not \\"q\\""}[5m]) / on(i) mevwatch_b{y="z"}'
    assert metric_names(expr) == {"mevwatch_a_total", "mevwatch_b"}
    assert len(ROWS) == len(SECTIONS)


def test_rows_link_to_runbook_sections_that_exist() -> None:
    anchors = runbook_anchors()
    assert anchors is not None
    for row in ROWS:
        assert row.runbook in anchors, f"{row.title}: no anchor {row.runbook!r} in docs/runbooks.md"
    links = {link["url"] for p in _doc()["panels"] for link in p.get("links", [])}
    assert "${runbook_url}#memory-high" in links
