"""Alert templates: labels, humanized values, and the expressions that are refused."""

from __future__ import annotations

import pytest

from mevwatch.alerts.templates import check_template, render_template


def test_templates_render_labels_and_humanized_values() -> None:
    labels = {"host": "h1", "mountpoint": "/data"}
    assert render_template("{{ $labels.mountpoint }} on {{$labels.host}}", labels, 0) == "/data on h1"
    assert render_template("{{ $value | humanizePercentage }}", labels, 0.873) == "87.3%"
    assert render_template("{{ $value | humanizeDuration }}", labels, 3725) == "1h 2m 5s"  # as Prometheus writes it
    assert render_template("{{ $value | humanize }}", labels, 1_500_000) == "1.5M"
    assert render_template("{{ $value }} / {{ $labels.nope }}", labels, 2.5) == "2.5 / "
    with pytest.raises(ValueError, match="unsupported template"):
        check_template("{{ .Labels.x }}")
    with pytest.raises(ValueError, match="unclosed"):
        check_template("{{ $value ")


def test_or_renders_the_first_label_that_is_not_empty() -> None:
    text = check_template("{{ or $labels.unit $labels.cgroup }} is near its limit")
    assert render_template(text, {"unit": "", "cgroup": "/batch"}, 0) == "/batch is near its limit"
    assert render_template(text, {"unit": "mev.service", "cgroup": "/system.slice/mev.service"}, 0) == (
        "mev.service is near its limit")
    assert render_template(text, {}, 0) == " is near its limit"
    with pytest.raises(ValueError, match="unsupported template expression"):
        check_template("{{ or $labels.unit }}")  # Go's or needs two arguments to choose from


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


def test_threshold_is_the_rules_own_as_configured_and_the_export_writes_it_in() -> None:
    from mevwatch.alerts.promrules import export_rule
    from mevwatch.alerts.rule import Rule

    text = check_template("{{ $value }} connections ({{ $threshold }}, {{ $threshold | humanizePercentage }})")
    assert render_template(text, {}, 85, threshold=0.8) == "85 connections (0.8, 80%)"
    assert render_template(text, {}, 85) == "85 connections (unknown, unknown)"  # never a made-up limit
    rule = Rule.model_validate({"name": "R", "metric": "m", "op": ">", "threshold": 12,
                                "summary": text, "runbook": "rpc-timeouts"})
    exported = export_rule(rule, "rb")
    assert exported["annotations"]["summary"] == "{{ $value }} connections (12, 1200%)"
    assert exported["expr"] == "m > 12"


def test_for_is_the_rules_own_wait_on_both_paths() -> None:
    from mevwatch.alerts.promrules import export_rule
    from mevwatch.alerts.rule import Rule, RuleOverride, override_rule

    text = check_template("waiting for {{ $for }}")
    assert render_template(text, {}, 1, for_=300) == "waiting for 5m"
    assert render_template(text, {}, 1, for_=5400) == "waiting for 1h30m"
    assert render_template(text, {}, 1, for_=0) == "waiting for 0s"
    rule = Rule.model_validate({"name": "R", "metric": "m", "for": "5m", "summary": text,
                                "description": "held {{ $for }}, value {{ $value }}", "runbook": "postgres-locks"})
    shorter = override_rule(rule, RuleOverride.model_validate({"for": "90s"}))
    exported = export_rule(shorter, "http://x/runbooks")
    # Prometheus has no $for: the exported text names the rule's for itself, and says the same as mevwatch
    assert exported["for"] == "1m30s"
    assert exported["annotations"]["summary"] == "waiting for 1m30s"
    assert exported["annotations"]["description"] == "held 1m30s, value {{ $value }}"


