"""Why a rule has no data, as /api/v1/rules, the landing page and ``mevwatch diagnose`` say it: the collector of
its metric is not configured, has not run yet, fails (with its error), or runs without exporting it (and then
the monitoring-gap alert or the gauge that says why), never a list of guesses."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mevwatch.alerts.api import CollectorsRead, engine_view, rules_json
from mevwatch.collectors.wallet import WalletCollector
from mevwatch.metric_owners import METRIC_OWNERS
from tests.unit.alerts._helpers import FLEET, Harness, gauge

WALLET = ("wallet", "default")
GAP = """    - name: MonitoringGapQueuedTransactions
      metric: mevwatch_wallet_queued_unread_reason
      op: "=="
      threshold: 1
      summary: "Queued transactions cannot be read from {{ $labels.endpoint }}: WalletQueuedNonceGap cannot fire"
      runbook: monitoring-gap
"""
RULES = """  rules:
    - {name: WalletQueuedNonceGap, metric: mevwatch_wallet_queued_nonce_gap, summary: s, runbook: queued-nonce-gap}
    - {name: HeadStale, metric: mevwatch_chain_head_age_blocks, threshold: 5, summary: s, runbook: peer-loss}
    - {name: Unowned, metric: mevwatch_nobody_declares_this, summary: s, runbook: peer-loss}
"""
DECLARED = {name: "wallet" for spec in WalletCollector.metrics for name in spec.sample_names}


def _row(success: bool | None, last_error: str = "", instance: str = "default") -> dict[str, Any]:
    return {"collector": "wallet", "instance": instance, "success": success, "last_error": last_error or None}


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path, FLEET.split("alerts:\n", 1)[1] + RULES + GAP)
    try:
        yield h
    finally:
        h.close()


def _reasons(h: Harness, collectors: CollectorsRead) -> dict[str, str]:
    h.advance(1)
    return {r["name"]: r["reason"] for r in rules_json(h.engine, collectors) if r["state"] == "nodata"}


def test_the_generated_owner_index_names_the_declaring_kind() -> None:
    assert METRIC_OWNERS["mevwatch_wallet_queued_nonce_gap"] == "wallet"
    assert METRIC_OWNERS["mevwatch_chain_head_age_blocks"] == "chain"
    assert "mevwatch_collector_success" not in METRIC_OWNERS  # the supervisor's, not a collector's


def test_a_collector_that_is_not_configured_or_disabled_is_named_and_said_so(harness: Harness) -> None:
    reasons = _reasons(harness, CollectorsRead(DECLARED, [_row(True)]))
    assert reasons["HeadStale"] == (
        "no series of mevwatch_chain_head_age_blocks: the chain collector, which exports it, is not configured")
    assert reasons["Unowned"] == ("no series of mevwatch_nobody_declares_this: no collector kind declares it "
                                  "(nor is a textfile collector configured)")
    textfile = {"collector": "textfile", "instance": "default", "success": True, "last_error": None}
    reasons = _reasons(harness, CollectorsRead(DECLARED, [_row(True), textfile]))
    assert reasons["Unowned"].endswith("no collector kind declares it, and the textfile collector exported none")
    reasons = _reasons(harness, CollectorsRead(DECLARED, [_row(True)], disabled=frozenset({"chain"})))
    assert reasons["HeadStale"].endswith("the chain collector, which exports it, is configured but disabled")


def test_a_collector_that_has_not_run_yet_is_said_so(harness: Harness) -> None:
    reasons = _reasons(harness, CollectorsRead(DECLARED, [_row(None)]))
    assert reasons["WalletQueuedNonceGap"] == (
        "no series of mevwatch_wallet_queued_nonce_gap: the wallet collector has not run yet")


def test_a_failing_collector_is_named_with_its_last_error(harness: Harness) -> None:
    rows = [_row(True, instance="a"), _row(False, "timeout: no answer in 5s", instance="b")]
    reasons = _reasons(harness, CollectorsRead(DECLARED, rows))
    assert reasons["WalletQueuedNonceGap"] == (
        "no series of mevwatch_wallet_queued_nonce_gap: the wallet collector fails (b: timeout: no answer in 5s)")


def test_a_running_collector_without_the_metric_names_the_monitoring_gap_firing(harness: Harness) -> None:
    harness.put(gauge("mevwatch_wallet_queued_unread_reason", 1, endpoint="node", method="txpool_content",
                      reason="method_not_supported"), key=WALLET)
    collectors = CollectorsRead(DECLARED, [_row(True)])
    reasons = _reasons(harness, collectors)
    assert reasons["WalletQueuedNonceGap"] == (
        "no series of mevwatch_wallet_queued_nonce_gap: the wallet collector runs but cannot make this check: "
        "MonitoringGapQueuedTransactions firing: Queued transactions cannot be read from node: "
        "WalletQueuedNonceGap cannot fire")
    # the same words on every screen that reads the engine
    [rule] = [r for r in engine_view(harness.engine, collectors)["rules"] if r["name"] == "WalletQueuedNonceGap"]
    assert rule["reason"] == reasons["WalletQueuedNonceGap"]


def test_a_running_collector_without_the_metric_names_its_reason_gauge_when_no_gap_alert_fires(
        tmp_path: Path) -> None:
    h = Harness(tmp_path, FLEET.split("alerts:\n", 1)[1] + RULES)  # no monitoring-gap rule
    try:
        h.put(gauge("mevwatch_wallet_queued_unread_reason", 1, endpoint="node", method="txpool_content",
                    reason="too_large"), key=WALLET)
        reasons = _reasons(h, CollectorsRead(DECLARED, [_row(True)]))
        assert reasons["WalletQueuedNonceGap"] == (
            "no series of mevwatch_wallet_queued_nonce_gap: the wallet collector runs but exported none; it reports "
            'mevwatch_wallet_queued_unread_reason{endpoint="node",method="txpool_content",reason="too_large"}')
    finally:
        h.close()


def test_a_running_collector_without_the_metric_or_a_word_why_is_a_check_it_could_not_make(
        harness: Harness) -> None:
    harness.put(gauge("mevwatch_wallet_queued_unread_reason", 0, endpoint="node", method="txpool_content",
                      reason="none"), key=WALLET)  # a reason gauge at 0 says nothing
    reasons = _reasons(harness, CollectorsRead(DECLARED, [_row(True)]))
    assert reasons["WalletQueuedNonceGap"] == (
        "no series of mevwatch_wallet_queued_nonce_gap: the wallet collector runs but exported no series of it "
        "(a check it could not make)")


def test_the_verdict_counts_the_failing_instances(harness: Harness) -> None:
    assert engine_view(harness.engine, CollectorsRead(DECLARED, [_row(True)]))["verdict"] == "OK"
    assert engine_view(harness.engine, CollectorsRead(DECLARED, [_row(False, "x: y")]))["verdict"] == "WARN"



STANDALONE = """  host: h1
  default_rules: false
  startup_grace: 0s
  receivers: [{name: log, log_configs: [{}]}]
  receiver: log
  inhibit_rules:
    - {source_matchers: ['alertname="NodeDown"'], target_matchers: ['alertname="PeersLow"'], equal: [endpoint]}
  rules:
    - {name: EngineDown, metric: t_engine_up, op: "==", threshold: 0, severity: critical, summary: s,
       runbook: engine-down}
    - {name: NodeDown, metric: t_node_up, op: "==", threshold: 0, severity: warning, summary: s, runbook: peer-loss}
    - {name: PeersLow, metric: t_peers, op: "<", threshold: 5, severity: critical, summary: s, runbook: peer-loss}
    - {name: DiskHigh, metric: t_disk, op: ">", threshold: 0.9, for: 5m, severity: critical, summary: s,
       runbook: disk-full}
    - {name: MonitoringGapBaseline, metric: t_baseline, op: "==", threshold: 0, for: 10m, severity: warning,
       summary: "no baseline", runbook: monitoring-gap}
    - {name: Note, metric: t_note, op: "==", threshold: 1, severity: info, summary: s, runbook: engine-down}
