"""Why a rule has no data, as /api/v1/rules, the landing page and ``mevwatch diagnose`` say it: the collector of
its metric is not configured, has not run yet, fails (with its error), or runs without exporting it (and then
the monitoring-gap alert or the gauge that says why), never a list of guesses."""

from __future__ import annotations

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