def test_a_label_of_another_series_tells_a_changing_fact_without_changing_the_alert() -> None:
    from mevwatch.alerts.rule import Rule
    from mevwatch.alerts.rules import Alert, labelset, step
    from mevwatch.alerts.templates import template_metrics

    text = check_template(
        '{{ $value }} missing: {{ $metric.m_info | label "missing" }}, stuck {{ $metric.m_info | label "tx" }}')
    assert template_metrics(text) == ("m_info",)
    rule = Rule.model_validate({"name": "R", "metric": "m_gap", "for": "1m", "summary": text, "runbook": "nonce-gap"})
    assert rule.inputs == ("m_gap", "m_info")
    own = labelset({"wallet": "bot"})

    def samples(tx: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        return {"m_gap": {own: 2.0},
                "m_info": {labelset({"wallet": "other", "missing": "1", "tx": "0xother"}): 1.0,
                           labelset({"wallet": "bot", "missing": "5-6", "tx": tx}): 1.0}}

    alerts: dict[str, Alert] = {}
    first = samples("0xaa")
    step(rule, first["m_gap"], alerts, 0.0, "h", "rb", samples=first)
    [a] = alerts.values()
    assert a.annotations["summary"] == "2 missing: 5-6, stuck 0xaa"  # the wallet's own series, not another's
    # the stuck transaction is replaced (a new hash): the same alert, its wait not reset, its text told anew
    later = samples("0xbb")
    changed = step(rule, later["m_gap"], alerts, 61.0, "h", "rb", samples=later)
    assert [c.fingerprint for c in changed] == [a.fingerprint]
    assert a.state == "firing"
    assert a.annotations["summary"] == "2 missing: 5-6, stuck 0xbb"
    # no series of the other metric for the alert's labels: "unknown", never another series' fact
    step(rule, first["m_gap"], alerts, 62.0, "h", "rb", samples={"m_gap": first["m_gap"], "m_info": {}})
    assert a.annotations["summary"] == "2 missing: unknown, stuck unknown"


def test_a_reason_that_changes_while_the_condition_holds_neither_restarts_for_nor_resolves() -> None:
    """``without: [reason]``: a node down for timeout, then refused, then timeout again is one alert, pending from
    its first failure and firing ``for`` later, its text naming the reason of the last run."""
    from mevwatch.alerts.rule import Rule
    from mevwatch.alerts.rules import Alert, evaluate_rule, labelset, step

    rule = Rule.model_validate({
        "name": "Down", "metric": "m_down_reason", "without": ["reason"], "op": "==", "threshold": 1, "for": "1m",
        "summary": '{{ $labels.endpoint }} down: {{ $metric.m_down_reason | label "reason" }}', "runbook": "peer-loss"})
    alerts: dict[str, Alert] = {}

    def at(t: float, reason: str) -> list[Alert]:
        samples = {"m_down_reason": {labelset({"endpoint": "erigon", "reason": reason}): 1.0}}
        values = evaluate_rule(rule, samples, {}, t)
        assert values == {labelset({"endpoint": "erigon"}): 1.0}
        return step(rule, values, alerts, t, "h", "rb", samples=samples)

    assert at(0.0, "timeout") == []
    assert at(20.0, "refused") == []
    [a] = alerts.values()
    assert (a.state, a.active_at) == ("pending", 0.0)  # the wait counts from the first failure
    [fired] = at(60.0, "refused")
    assert fired.state == "firing"
    assert fired.labels == {"endpoint": "erigon", "host": "h", "alertname": "Down",
                                                         "severity": "warning"}
    assert fired.annotations["summary"] == "erigon down: refused"
    assert at(80.0, "timeout") == []  # still down: no resolved page, the text tells the new reason
    assert (a.state, a.annotations["summary"]) == ("firing", "erigon down: timeout")


def test_a_label_of_a_state_set_is_the_state_that_holds() -> None:
    """A state set (1 for the state that holds, 0 for every other) names the one at 1, whatever sorts first."""
    from mevwatch.alerts.rules import label_of_series, labelset

    own = labelset({"server": "db:5432"})
    states = {labelset({"server": "db:5432", "reason": r}): (1.0 if r == "starting" else 0.0)
              for r in ("auth", "refused", "starting", "timeout")}
    assert label_of_series(states, own, "reason") == "starting"
    assert label_of_series({k: 0.0 for k in states}, own, "reason") is None  # up: no reason, "unknown"


def test_printf_writes_a_block_number_whole() -> None:
    text = check_template('head {{ $value | printf "%.0f" }}, not {{ $value }}')
    assert render_template(text, {}, 21234567.0) == "head 21234567, not 2.1234567e+07"
    assert render_template('{{ $value | printf "%.0f" }}', {}, float("nan")) == "NaN"
    with pytest.raises(ValueError, match="unsupported template"):
        check_template('{{ $value | printf "%d" }}')


def test_without_is_refused_where_there_is_nothing_to_merge() -> None:
    from pydantic import ValidationError

    from mevwatch.alerts.rule import Rule

    base = {"name": "R", "metric": "m", "summary": "s", "runbook": "peer-loss"}
    with pytest.raises(ValidationError, match="absent"):
        Rule.model_validate({**base, "absent": True, "without": ["reason"]})
    with pytest.raises(ValidationError, match="'le'"):
        Rule.model_validate({**base, "without": ["le"]})
