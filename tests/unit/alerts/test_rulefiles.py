"""Rule files: the default rules, extra files and inline overrides, and errors with file, line and path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mevwatch.alerts.rulefiles import DEFAULT_RULES_FILE, load_rule_file
from mevwatch.alerts.runbooks import RUNBOOKS_FILE, runbook_anchors
from mevwatch.daemon.config import ConfigError, load_config_text


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
    with pytest.raises(ConfigError) as exc:
        load_config_text("collectors: []\nalerts:\n  rule_files: [/nonexistent/rules.yaml]\n", "m.yaml")
    missing = [str(i) for i in exc.value.issues]
    assert missing == ["/nonexistent/rules.yaml: cannot read rule file: No such file or directory"]
