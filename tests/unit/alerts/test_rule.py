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
