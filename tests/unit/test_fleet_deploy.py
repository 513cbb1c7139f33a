"""The fleet's shipped configs: valid for promtool and amtool, the watcher rules unit-tested, and the
Alertmanager route grouping by host as mevwatch's notification identity assumes."""

from __future__ import annotations

import subprocess

import yaml

from mevwatch.alerts.identity import HOST_LABEL
from mevwatch.alerts.runbooks import runbook_anchors
from tests.support.peers import REPO, need_binary

DEPLOY = REPO / "deploy"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_binary(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60,
                          cwd=DEPLOY / "prometheus")


def test_watcher_rules_pass_their_promtool_tests() -> None:
    proc = _run("promtool", "test", "rules", "fleet-rules.test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_site_and_central_prometheus_configs_are_valid() -> None:
    for name in ("prometheus.yml", "central.yml"):
        proc = _run("promtool", "check", "config", name)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alertmanager_config_is_valid_and_groups_by_host() -> None:
    path = DEPLOY / "alertmanager" / "alertmanager.yml"
    proc = _run("amtool", "check-config", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    route = yaml.safe_load(path.read_text())["route"]
    assert HOST_LABEL in route["group_by"]
    assert all("group_by" not in r or HOST_LABEL in r["group_by"] for r in route["routes"])


def test_alerts_drop_what_is_not_identity_and_keep_instance_as_mevwatch_names_it() -> None:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    dropped = doc["alerting"]["alert_relabel_configs"][0]
    assert dropped["action"] == "labeldrop"
    for label in ("job", *doc["global"]["external_labels"]):
        assert label in dropped["regex"].split("|")
    [job] = doc["scrape_configs"]
    assert [c.get("source_labels") for c in job["metric_relabel_configs"]] == [["exported_instance"], None]


def test_every_watcher_rule_links_a_runbook_section() -> None:
    anchors = runbook_anchors()
    assert anchors is not None
    rules = yaml.safe_load((DEPLOY / "prometheus" / "fleet-rules.yml").read_text())["groups"][0]["rules"]
    for r in rules:
        assert r["annotations"]["runbook_url"].split("#")[1] in anchors, r["alert"]
        assert r["alert"] in (REPO / "docs" / "runbooks.md").read_text(), r["alert"]
