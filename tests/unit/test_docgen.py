"""The generated files are current: docs/configuration.md, docs/metrics.md and mevwatch/metric_owners.py."""

from __future__ import annotations

import pytest

from mevwatch.collectors.base import MetricSpec
from mevwatch.daemon.docgen import (
    all_metric_specs,
    configuration_md,
    declaration_problems,
    metric_owners_py,
    metrics_md,
)
from mevwatch.families import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from tests.support.peers import REPO

REGENERATE = "regenerate with `.venv/bin/python -m mevwatch.daemon.docgen`"


def test_configuration_md_is_current() -> None:
    assert (REPO / "docs" / "configuration.md").read_text() == configuration_md(), REGENERATE


def test_metrics_md_is_current() -> None:
    assert (REPO / "docs" / "metrics.md").read_text() == metrics_md(), REGENERATE


def test_metrics_md_lists_every_family_with_its_exposed_names() -> None:
    text = metrics_md()
    for _owner, spec in all_metric_specs().values():
        assert f"`{spec.sample_names[0]}`" in text
    assert "`mevwatch_collector_errors_total` | counter" in text
    assert "`mevwatch_build_info` | info" in text
    assert "| `mevwatch_filesystem_time_to_full_seconds` | gauge | seconds |" in text


def test_spec_unit_comes_from_the_name_and_bad_types_are_refused() -> None:
    assert MetricSpec("mevwatch_x_bytes", "gauge", "h").unit == "bytes"
    assert MetricSpec("mevwatch_x_used_ratio", "gauge", "h").unit == "ratio"
    assert MetricSpec("mevwatch_x", "gauge", "h", unit="wei").unit == "wei"
    assert MetricSpec("mevwatch_x", "gauge", "h").unit == ""
    with pytest.raises(ValueError, match="unknown metric type 'gauges'"):
        MetricSpec("mevwatch_x", "gauges", "h")


def test_declaration_problems_name_each_mismatch() -> None:
    specs = [MetricSpec("mevwatch_a", "gauge", "h", ("x",)), MetricSpec("mevwatch_b", "counter", "h")]
    a = GaugeMetricFamily("mevwatch_a", "h", labels=["y"])
    a.add_metric(["1"], 1)
    b = GaugeMetricFamily("mevwatch_b", "h", value=1)
    c = CounterMetricFamily("mevwatch_c", "h", value=1)
    assert declaration_problems([a, b, c], specs) == [
        "mevwatch_a: sample labels ['y'], declared ['x']",
        "mevwatch_b: emitted as gauge, declared counter",
        "mevwatch_c: not declared",
    ]
    h = HistogramMetricFamily("mevwatch_h", "h", labels=["x"])
    h.add_metric(["1"], [("1.0", 1), ("+Inf", 2)], 3.0)
    assert declaration_problems([h], [MetricSpec("mevwatch_h", "histogram", "h", ("x",))]) == []


def test_declaration_problems_name_a_help_text_that_differs_from_the_declaration() -> None:
    spec = MetricSpec("mevwatch_a", "gauge", "Declared help", ("x",))
    drifted = GaugeMetricFamily("mevwatch_a", "Other help", labels=["x"])
    assert declaration_problems([drifted], [spec]) == [
        "mevwatch_a: emitted with help 'Other help', declared 'Declared help'"
    ]
    built = spec.gauge()
    built.add_metric(["1"], 1.0)
    assert declaration_problems([built], [spec]) == []


def test_a_declaration_builds_only_families_of_its_own_type() -> None:
    spec = MetricSpec("mevwatch_c", "counter", "h")
    assert spec.counter(2.0).samples[0].name == "mevwatch_c_total"
    with pytest.raises(TypeError, match="declared a counter, not a gauge"):
        spec.gauge()


def test_metric_owners_py_is_current() -> None:
    assert (REPO / "mevwatch" / "metric_owners.py").read_text() == metric_owners_py(), REGENERATE
