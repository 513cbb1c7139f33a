"""What one rule's comparison means: op and threshold, hysteresis at the clear threshold, NaN."""

from __future__ import annotations

import math

import pytest

from mevwatch.alerts.config import AlertsConfig
from mevwatch.alerts.rule import Rule


def rule(**fields: object) -> Rule:
    return Rule.model_validate({"name": "R", "metric": "m", "summary": "s", "runbook": "memory-high", **fields})


def test_an_inactive_rule_compares_with_the_threshold_and_an_active_one_with_clear() -> None:
    r = rule(op=">", threshold=0.9, clear=0.8)
    assert not r.passes(0.85, active=False)
    assert r.passes(0.91, active=False)
    assert r.passes(0.85, active=True)  # held between clear and threshold
    assert r.passes(0.8, active=True)  # exactly at clear keeps it
    assert not r.passes(0.79, active=True)
    low = rule(op="<", threshold=10, clear=20)
    assert low.passes(20, active=True)
    assert not low.passes(20.5, active=True)
    assert not low.passes(15, active=False)


@pytest.mark.parametrize("op", [">", ">=", "<", "<=", "==", "!="])
def test_nan_never_passes(op: str) -> None:
    assert not rule(op=op, threshold=1).passes(math.nan, active=False)


def test_window_is_the_increase_or_rate_window() -> None:
    assert rule(increase="5m").window == 300.0
    assert rule(rate="1m").window == 60.0
    assert rule().window == 0.0


def test_an_alerts_section_built_in_code_has_its_inline_rules_and_stays_frozen() -> None:
    cfg = AlertsConfig(rules=[rule()])
    assert [r.name for r in cfg.all_rules] == ["R"]
    with pytest.raises(ValueError, match="frozen"):
        cfg.rules = []  # type: ignore[misc]


def test_annotations_are_more_texts_read_rendered_and_exported_like_the_summary() -> None:
    from mevwatch.alerts.promrules import export_rule
    from mevwatch.alerts.rules import Alert, labelset, step

    r = rule(summary="{{ $labels.path }} changed", annotations={
        "diff": '{{ $metric.m_change_info | label "diff" }}', "seen": "{{ $metric.m_changes }} change(s)"})
    assert r.inputs == ("m", "m_change_info", "m_changes")  # what the texts show is read (and wakes the rule)
    series = labelset({"path": "/etc/x"})
    samples = {"m_change_info": {labelset({"path": "/etc/x", "diff": "-a\n+b"}): 1.0},
               "m_changes": {series: 2.0}}
    alerts: dict[str, Alert] = {}
    step(r, {series: 1.0}, alerts, 0.0, "h1", "rb", samples=samples)
    [a] = alerts.values()
    assert (a.annotations["diff"], a.annotations["seen"]) == ("-a\n+b", "2 change(s)")
    samples["m_change_info"] = {labelset({"path": "/etc/x", "diff": "-a\n+c"}): 1.0}  # changed again
    step(r, {series: 1.0}, alerts, 1.0, "h1", "rb", samples=samples)
    assert a.annotations["diff"] == "-a\n+c"
    exported = export_rule(r, "rb")["annotations"]
    assert list(exported) == ["summary", "diff", "seen", "runbook_url"]  # no empty description
    for name in ("summary", "runbook_url", "silence", "not a name"):
        with pytest.raises(ValueError, match="annotation name"):
            rule(annotations={name: "x"})
    with pytest.raises(ValueError, match="unsupported template"):
        rule(annotations={"diff": "{{ .Labels.x }}"})
