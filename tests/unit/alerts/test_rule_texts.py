"""The default rules' texts tell the truth about the rule: a window, a wait or a limit named in a page is the
rule's own (``{{ $window }}``, ``{{ $for }}``, ``{{ $threshold }}``), an override included, on mevwatch's pages
and in the exported Prometheus rules alike."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from mevwatch.alerts.promrules import export_rule
from mevwatch.alerts.rule import Rule
from mevwatch.alerts.rules import Alert, labelset, step
from mevwatch.alerts.templates import for_text
from mevwatch.daemon.config import load_config_text
from tests.support.rule_cases import default_rules, prom_render

NEW_WINDOW = 17 * 60.0  # no default rule counts over 17 minutes: found in a text, it came from the override
NEW_WINDOW_TEXT = "17m"

#: a duration written as a word or a number with a unit, outside the {{ }} expressions
_LITERAL_DURATION_RE = re.compile(
    r"\b(?:\d+(?:[.,]\d+)?\s*(?:ms|s|m|h|d|w|sec|secs|seconds?|min|mins|minutes?|hours?|days?|weeks?)"
    r"|(?:an?|the|one)\s+(?:second|minute|hour|day|week))\b", re.IGNORECASE)
_EXPRESSION_RE = re.compile(r"\{\{.*?\}\}", re.DOTALL)

#: literal durations a default text may keep, each a fact that is not one of its rule's fields
ALLOWED_LITERALS = {
    ("PostgresSlowStatements", "100ms"): "the postgres collector's slow_statement_threshold default, named as such",
    ("NotificationDeadLettered", "an hour"): "how long the outbox shows a lost notification (outbox.LOST_WINDOW)",
}


def _texts(rule: Rule) -> str:
    return rule.summary + "\n" + rule.description


def _windowed() -> list[Rule]:
    return [r for r in default_rules() if r.text_window is not None]


def _window_override(rule: Rule) -> dict[str, object]:
    if rule.increase:
        return {"increase": NEW_WINDOW}
    if rule.rate:
        return {"rate": NEW_WINDOW}
    assert rule.when is not None
    assert rule.when.increase
    when = {**rule.when.model_dump(), "matchers": [str(m) for m in rule.when.matchers], "increase": NEW_WINDOW}
    return {"when": when}


def _firing_value(rule: Rule) -> float:
    value = float(math.floor(rule.threshold) + {">": 2, ">=": 2, "<": -2, "<=": -2, "==": 0, "!=": 2}[rule.op])
    assert rule.passes(value, active=False)
    return value


def _overridden(tmp_path: Path) -> dict[str, Rule]:
    overrides = {r.name: _window_override(r) for r in _windowed()}
    text = "collectors: []\nalerts:\n  rule_overrides: " + json.dumps(overrides) + "\n"
    return {r.name: r for r in load_config_text(text, str(tmp_path / "mevwatch.yaml")).daemon.alerts.all_rules}


def test_windowed_default_rules_exist_and_each_names_its_window() -> None:
    windowed = _windowed()
    assert {"OomKill", "FailedLoginBurst", "JournalErrorBurst", "RpcLatencyHigh", "WalletTransactionFailures"} <= {
        r.name for r in windowed}
    for rule in windowed:
        assert "$window" in _texts(rule), f"{rule.name} counts over a window its texts do not name"


def test_an_overridden_window_is_the_one_every_page_names(tmp_path: Path) -> None:
    rules = _overridden(tmp_path)
    for original in _windowed():
        rule = rules[original.name]
        assert rule.text_window == NEW_WINDOW
        series = labelset({"source": "auth", "pattern": "p", "endpoint": "e", "tx": "0xab"})
        alerts: dict[str, Alert] = {}
        value = _firing_value(rule)
        step(rule, {series: value}, alerts, 0.0, "h1", "rb")  # the texts are rendered as the alert turns pending
        [alert] = alerts.values()
        shown = alert.annotations["summary"] + "\n" + alert.annotations["description"]
        assert NEW_WINDOW_TEXT in shown, f"{rule.name}: {shown!r}"
        old = for_text(original.text_window or 0)
        assert not re.search(rf"(?<![\w.]){old}\b", shown), f"{rule.name} still names {old}: {shown!r}"
        # the exported Prometheus rule has the window written in and renders the very same text
        exported = export_rule(rule, "rb")["annotations"]
        assert prom_render(exported["summary"], alert.labels, value) == alert.annotations["summary"]
        assert prom_render(exported.get("description", ""), alert.labels, value) == alert.annotations["description"]


def test_no_default_text_names_a_duration_of_its_own() -> None:
    found: dict[tuple[str, str], str] = {}
    for rule in default_rules():
        for literal in _LITERAL_DURATION_RE.findall(_EXPRESSION_RE.sub("", _texts(rule))):
            found[(rule.name, literal)] = _texts(rule)
    unexplained = {k: v for k, v in found.items() if k not in ALLOWED_LITERALS}
    assert not unexplained, ("a duration written into a text lies once the rule's window, for or threshold is "
                             "overridden: use {{ $window }}, {{ $for }} or {{ $threshold | humanizeDuration }}",
                             unexplained)
    assert set(ALLOWED_LITERALS) <= set(found), "an allowed literal is gone: drop it from ALLOWED_LITERALS"


def test_a_literal_duration_is_found_where_one_is_written() -> None:
    # the check above finds what it must: each of these texts names a duration the rule may not have
    for text in ("3 kills in 10 minutes", "in the last 5m on h", "full within the hour", "budget 15ms",
                 "over 100 ms at p99", "for over 10 hours", "held a minute"):
        assert _LITERAL_DURATION_RE.search(_EXPRESSION_RE.sub("", text)), text
    assert not _LITERAL_DURATION_RE.search(_EXPRESSION_RE.sub("", "in the last {{ $window }} on {{ $labels.host }}"))


@pytest.mark.parametrize("fields", [
    {"metric": "m"},
    {"metric": "m", "quantile": 0.99},  # without rate it reads every bucket since start: no window to name
])
def test_window_in_a_rule_without_one_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"\$window"):
        Rule.model_validate({"name": "R", "summary": "{{ $value }} in the last {{ $window }}",
                             "runbook": "memory-high", **fields})
