"""promtool unit tests for the exported rules: for every rule a series that fires it and one that does not.

Series labels come from the declared metric families; values from the rule's op, threshold and clear.
``python -m tests.support.rule_cases`` rewrites deploy/prometheus/mevwatch-rules.test.yml.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from typing import Any

import yaml

from mevwatch.alerts.promrules import fill_threshold
from mevwatch.alerts.rule import Rule
from mevwatch.alerts.templates import format_value, go_float
from mevwatch.daemon.config import default_config_text, load_config_text
from mevwatch.daemon.docgen import all_metric_specs
from tests.support.peers import REPO

__all__ = ["RULES_FILE", "TEST_FILE", "default_rules", "prom_render", "promtool_tests_yaml"]

RULES_FILE = REPO / "deploy" / "prometheus" / "mevwatch-rules.yml"
TEST_FILE = REPO / "deploy" / "prometheus" / "mevwatch-rules.test.yml"
HOST = "mev-host-1"
_TEMPLATE_RE = re.compile(
    r"\{\{\s*(\$labels\.(\w+)|\$value|\$metric\.(\w+))\s*(?:\|\s*(?:label\s+\"(\w+)\"|(\w+(?:\s+\"%\.0f\")?)))?\s*\}\}")
_OR_RE = re.compile(r"\{\{\s*or((?:\s+\$labels\.\w+)+)\s*\}\}")  # Go's or: the first non-empty argument


def default_rules() -> tuple[Rule, ...]:
    return load_config_text(default_config_text(), "<embedded default>").daemon.alerts.all_rules


def prom_render(text: str, labels: Mapping[str, str], value: float,
                metrics: Mapping[str, float] | None = None,
                label_sources: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """Render an exported rule's template as mevwatch renders the rule's (its values formatted by mevwatch's own
    functions, so promtool proves Prometheus writes the same); ``metrics``: the input series' values that a
    ``$metric`` query finds (others render "unknown"); ``label_sources``: the labels of the input series (not 0)
    that a ``$metric.NAME | label`` query finds, by NAME (others render "unknown")."""

    def sub(m: re.Match[str]) -> str:
        if m.group(2):
            return labels.get(m.group(2), "")
        fn = m.group(5)
        if m.group(3):
            if m.group(4) is not None:
                source = (label_sources or {}).get(m.group(3))
                return "unknown" if source is None else source.get(m.group(4), "")
            if m.group(3) not in (metrics or {}):
                return "unknown"
            return prom_render(f"{{{{ $value{' | ' + fn if fn else ''} }}}}", labels, (metrics or {})[m.group(3)])
        return format_value(value, fn)  # mevwatch's formats: promtool checks Prometheus renders the same

    def either(m: re.Match[str]) -> str:
        return next((labels[n] for n in re.findall(r"\$labels\.(\w+)", m.group(1)) if labels.get(n)), "")

    return _TEMPLATE_RE.sub(sub, _OR_RE.sub(either, text))


def _label_value(name: str, rule: Rule) -> str:
    for m in rule.matchers:
        if m.name != name:
            continue
        if m.op == "=":
            return m.value
        if m.op == "=~":
            first = re.sub(r"\[(.)[^\]]*\]", r"\1", m.value.split("|")[0])
            assert re.fullmatch(m.value, first), (rule.name, m.value)
            return first
        return f"not-{m.value}"
    return f"{name}-a"


def _series_labels(rule: Rule, metric: str | None = None, matchers: Any = None) -> dict[str, str]:
    specs = all_metric_specs()
    metric = metric or rule.metric
    base = metric.removesuffix("_total")
    if base not in specs:
        raise ValueError(f"rule {rule.name}: metric {metric} is not declared by any collector")
    source = rule if matchers is None else rule.model_copy(update={"matchers": matchers})
    labels = {name: _label_value(name, source) for name in specs[base][1].labels}
    labels["host"] = HOST
    return labels


def _when_cases(rule: Rule, runbook_url: str, eval_min: int, n: int) -> list[dict[str, Any]]:
    """Cases of a rule with ``when``: the condition's series decides (and, or unless for an absent rule)."""
    cond = rule.when
    assert cond is not None
    cond_labels = _series_labels(rule, cond.metric, cond.matchers)
    as_rule = rule.model_copy(update={"op": cond.op, "threshold": cond.threshold, "clear": None})
    cond_pass, cond_fail, _ = _gauge_values(as_rule)
    csel = _selector(cond.metric, cond_labels)
    if cond.increase:  # a counter: growing past the threshold over its window, or standing still
        per_min = cond.threshold + 1
        pass_values, fail_values = f"0+{go_float(per_min)}x{n}", f"5x{n}"
    else:
        pass_values, fail_values = f"{go_float(cond_pass)}x{n}", f"{go_float(cond_fail)}x{n}"
    labels = _series_labels(rule)
    sel = _selector(rule.metric, labels)
    if rule.absent:
        return [
            _case(rule, [{"series": csel, "values": pass_values}], eval_min,
                  [_expected(rule, cond_labels, cond_pass, runbook_url)]),
            _case(rule, [{"series": csel, "values": pass_values},
                         {"series": sel, "values": f"1x{n}"}], eval_min, []),
            _case(rule, [{"series": csel, "values": fail_values}], eval_min, []),
        ]
    fire, quiet, _ = _gauge_values(rule)
    return [
        _case(rule, [{"series": sel, "values": f"{go_float(fire)}x{n}"},
                     {"series": csel, "values": pass_values}], eval_min,
              [_expected(rule, labels, fire, runbook_url, {} if cond.increase else {cond.metric: cond_pass})]),
        _case(rule, [{"series": sel, "values": f"{go_float(fire)}x{n}"},
                     {"series": csel, "values": fail_values}], eval_min, []),
        _case(rule, [{"series": sel, "values": f"{go_float(quiet)}x{n}"},
                     {"series": csel, "values": pass_values}], eval_min, []),
    ]


