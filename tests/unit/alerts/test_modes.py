"""The two alerting modes: fleet mode refuses what Alertmanager owns, and sends it every alert unfiltered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mevwatch.daemon.config import ConfigError, load_config_text
from tests.unit.alerts._helpers import FLEET, Harness, gauge


def _errors(extra: str, base: str = FLEET) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config_text(base + extra, "m.yaml")
    return [str(i) for i in exc.value.issues]


def test_fleet_mode_refuses_escalation_inhibition_and_direct_sinks_where_written() -> None:
    cfg = load_config_text(FLEET, "m.yaml").daemon.alerts
    assert cfg.mode == "fleet"
    assert load_config_text("collectors: []\n", "m.yaml").daemon.alerts.mode == "standalone"
    [err] = _errors("  escalation: [{after: 1h, receiver: fleet}]\n")
    assert err.startswith("m.yaml:10: alerts.escalation: alerts.mode is fleet: Alertmanager owns")
    [err] = _errors("  routes: [{receiver: fleet, escalation: [{after: 1h, receiver: fleet}]}]\n")
    assert "alerts.routes: routes[0].escalation: alerts.mode is fleet" in err
    [err] = _errors("  inhibit_rules: [{source_matchers: ['a=\"b\"'], target_matchers: ['c=\"d\"']}]\n")
    assert err.startswith("m.yaml:10: alerts.inhibit_rules: alerts.mode is fleet")
    # a silence source is read for mevwatch's screens only (tests/unit/alerts/test_silencing.py)
    assert load_config_text(FLEET + "  alertmanager_silences: {urls: ['http://127.0.0.1:1']}\n",
                            "m.yaml").daemon.alerts.silences_mute is False
    hook = FLEET.replace("      log_configs: [{}]\n", "      webhook_configs: [{url: 'http://127.0.0.1:1/x'}]\n")
    [err] = _errors("", hook)
    assert "alerts.receivers: receivers[0].webhook_configs: alerts.mode is fleet" in err
    [err] = _errors("", FLEET.replace("  receiver: fleet\n", "  receiver: local\n").replace(
        "  receiver: local\n", "    - {name: local, log_configs: [{}]}\n  receiver: local\n"))
    assert "alerts: receiver: alerts.mode is fleet" in err
    assert "receiver 'local' has no alertmanager_configs" in err
    [err] = _errors("  routes: [{receiver: local}]\n", FLEET.replace(
        "  receiver: fleet\n", "    - {name: local, log_configs: [{}]}\n  receiver: fleet\n"))
    assert "routes[0].receiver: alerts.mode is fleet" in err
    key = "0123456789abcdef" * 2
    pager = FLEET.replace("      log_configs: [{}]\n", f"      pagerduty_configs: [{{routing_key: {key}}}]\n")
    [err] = _errors("", pager)
    assert "alerts.receivers: receivers[0].pagerduty_configs: alerts.mode is fleet" in err
    no_am = FLEET.replace("      alertmanager_configs: [{urls: [\"http://127.0.0.1:1\"]}]\n", "")
    [err] = _errors("", no_am)
    assert "add a receiver with alertmanager_configs" in err


def test_check_config_exits_2_naming_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(FLEET + "  escalation: [{after: 1h, receiver: fleet}]\n")
    proc = subprocess.run([sys.executable, "-m", "mevwatch", "check-config", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{path}:10: alerts.escalation: alerts.mode is fleet" in proc.stderr


def test_fleet_mode_sends_alertmanager_silenced_and_inhibited_alerts_standalone_does_not(tmp_path: Path) -> None:
    alerts = """  group_wait: 0s
  default_rules: false
  receivers: [{name: fleet, log_configs: [{}]}]
  receiver: fleet
  rules:
    - {name: NodeDown, metric: node_up, op: "==", threshold: 0, summary: s, runbook: peer-loss}
    - {name: PeersLow, metric: node_peers, op: "<", threshold: 10, summary: s, runbook: peer-loss}
"""
    sent = {}
    for mode in ("standalone", "fleet"):
        am = '      alertmanager_configs: [{urls: ["http://127.0.0.1:1"]}]\n' if mode == "fleet" else ""
        text = f"  mode: {mode}\n" + alerts.replace("  receivers: [{name: fleet, log_configs: [{}]}]\n",
                                                     "  receivers:\n    - name: fleet\n      log_configs: [{}]\n" + am)
        h = Harness(tmp_path / mode, text)
        try:
            h.engine.router.silences.add(['alertname="PeersLow"'], 3600)
            h.put(gauge("node_up", 0, endpoint="erigon"), gauge("node_peers", 2, endpoint="erigon"))
            h.advance(1)
            sent[mode] = sorted({a["labels"]["alertname"] for n in h.notifications() for a in n["alerts"]})
        finally:
            h.close()
    assert sent == {"standalone": ["NodeDown"], "fleet": ["NodeDown", "PeersLow"]}


def test_silence_add_in_fleet_mode_is_refused_with_the_way_to_alertmanager(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(FLEET)
    proc = subprocess.run(
        [sys.executable, "-m", "mevwatch", "silence", "add", "--config", str(path), "-m", 'alertname="X"', "-d", "1h"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "STATE_DIRECTORY": str(tmp_path / "state")})
    assert proc.returncode == 2
    assert "alerts.mode is fleet: silences belong to Alertmanager" in proc.stderr
    assert "--alertmanager" in proc.stderr
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())
