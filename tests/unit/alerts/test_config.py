"""The alerts section and rule files: matchers, templates, runbook anchors, and errors with file, line and path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mevwatch.alerts.config import (
    DEFAULT_RULES_FILE,
    RUNBOOKS_FILE,
    check_template,
    load_rule_file,
    parse_matcher,
    render_template,
    runbook_anchors,
)
from mevwatch.daemon.config import ConfigError, load_config_text


def test_matchers_parse_all_four_ops_and_anchor_regexes() -> None:
    m = parse_matcher('state=~"open|half_open"')
    assert (m.name, m.op, m.value) == ("state", "=~", "open|half_open")
    assert m.matches({"state": "open"})
    assert not m.matches({"state": "opened"})
    assert parse_matcher("node!=erigon").matches({"node": "geth"})
    assert parse_matcher('node="a\\"b"').value == 'a"b'
    assert parse_matcher('x!~"a.*"').matches({"x": "ba"})
    assert parse_matcher('missing=""').matches({})
    with pytest.raises(ValueError, match="invalid matcher"):
        parse_matcher("no operator")
    with pytest.raises(ValueError, match="bad regex"):
        parse_matcher('x=~"(unclosed"')


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


def test_every_default_rule_links_an_existing_runbook_anchor() -> None:
    anchors = runbook_anchors(RUNBOOKS_FILE)
    assert anchors, "docs/runbooks.md has no anchors"
    rules, issues = load_rule_file(DEFAULT_RULES_FILE)
    assert issues == []
    assert len(rules) >= 30
    missing = {r.name: r.runbook for r in rules if r.runbook not in anchors}
    assert missing == {}
    assert "alerts-test" in anchors  # the test notification's link


def test_default_rules_cover_the_runbook_incidents() -> None:
    rules, _ = load_rule_file(DEFAULT_RULES_FILE)
    names = {r.name for r in rules}
    assert {
        "MemoryHigh", "OomKill", "DiskSpaceHigh", "DiskFillingUp", "ServiceDown", "CpuGovernorNotPerformance",
        "RpcLatencyHigh", "RpcCircuitBreakerOpen", "PeersLow", "HeadLag", "NodeSyncing", "MempoolSilent",
        "MempoolFilterBroken", "GasBidUncompetitive", "WalletTransactionFailures", "WalletBalanceLow",
        "UnexpectedOutgoingTransaction", "EngineHealthDown", "EngineLatencyHigh", "PostgresDown",
        "PostgresSlowStatements", "PostgresDeadTuplesHigh", "IntegrityViolation", "FailedLoginBurst",
        "NginxAuthErrorBurst", "ServiceLogErrors", "BackupStale", "CollectorFailing",
    } <= names
    by = {r.name: r for r in rules}
    assert by["IntegrityViolation"].severity == "critical"
    assert by["MemoryHigh"].threshold == 0.9
    assert by["DiskSpaceHigh"].threshold == 0.85
    assert by["EngineLatencyHigh"].threshold == 0.015
    assert by["HeadLag"].threshold == 3
    assert by["BackupStale"].threshold == 26 * 3600
    assert by["DiskFillingUp"].threshold == 4 * 3600


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config_text("collectors: []\nalerts:\n" + text, "m.yaml")
    return [str(i) for i in exc.value.issues]


RULE = "    - {name: A, metric: m, summary: s, runbook: memory-high"


def test_inline_rule_errors_have_line_and_field_path() -> None:
    errs = _errors(f"  rules:\n{RULE}, op: '=>'}}\n")
    assert len(errs) == 1
    assert errs[0].startswith("m.yaml:4: alerts.rules[0].op: ")
    assert "'=>'" in errs[0] or "Input should be" in errs[0]
    errs = _errors(f"  rules:\n{RULE}, matchers: ['x=~\"(\"']}}\n")
    assert errs[0].startswith("m.yaml:4: alerts.rules[0].matchers[0]: bad regex in matcher")
    errs = _errors("  rules:\n    - {name: A, metric: m, summary: s, runbook: no-such-section}\n")
    assert errs[0].startswith("m.yaml:4: alerts.rules[0].runbook: runbook anchor 'no-such-section'")
    errs = _errors(f"  rules:\n{RULE}}}\n{RULE}}}\n")
    assert "duplicate rule name 'A' (also rules[0])" in errs[0]
    errs = _errors(f"  rules:\n{RULE}, op: '>', threshold: 5, clear: 6}}\n")
    assert errs[0].startswith("m.yaml:4: alerts.rules[0].clear: with op > the clear threshold must be <= threshold")
    errs = _errors(f"  rules:\n{RULE}, increase: 5m, rate: 5m}}\n")
    assert "alerts.rules[0].rate: use either increase or rate" in errs[0]
    errs = _errors(f"  rules:\n{RULE}, bogus: 1}}\n")
    assert errs[0].endswith("alerts.rules[0].bogus: unknown key")
    errs = _errors("  receiver: pager\n")
    assert "unknown receiver 'pager'" in errs[0]
    errs = _errors("  receivers:\n    - {name: w, webhook_configs: [{url: 'ftp://x'}]}\n  receiver: w\n")
    assert errs[0].startswith("m.yaml:4: alerts.receivers[0].webhook_configs[0].url: url must be http(s)")


BAD_RULE_FILE = """rules:
  - name: Good
    metric: m
    summary: fine
    runbook: memory-high
  - name: BadOp
    metric: m
    op: "~"
    summary: x
    runbook: memory-high
  - name: BadRegex
    metric: m
    matchers: ['x=~"[a-"']
    summary: x
    runbook: memory-high
  - name: NoRunbook
    metric: m
    summary: x
    runbook: nowhere
  - name: Good
    metric: m
    summary: again
    runbook: memory-high