def _selector(name: str, labels: Mapping[str, str]) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _step(threshold: float) -> float:
    if threshold == 0 or abs(threshold) >= 10:
        return 1.0
    return round(abs(threshold) * 0.1, 6)


def _gauge_values(rule: Rule) -> tuple[float, float, float | None]:
    """(firing value, quiet value, value between clear and threshold that holds a firing alert)."""
    t = rule.threshold
    step = _step(t)
    clear = rule.clear
    if rule.op in (">", ">="):
        held = None if clear is None or clear == t else round((t + clear) / 2, 6)
        return round(t + step, 6), round((t if clear is None else clear) - step, 6), held
    if rule.op in ("<", "<="):
        held = None if clear is None or clear == t else round((t + clear) / 2, 6)
        quiet = (t if clear is None else clear) + step
        return round(t * 0.5 if t > 0 else t - step, 6), round(quiet, 6), held
    if rule.op == "==":
        return t, (1 - t if t in (0, 1) else t + 1), None
    return t + 1, t, None  # !=


def _minutes(seconds: float) -> int:
    return math.ceil(seconds / 60)


def _case(rule: Rule, series: list[dict[str, str]], eval_min: int, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"interval": "1m", "input_series": series,
            "alert_rule_test": [{"eval_time": f"{eval_min}m", "alertname": rule.name, "exp_alerts": alerts}]}


def _expected(rule: Rule, labels: Mapping[str, str], value: float, runbook_url: str,
              metrics: Mapping[str, float] | None = None,
              label_sources: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Any]:
    # the labels the rule merges its series over are not the alert's
    exp_labels = {**{k: v for k, v in labels.items() if k not in rule.without}, **rule.labels,
                  "severity": rule.severity}
    def text(template: str) -> str:  # as exported: the rule's threshold, for and window written in
        return prom_render(fill_threshold(template, rule.threshold, rule.for_, rule.text_window), exp_labels,
                           value, metrics, label_sources)

    annotations = {name: text(template) for name, template in rule.texts.items() if template or name == "summary"}
    annotations["runbook_url"] = f"{runbook_url}#{rule.runbook}"
    return {"exp_labels": exp_labels, "exp_annotations": annotations}