"""


def _screens_verdicts(h: Harness) -> tuple[str, str, str]:
    """The host's verdict as the landing page, /api/v1/* and diagnose (from that JSON) tell it, at one moment."""
    from mevwatch.daemon.diagnose import STATUS_RANK, daemon_lines
    from mevwatch.daemon.landing import landing_html

    view = json.loads(json.dumps(engine_view(h.engine, CollectorsRead())))  # as served
    page = landing_html([], view, "")
    shown = re.search(r'id="verdict">([A-Z]+)<', page)
    assert shown is not None
    doc = {"rules": view["rules"], "alerts": view["alerts"], "health": {"collectors": []}, "silence_source": None}
    lines = daemon_lines(doc, "http://x", set())
    worst = ["OK", "WARN", "CRIT"][max(STATUS_RANK[ln.status] for ln in lines)]
    return view["verdict"], shown.group(1), worst


@pytest.mark.parametrize(("metrics", "want"), [
    ({"t_engine_up": 0}, "CRIT"),  # firing critical
    ({"t_node_up": 0}, "WARN"),  # firing warning
    ({"t_note": 1}, "OK"),  # info tells, it does not count
    ({"t_disk": 0.95}, "OK"),  # pending: its `for` keeps a blip from counting
    ({"t_baseline": 0}, "OK"),  # a pending blind spot counts once it settled (alerts.gap_settle), not after 1 s
    ({"t_node_up": 0, "t_peers": 1}, "WARN"),  # a critical alert inhibited by a warning one: WARN, not CRIT
])
def test_every_screen_tells_the_same_verdict_by_one_rule(tmp_path: Path, metrics: dict[str, float],
                                                          want: str) -> None:
    h = Harness(tmp_path, STANDALONE)
    try:
        h.put(*(gauge(name, value, endpoint="erigon") for name, value in metrics.items()))
        h.advance(1)
        assert _screens_verdicts(h) == (want, want, want)
    finally:
        h.close()


