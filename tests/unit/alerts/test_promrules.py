"""``mevwatch rules export``: the Prometheus rules file is current, valid, and every rule is unit-tested by promtool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mevwatch.alerts.promrules import duration, promql, rules_yaml
from mevwatch.alerts.rule import Rule
from mevwatch.daemon.config import default_config_text, load_config_text
from tests.support.peers import REPO, need_binary
from tests.support.rule_cases import RULES_FILE, TEST_FILE, default_rules, prom_render, promtool_tests_yaml

RUNBOOK_URL = load_config_text(default_config_text(), "<embedded default>").daemon.alerts.export_runbook_url


def _rule(**fields: object) -> Rule:
    base: dict[str, object] = {"name": "T", "metric": "mevwatch_x", "summary": "s", "runbook": "memory-high"}
    return Rule.model_validate({**base, **fields})


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_binary("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def _host_series(name: str, labels: dict[str, str], values: str, host: str = "mev-host-1") -> dict[str, str]:
    """A promtool input series of ``name`` with ``labels`` and the host label mevwatch puts on every series."""
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in {**labels, "host": host}.items()) + "}",
            "values": values}


def _promtool_fires(tmp: Path, rule: Rule, input_series: list[dict[str, str]],
                    exp_alerts: list[dict[str, Any]]) -> None:
    """promtool, given ``rule`` as mevwatch exports it and 1-minute ``input_series``, raises ``exp_alerts`` at 3m."""
    (tmp / "r.yml").write_text(rules_yaml([rule], "rb"))
    tests = {"rule_files": ["r.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": input_series,
        "alert_rule_test": [{"eval_time": "3m", "alertname": rule.name, "exp_alerts": exp_alerts}]}]}
    (tmp / "t.yml").write_text(yaml.safe_dump(tests))
    proc = _promtool("test", "rules", "t.yml", cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_file_is_current() -> None:
    assert RULES_FILE.read_text() == rules_yaml(default_rules(), RUNBOOK_URL), (
        "regenerate with `mevwatch rules export -o deploy/prometheus/mevwatch-rules.yml`")


def test_rule_test_file_is_current() -> None:
    assert TEST_FILE.read_text() == promtool_tests_yaml(default_rules(), RUNBOOK_URL), (
        "regenerate with `python -m tests.support.rule_cases`")


def test_promtool_check_rules_passes() -> None:
    proc = _promtool("check", "rules", str(RULES_FILE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(default_rules())} rules found" in proc.stdout


def test_promtool_test_rules_passes() -> None:
    proc = _promtool("test", "rules", TEST_FILE.name, cwd=TEST_FILE.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_rule_is_tested_firing_and_quiet() -> None:
    doc = yaml.safe_load(TEST_FILE.read_text())
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {r.name for r in default_rules()}
    assert fired == names
    assert quiet == names


def test_promtool_catches_a_rule_that_no_longer_fires(tmp_path: Path) -> None:
    broken = RULES_FILE.read_text().replace("mevwatch_memory_used_ratio > 0.9\n", "mevwatch_memory_used_ratio > 0.99\n")
    assert broken != RULES_FILE.read_text()
    (tmp_path / RULES_FILE.name).write_text(broken)
    (tmp_path / TEST_FILE.name).write_text(TEST_FILE.read_text())
    proc = _promtool("test", "rules", TEST_FILE.name, cwd=tmp_path)
    assert proc.returncode != 0
    assert "alertname: MemoryHigh" in proc.stdout + proc.stderr


def test_promql_of_each_rule_shape() -> None:
    assert promql(_rule(op=">", threshold=0.9)) == "mevwatch_x > 0.9"
    assert promql(_rule(metric="mevwatch_c_total", increase="10m", matchers=['k=~"a|b"'], threshold=3)) == (
        'increase(mevwatch_c_total{k=~"a|b"}[10m]) > 3')
    assert promql(_rule(metric="mevwatch_c_total", rate="90s", op="<", threshold=1)) == (
        "rate(mevwatch_c_total[1m30s]) < 1")
    assert promql(_rule(metric="mevwatch_h_seconds", quantile=0.5, threshold=0.2)) == (
        "histogram_quantile(0.5, rate(mevwatch_h_seconds_bucket[5m])) > 0.2")
    assert promql(_rule(absent=True, matchers=['collector="rpc"'])) == (
        'group by (host) (mevwatch_build_info)\nunless on (host)\ngroup by (host) (mevwatch_x{collector="rpc"})')
    held = promql(_rule(op="<", threshold=10, clear=15, labels={"team": "mev"}))
    assert held == ("mevwatch_x < 10\nor\n(mevwatch_x < 15 and ignoring(alertname, alertstate, severity, team) "
                    'ALERTS{alertname="T"})')
    assert promql(_rule(metric="mevwatch_c_total", increase="10m", without=["reason", "method"], threshold=0)) == (
        "max without (reason, method) (increase(mevwatch_c_total[10m])) > 0")


def test_duration_formats() -> None:
    assert [duration(s) for s in (0, 0.5, 30, 90, 3600, 5400, 93600)] == [
        "0s", "500ms", "30s", "1m30s", "1h", "1h30m", "1d2h"]


def test_extra_rule_shapes_pass_promtool(tmp_path: Path) -> None:
    rules = [
        _rule(name="Absent", absent=True, matchers=['collector="rpc"'], **{"for": "2m"}),
        _rule(name="Kept", op="==", threshold=0, keep_firing_for="5m", labels={"team": "mev"}),
        _rule(name="Rate", metric="mevwatch_c_total", rate="5m", op=">", threshold=2, description="{{ $value }}"),
    ]
    text = rules_yaml(rules, "https://example.org/runbooks.md")
    (tmp_path / "r.yml").write_text(text)
    proc = _promtool("check", "rules", str(tmp_path / "r.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = yaml.safe_load(text)["groups"][0]["rules"]
    assert doc[0]["for"] == "2m"
    assert doc[1]["keep_firing_for"] == "5m"
    assert doc[1]["labels"] == {"severity": "warning", "team": "mev"}
    assert doc[2]["annotations"]["runbook_url"] == "https://example.org/runbooks.md#memory-high"


def test_prom_render_matches_prometheus_formats() -> None:
    labels = {"host": "h"}
    assert prom_render("{{ $value | humanizeDuration }} on {{ $labels.host }}", labels, 93601) == "1d 2h 0m 1s on h"
    assert prom_render("{{ $value | humanizeDuration }}", labels, 0.012) == "12ms"
    assert prom_render("{{ $value | humanizePercentage }}", labels, 0.95) == "95%"
    assert prom_render("{{ $value }} {{ $labels.missing }}x", labels, 2.5) == "2.5 x"


#: values whose texts differ between formats: fractions, sub-second and multi-unit durations, SI and binary
#: prefixes both ways, Go's exponent from 1e6 on and below 1e-4, shortest digits, signs, NaN and infinities
FORMAT_VALUES = (0.0, 0.5, 1.5, 59.99, 60.0, 3725.0, 86400.0, 93601.0, 0.0005, 0.0015, 0.012, 1e-05, 1.234e-05,
                 0.30000000000000004, 0.1667, 1023.0, 1024.0, 2048.0, 123456.0, 999999.0, 1e6, 1234567.0,
                 12345.678, 1.23456789e8, 3.5e12, -1.5, -3725.0, -0.002, float("nan"), float("inf"),
                 float("-inf"))
FUNCTIONS = ("", "humanize", "humanize1024", "humanizePercentage", "humanizeDuration", 'printf "%.0f"')


def test_every_template_function_writes_what_prometheus_writes(tmp_path: Path) -> None:
    """promtool renders {{ $value | fn }} of an alert with each value; mevwatch's text must be the same."""
    from mevwatch.alerts.templates import render_template

    texts = {f"f{i}": "{{ $value" + (f" | {fn}" if fn else "") + " }}" for i, fn in enumerate(FUNCTIONS)}
    rules = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "m", "annotations": texts}]}]}
    (tmp_path / "r.yml").write_text(yaml.safe_dump(rules))
    cases = [{
        "interval": "1m",
        "input_series": [{"series": 'm{v="x"}', "values": repr(v).replace("inf", "Inf").replace("nan", "NaN")}],
        "alert_rule_test": [{"eval_time": "0m", "alertname": "A", "exp_alerts": [{
            "exp_labels": {"v": "x"},
            "exp_annotations": {name: render_template(text, {}, v) for name, text in texts.items()}}]}],
    } for v in FORMAT_VALUES]
    (tmp_path / "t.yml").write_text(yaml.safe_dump({"rule_files": ["r.yml"], "evaluation_interval": "1m",
                                                    "tests": cases}))
    proc = _promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_cli_exports_and_rejects_bad_config(tmp_path: Path) -> None:
    out = tmp_path / "rules.yml"
    proc = subprocess.run([sys.executable, "-m", "mevwatch", "rules", "export", "-o", str(out)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == RULES_FILE.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("alerts:\n  rules:\n    - name: X\n      metric: 'no such'\n      summary: s\n      runbook: x\n")
    proc = subprocess.run([sys.executable, "-m", "mevwatch", "rules", "export", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2
    assert "metric" in proc.stderr


def test_prometheus_config_example_is_valid() -> None:
    proc = _promtool("check", "config", str(REPO / "deploy" / "prometheus" / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("rule", default_rules(), ids=lambda r: r.name)
def test_rule_metric_is_declared(rule: Rule) -> None:
    from mevwatch.daemon.docgen import all_metric_specs

    assert rule.metric.removesuffix("_total") in all_metric_specs()


def test_promql_of_when_rules_pairs_series_with_and_or_unless() -> None:
    paired = _rule(metric="mevwatch_a", threshold=0.2,
                   when={"metric": "mevwatch_b", "op": ">", "threshold": 1000, "ignoring": ["trigger"]})
    assert promql(paired) == "(\nmevwatch_a > 0.2\n)\nand ignoring(trigger)\nmevwatch_b > 1000"
    gap = _rule(absent=True, when={"metric": "mevwatch_up", "matchers": ['job="x"'], "op": "==", "threshold": 1})
    assert promql(gap) == 'mevwatch_up{job="x"} == 1\nunless\nmevwatch_x'
    with pytest.raises(ValueError, match=r"when\.bogus"):
        _rule(when={"metric": "mevwatch_b", "bogus": 1})


def test_absent_fires_per_host_with_the_label_set_mevwatch_gives_it(tmp_path: Path) -> None:
    from mevwatch.alerts.rules import alert_labels, labelset

    rule = _rule(name="RpcCollectorGone", metric="mevwatch_collector_success", absent=True,
                 matchers=['collector="rpc"'], severity="critical")
    ours = alert_labels(rule, labelset({"collector": "rpc"}), "mev-b")  # what mevwatch on mev-b raises
    ours.pop("alertname")
    _promtool_fires(tmp_path, rule, [
        _host_series("mevwatch_build_info", {"version": "1"}, "1x5", host="mev-a"),
        _host_series("mevwatch_build_info", {"version": "1"}, "1x5", host="mev-b"),
        _host_series("mevwatch_collector_success", {"collector": "rpc", "instance": "default"}, "1x5", host="mev-a"),
    ], [{"exp_labels": ours, "exp_annotations": {"summary": "s", "runbook_url": "rb#memory-high"}}])
    assert ours == {"collector": "rpc", "host": "mev-b", "severity": "critical"}


def test_a_label_of_another_series_renders_in_prometheus_as_in_mevwatch(tmp_path: Path) -> None:
    from mevwatch.alerts.rules import Alert, labelset, step

    rule = next(r for r in default_rules() if r.name == "WalletQueuedNonceGap")
    own = {"address": "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65", "wallet": "bot"}
    info = {**own, "missing": "5-6, 8", "stuck": "0x" + "a" * 64 + ", 0x" + "b" * 64}
    values = {"mevwatch_wallet_queued_nonce_gap": 3.0, "mevwatch_wallet_queued_transactions": 2.0,
              "mevwatch_wallet_pending_nonce": 5.0, "mevwatch_wallet_queued_lowest_nonce": 7.0}
    samples = {name: {labelset(own): v} for name, v in values.items()}
    samples["mevwatch_wallet_queued_gap_info"] = {labelset(info): 1.0,  # another wallet's facts must not show
                                                  labelset({**info, "wallet": "other"}): 1.0}
    alerts: dict[str, Alert] = {}
    step(rule, samples[rule.metric], alerts, 0.0, "mev-host-1", "rb", samples=samples)
    [ours] = alerts.values()
    assert "queued behind missing nonce(s) 5-6, 8: stuck 0x" + "a" * 64 in ours.annotations["summary"]

    series = [_host_series(name, own, f"{v:g}x5") for name, v in values.items()]
    series += [_host_series("mevwatch_wallet_queued_gap_info", i, "1x5") for i in (info, {**info, "wallet": "other"})]
    exp = {"exp_labels": {**own, "host": "mev-host-1", "severity": "warning"},
           "exp_annotations": {"summary": ours.annotations["summary"],
                               "description": ours.annotations["description"],
                               "runbook_url": "rb#queued-nonce-gap"}}
    _promtool_fires(tmp_path, rule, series, [exp])


def test_the_reason_a_target_is_down_renders_in_prometheus_as_in_mevwatch(tmp_path: Path) -> None:
    """PostgresDown fires on mevwatch_postgres_up and names the reason from the connect_failure state set (1 for
    the reason that holds, 0 for every other): Prometheus' text, and its alert's labels, are mevwatch's."""
    from mevwatch.alerts.rules import Alert, evaluate_rule, labelset, step
    from mevwatch.collectors.postgres import FAILURE_REASONS

    rule = next(r for r in default_rules() if r.name == "PostgresDown")
    own = {"server": "127.0.0.1:5432", "datname": "mev"}
    failure = {labelset({**own, "reason": r}): (1.0 if r == "starting" else 0.0) for r in FAILURE_REASONS}
    samples = {"mevwatch_postgres_up": {labelset(own): 0.0}, "mevwatch_postgres_connect_failure": failure}
    alerts: dict[str, Alert] = {}
    step(rule, evaluate_rule(rule, samples, {}, 0.0), alerts, 0.0, "mev-host-1", "rb", samples=samples)
    [ours] = alerts.values()
    assert ours.annotations["summary"] == "PostgreSQL 127.0.0.1:5432/mev unreachable from mev-host-1: starting"

    inputs = [_host_series("mevwatch_postgres_up", own, "0x5")]
    inputs += [_host_series("mevwatch_postgres_connect_failure", {**own, "reason": r},
                            "1x5" if r == "starting" else "0x5") for r in FAILURE_REASONS]
    exp = {"exp_labels": {**own, "host": "mev-host-1", "severity": "critical"},
           "exp_annotations": {"summary": ours.annotations["summary"], "description": ours.annotations["description"],
                               "runbook_url": "rb#postgres-down"}}
    _promtool_fires(tmp_path, rule, inputs, [exp])