def rule_cases(rule: Rule, runbook_url: str) -> list[dict[str, Any]]:
    """Test cases of one rule: it fires, it stays quiet, and (with a clear threshold) it holds."""
    labels = _series_labels(rule)
    window = rule.increase or rule.rate or (300.0 if rule.quantile is not None else 0.0)
    if rule.when is not None and rule.when.increase:
        window = max(window, float(rule.when.increase))
    eval_min = _minutes(rule.for_) + _minutes(window) + 3
    n = eval_min + 10
    if rule.when is not None:
        return _when_cases(rule, runbook_url, eval_min, n)
    if rule.absent:
        present = _selector(rule.metric, labels)
        # fires per host: the host reports mevwatch but not the series
        fired = {"host": HOST, **{m.name: m.value for m in rule.matchers if m.op == "="}}
        alive = {"series": _selector("mevwatch_build_info", {"host": HOST, "version": "x"}), "values": f"1x{n}"}
        return [
            _case(rule, [alive], eval_min, [_expected(rule, fired, 1.0, runbook_url)]),
            _case(rule, [alive, {"series": present, "values": f"1x{n}"}], eval_min, []),
        ]
    if rule.quantile is not None:
        le_hi = go_float(rule.threshold * 2)
        bucket = rule.metric + "_bucket"

        def hist(low: str, high: str) -> list[dict[str, str]]:
            return [{"series": _selector(bucket, {**labels, "le": le}), "values": v}
                    for le, v in (("0.0001", low), (le_hi, high), ("+Inf", high))]

        q = rule.quantile
        fired_value = 0.0001 + (rule.threshold * 2 - 0.0001) * q
        return [
            _case(rule, hist(f"0x{n}", f"0+10x{n}"), eval_min, [_expected(rule, labels, fired_value, runbook_url)]),
            _case(rule, hist(f"0+10x{n}", f"0+10x{n}"), eval_min, []),
        ]
    if rule.increase or rule.rate:
        per_min = rule.threshold + 1 if rule.increase else (rule.threshold * 60 + 60)
        value = per_min * window / 60 if rule.increase else per_min / 60
        name = rule.metric
        return [
            _case(rule, [{"series": _selector(name, labels), "values": f"0+{go_float(per_min)}x{n}"}], eval_min,
                  [_expected(rule, labels, value, runbook_url,
                             label_sources={rule.metric: labels} if rule.without else None)]),
            _case(rule, [{"series": _selector(name, labels), "values": f"5x{n}"}], eval_min, []),
        ]
    fire, quiet, held = _gauge_values(rule)
    sel = _selector(rule.metric, labels)
    own = {rule.metric: labels} if rule.without else None  # a label of the rule's own series, read in its text
    cases = [
        _case(rule, [{"series": sel, "values": f"{go_float(fire)}x{n}"}], eval_min,
              [_expected(rule, labels, fire, runbook_url, label_sources=own)]),
        _case(rule, [{"series": sel, "values": f"{go_float(quiet)}x{n}"}], eval_min, []),
    ]
    if held is not None:
        # fires, then the value eases back between threshold and clear: still firing; past clear: resolved
        hold_min = eval_min + 5
        values = f"{go_float(fire)}x{eval_min} {go_float(held)}x5 {go_float(quiet)}x10"
        case = _case(rule, [{"series": sel, "values": values}], hold_min,
                     [_expected(rule, labels, held, runbook_url, label_sources=own)])
        case["alert_rule_test"].append({"eval_time": f"{hold_min + 3}m", "alertname": rule.name, "exp_alerts": []})
        cases.append(case)
    if rule.without:
        cases.append(_changed_label_case(rule, labels, fire, runbook_url))
    return cases


def _other_value(name: str, rule: Rule, value: str) -> str:
    """Another value of label ``name`` that the rule's matchers still select (``value`` is the first)."""
    for m in rule.matchers:
        if m.name == name and m.op == "=~" and "|" in m.value:
            other = m.value.split("|")[1]
            assert re.fullmatch(m.value, other), (rule.name, m.value)
            return other
    return f"{value}-then"


def _changed_label_case(rule: Rule, labels: Mapping[str, str], fire: float, runbook_url: str) -> dict[str, Any]:
    """A label the rule merges over changes halfway through its ``for`` (the first series goes stale, one with
    the other value takes over, on a 15 s grid): the alert fires ``for`` after the first series matched (the
    rules are evaluated every minute), naming the new value."""
    steps = max(math.ceil(rule.for_ / 15), 2)
    switch = steps // 2
    after = {**labels, **{k: _other_value(k, rule, v) for k, v in labels.items() if k in rule.without}}
    case = _case(rule, [{"series": _selector(rule.metric, labels), "values": f"{go_float(fire)}x{switch - 1} stale"},
                        {"series": _selector(rule.metric, after), "values": f"_x{switch} {go_float(fire)}x{steps}"}],
                 0, [_expected(rule, after, fire, runbook_url, label_sources={rule.metric: after})])
    case["interval"] = "15s"
    case["alert_rule_test"][0]["eval_time"] = f"{steps * 15}s"
    return case


def promtool_tests_yaml(rules: tuple[Rule, ...] | list[Rule], runbook_url: str) -> str:
    tests = [case for rule in rules for case in rule_cases(rule, runbook_url)]
    doc = {"rule_files": [RULES_FILE.name], "evaluation_interval": "1m", "tests": tests}
    header = ("# Generated by `python -m tests.support.rule_cases` from the default rules and the declared metric\n"
              "# families: for every rule a series that fires it and one that does not, and for rules with a\n"
              "# clear threshold one that holds a firing alert between threshold and clear.\n")
    return header + yaml.safe_dump(doc, sort_keys=False, width=1000)


if __name__ == "__main__":
    rules = default_rules()
    runbook_url = load_config_text(default_config_text(), "<embedded default>").daemon.alerts.export_runbook_url
    TEST_FILE.write_text(promtool_tests_yaml(rules, runbook_url))
    print(f"wrote {TEST_FILE}", file=sys.stderr)