def test_a_silenced_critical_alert_counts_as_warn_on_every_screen_and_says_who_holds_it(tmp_path: Path) -> None:
    from mevwatch.daemon.diagnose import daemon_lines
    from mevwatch.daemon.landing import landing_html

    h = Harness(tmp_path, STANDALONE)
    try:
        h.put(gauge("t_engine_up", 0, endpoint="erigon"))
        h.advance(1)
        assert _screens_verdicts(h) == ("CRIT", "CRIT", "CRIT")
        sil = h.engine.router.silences.add(['alertname="EngineDown"'], 7200, "alice", "engine upgrade")
        assert _screens_verdicts(h) == ("WARN", "WARN", "WARN")
        view = engine_view(h.engine, CollectorsRead())
        [alert] = view["alerts"]
        assert alert["verdict"] == {"status": "WARN", "reason": "silenced: counts as WARN, not CRIT"}
        held = f'silenced locally by {sil.id} (alice: "engine upgrade", ends at 2023-11-15 00:13:21Z)'
        assert alert["silencing"]["text"] == held
        page = landing_html([], view, "")
        assert html.escape(held) in page
        assert "1 firing (1 silenced), 0 pending alert(s)" in page
        doc = {"rules": view["rules"], "alerts": view["alerts"], "health": {"collectors": []}}
        lines = {ln.check: ln for ln in daemon_lines(doc, "http://x", set())}
        rule = lines["EngineDown (t_engine_up == 0)"]
        assert (rule.status, rule.value) == ("WARN", "firing: !endpoint=erigon=0 (silenced: counts as WARN, not CRIT)")
        assert (lines["EngineDown erigon silence"].status, lines["EngineDown erigon silence"].value) == ("INFO", held)
        h.engine.router.silences.expire(sil.id)
        assert _screens_verdicts(h) == ("CRIT", "CRIT", "CRIT")
    finally:
        h.close()


def test_a_pending_blind_spot_is_a_warning_once_it_settles_until_it_pages(tmp_path: Path) -> None:
    from mevwatch.daemon.diagnose import daemon_lines
    from mevwatch.daemon.landing import landing_html

    h = Harness(tmp_path, STANDALONE)
    try:
        h.put(gauge("t_baseline", 0), gauge("t_disk", 0.95, mountpoint="/data"))
        h.advance(1)
        view = engine_view(h.engine, CollectorsRead())
        gap, disk = sorted(view["alerts"], key=lambda a: a["labels"]["alertname"] != "MonitoringGapBaseline")
        assert (gap["state"], disk["state"]) == ("pending", "pending")
        # a blind spot of a run or two (a method that timed out once) does not flip the verdict: it settles first
        assert gap["verdict"] == {"status": "INFO", "reason": "blind spot: counts as WARN once it has lasted 1m; "
                                                              "pages once it has lasted 10m"}
        assert view["verdict"] == "OK"
        h.put(gauge("t_baseline", 0), gauge("t_disk", 0.95, mountpoint="/data"))
        h.advance(60)  # alerts.gap_settle: 1m
        view = engine_view(h.engine, CollectorsRead())
        gap, disk = sorted(view["alerts"], key=lambda a: a["labels"]["alertname"] != "MonitoringGapBaseline")
        assert (gap["state"], disk["state"]) == ("pending", "pending")
        reason = "blind now: counts as WARN; pages once it has lasted 10m"
        assert gap["verdict"] == {"status": "WARN", "reason": reason}
        assert disk["verdict"] == {"status": "INFO", "reason": "counts once it fires, after 5m"}
        page = landing_html([], view, "")
        assert ('<span class="verdict WARN" id="verdict">WARN</span> 0 firing, 2 pending alert(s) (1 of them a check'
                in page)
        assert f'<span class="WARN counts">{reason}</span>' in page
        doc = {"rules": view["rules"], "health": {"collectors": []}}
        lines = {ln.check: ln for ln in daemon_lines(doc, "http://x", set())}
        assert lines["MonitoringGapBaseline (t_baseline == 0)"].status == "WARN"
        assert lines["MonitoringGapBaseline (t_baseline == 0)"].value == f"pending: !0 ({reason})"
        assert lines["DiskHigh (t_disk > 0.9)"].status == "INFO"
        assert not h.notifications()  # nothing pages before its `for`
        h.put(gauge("t_baseline", 0), gauge("t_disk", 0.95, mountpoint="/data"))
        h.advance(540)
        view = engine_view(h.engine, CollectorsRead())
        assert {a["labels"]["alertname"]: a["state"] for a in view["alerts"]} == {
            "MonitoringGapBaseline": "firing", "DiskHigh": "firing"}
        assert _screens_verdicts(h) == ("CRIT", "CRIT", "CRIT")
        h.advance(60)  # the group's wait
        assert [a["labels"]["alertname"] for n in h.notifications() for a in n["alerts"]].count(
            "MonitoringGapBaseline") == 1
    finally:
        h.close()