"""


def test_bad_rule_file_fails_check_config_naming_its_own_file_lines_and_paths(tmp_path: Path) -> None:
    rules = tmp_path / "extra-rules.yaml"
    rules.write_text(BAD_RULE_FILE)
    cfg = tmp_path / "mevwatch.yaml"
    cfg.write_text("collectors: []\nalerts:\n  rule_files: [extra-rules.yaml]\n")
    proc = subprocess.run([sys.executable, "-m", "mevwatch", "check-config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert f"{rules}:8: rules[1].op: " in err
    assert f"{rules}:13: rules[2].matchers[0]: bad regex in matcher" in err
    assert f"{rules}:19: rules[3].runbook: runbook anchor 'nowhere' is not in runbooks.md" in err
    rules.write_text(BAD_RULE_FILE.split("  - name: BadOp")[0] + BAD_RULE_FILE.split("runbook: nowhere\n")[1])
    proc = subprocess.run([sys.executable, "-m", "mevwatch", "check-config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{rules}:6: rules[1].name: duplicate rule name 'Good' (also rules[0])" in proc.stderr


def test_rule_files_extend_and_inline_rules_override_defaults(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("rules:\n  - {name: Extra, metric: m, summary: s, runbook: memory-high}\n")
    cfg = load_config_text(
        "collectors: []\nalerts:\n  rule_files: [r.yaml]\n  rules:\n"
        "    - {name: MemoryHigh, metric: mevwatch_memory_used_ratio, threshold: 0.95, summary: s,"
        " runbook: memory-high}\n",
        str(tmp_path / "mevwatch.yaml"),
    )
    by = {r.name: r for r in cfg.daemon.alerts.all_rules}
    assert "Extra" in by
    assert "OomKill" in by
    assert by["MemoryHigh"].threshold == 0.95
    missing = _errors("  rule_files: [/nonexistent/rules.yaml]\n")
    assert missing == ["/nonexistent/rules.yaml: cannot read rule file: No such file or directory"]
