"""Alert templates: labels, humanized values, and the expressions that are refused."""

from __future__ import annotations

import pytest

from mevwatch.alerts.templates import check_template, render_template


def test_templates_render_labels_and_humanized_values() -> None:
    labels = {"host": "h1", "mountpoint": "/data"}
    assert render_template("{{ $labels.mountpoint }} on {{$labels.host}}", labels, 0) == "/data on h1"
    assert render_template("{{ $value | humanizePercentage }}", labels, 0.873) == "87.3%"
    assert render_template("{{ $value | humanizeDuration }}", labels, 3725) == "1h2m5s"
    assert render_template("{{ $value | humanize }}", labels, 1_500_000) == "1.5M"
    assert render_template("{{ $value }} / {{ $labels.nope }}", labels, 2.5) == "2.5 / "
    with pytest.raises(ValueError, match="unsupported template"):
        check_template("{{ .Labels.x }}")
    with pytest.raises(ValueError, match="unclosed"):
        check_template("{{ $value ")


def test_metric_expressions_read_the_series_own_samples_and_never_invent_one() -> None:
    from mevwatch.alerts.rule import Rule
    from mevwatch.alerts.templates import template_metrics

    text = "{{ $metric.m_dead }} dead, {{ $metric.m_live | humanize }} live, {{ $metric.m_dead }}"
    assert template_metrics(check_template(text)) == ("m_dead", "m_live")
    seen = {"m_dead": 1500.0, "m_live": 2_000_000.0}
    assert render_template(text, {}, 0.6, seen.get) == "1500 dead, 2M live, 1500"
    assert render_template(text, {}, 0.6, {"m_dead": 3.0}.get) == "3 dead, unknown live, 3"
    assert render_template(text, {}, 0.6) == "unknown dead, unknown live, unknown"
    rule = Rule.model_validate({"name": "R", "metric": "m_share", "when": {"metric": "m_dead"},
                                "summary": text, "runbook": "dead-tuples"})
    assert rule.inputs == ("m_share", "m_dead", "m_live")  # a shown metric is read (and wakes the rule) too
