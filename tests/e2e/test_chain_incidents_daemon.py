"""The runbook's chain, RPC and engine incidents played for real against a running daemon, each one checked on
the on-call's three screens (the page, `mevwatch diagnose`, the landing page): a stale head (anvil stops
mining, with one node and with several), a node that does not answer (refused, or hung until the timeout) and
its recovery at the next run, head lag behind a named reference, methods the node does not serve, the engine's
detection latency judged apart from the probe's round trip, and the facts of transaction pages."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.anvil import Anvil, deploy_reverting, start_anvil, wallet_collector_yaml
from tests.support.daemon import RunningDaemon, sample_value
from tests.support.engine import EngineStub
from tests.support.peers import free_port
from tests.support.rpcproxy import Fault, ThreadedRpcProxy
from tests.support.screens import firing_alert, paged_daemon, pages_of, screens_agree, screens_cleared


@pytest.fixture(scope="module")
def mining_pair() -> Iterator[tuple[Anvil, Anvil]]:
    """Two anvil nodes mining a block every second (each test that stops one starts it again)."""
    a, b = start_anvil("--block-time", "1"), start_anvil("--block-time", "1")
    try:
        yield a, b
    finally:
        for node in (a, b):
            node.stop()
            node.log.unlink(missing_ok=True)


def _rules(d: RunningDaemon) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in json.loads(d.get("/api/v1/rules"))["data"]["rules"]}


def _learned_block_time(d: RunningDaemon, endpoints: list[str], timeout: float = 20.0) -> None:
    """Wait until the daemon has learned a block time of about a second on every endpoint."""
    deadline = time.monotonic() + timeout
    while True:
        text = d.get()
        learned = [sample_value(text, "mevwatch_chain_block_time_seconds", endpoint=e) for e in endpoints]
        if all(x is not None and x <= 1.5 for x in learned):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"block times not learned: {dict(zip(endpoints, learned, strict=True))}")
        time.sleep(0.2)


def test_stale_head_pages_with_one_node_and_with_several(tmp_path: Path, mining_pair: tuple[Anvil, Anvil]) -> None:
    a, b = mining_pair
    collectors = f"""collectors:
  - chain: {{instance: single, interval: 1s, endpoints: [{{name: solo, url: "{a.url}"}}]}}
  - chain: {{instance: pair, interval: 1s, endpoints: [{{name: a, url: "{a.url}"}}, {{name: b, url: "{b.url}"}}]}}
"""
    with paged_daemon(tmp_path, collectors) as (d, hook):
        _learned_block_time(d, ["solo", "a", "b"])
        assert _rules(d)["HeadStale"]["state"] == "inactive"
        try:
            for node in (a, b):  # mining stops on every node: no reference can tell
                node.rpc("evm_setIntervalMining", [0])
            seen = {e: screens_agree(d, hook, "HeadStale", endpoint=e) for e in ("solo", "a", "b")}
            # head lag sees nothing: both nodes stopped at the same height
            assert (sample_value(d.get(), "mevwatch_chain_head_lag_blocks", endpoint="a") or 0) <= 1
            for e, s in seen.items():
                assert s.page["labels"]["severity"] == "critical"
                assert s.page["annotations"]["summary"].startswith(f"No new block on {e} for ")
                assert s.page["annotations"]["summary"].endswith(" block times on mev-host-1")
                assert s.line["status"] == "CRIT"
        finally:
            for node in (a, b):
                node.rpc("evm_setIntervalMining", [1])
        # mining again: the alert resolves on every screen
        screens_cleared(d, hook, "HeadStale", endpoint="solo")


def test_node_down_says_why_and_recovery_is_seen_at_the_next_run(
        tmp_path: Path, mining_pair: tuple[Anvil, Anvil]) -> None:
    a, _ = mining_pair
    with ThreadedRpcProxy(a.url) as proxy:
        collectors = f"""collectors:
  - chain:
      interval: 1s
      timeout: 1900ms
      endpoints:
        - {{name: refused, url: "http://127.0.0.1:{free_port()}"}}
        - {{name: hung, url: "{proxy.url}", timeout: 1s, connect_timeout: 1s}}
"""
        proxy.set("*", Fault(hang=True))  # the node accepts the connection and never answers
        with paged_daemon(tmp_path, collectors, instant=["NodeDown"]) as (d, hook):
            refused = screens_agree(d, hook, "NodeDown", endpoint="refused")
            assert "reason" not in refused.page["labels"]  # told in the text: a reason that moves is not identity
            assert refused.page["annotations"]["summary"] == "Node refused does not answer on mev-host-1: refused"
            hung = screens_agree(d, hook, "NodeDown", endpoint="hung")
            assert hung.page["annotations"]["summary"] == "Node hung does not answer on mev-host-1: timeout"
            assert "does not answer on mev-host-1: timeout" in hung.row
            assert any(ln["value"] == hung.page["annotations"]["summary"] for ln in hung.diagnose["lines"])
            assert hung.line["status"] == "CRIT"

            # the node answers again: the run under way when it recovers may still time out, the next one sees it
            runs_before = proxy.calls["eth_chainId"]
            proxy.clear("*")
            d.wait_value("mevwatch_chain_up", 1, timeout=15, endpoint="hung")
            assert proxy.calls["eth_chainId"] - runs_before <= 2, "runs were skipped after the node came back"
            page = screens_cleared(d, hook, "NodeDown", endpoint="hung")
            assert page["annotations"]["summary"] == "Node hung does not answer on mev-host-1: timeout"
            # the refused node is still down, and still on every screen
            assert screens_agree(d, hook, "NodeDown", endpoint="refused").alert == refused.alert


def _wait_reason(d: RunningDaemon, endpoint: str, reason: str, timeout: float = 15.0) -> None:
    d.wait_value("mevwatch_chain_down_reason", 1, timeout=timeout, endpoint=endpoint, reason=reason)


def test_a_node_swinging_between_timeout_and_refused_pages_once_for_after_its_first_failure(
        tmp_path: Path, mining_pair: tuple[Anvil, Anvil]) -> None:
    """A sick node hangs, then refuses, then hangs again: one outage. NodeDown fires once, ``for`` after the
    first failure (not after the last change of reason), names the reason of the last run, and sends no
    resolved page until the node answers again."""
    a, _ = mining_pair
    hold = 12.0  # NodeDown's `for` here; the reason changes several times within it
    with ThreadedRpcProxy(a.url) as proxy:
        collectors = f"""collectors:
  - chain:
      interval: 1500ms
      timeout: 2900ms
      endpoints: [{{name: sick, url: "{proxy.url}", timeout: 1s, connect_timeout: 1s}}]
"""
        with paged_daemon(tmp_path, collectors, extra=f"  rule_overrides:\n    NodeDown: {{for: {hold:g}s}}\n") as (
                d, hook):
            d.wait_value("mevwatch_chain_up", 1, timeout=15, endpoint="sick")
            proxy.set("*", Fault(hang=True))
            failed_at = time.monotonic()  # the first failing run starts after this
            _wait_reason(d, "sick", "timeout")
            swings = 0
            while True:  # timeout -> refused -> timeout -> ... -> refused, for half of `for`
                proxy.refuse_connections()
                _wait_reason(d, "sick", "refused")
                swings += 1
                if time.monotonic() - failed_at >= hold / 2:
                    break
                proxy.listen()
                _wait_reason(d, "sick", "timeout")
            assert time.monotonic() - failed_at < hold - 2, "the swings outlasted `for`: slow machine?"
            seen = screens_agree(d, hook, "NodeDown", endpoint="sick", timeout=hold + 10)
            pages = pages_of(hook, "NodeDown", endpoint="sick")
            assert [p["status"] for p in pages] == ["firing"], pages
            waited = pages[0]["received_at"] - failed_at
            # `for` counts from the first failure: at most a run and the delivery later, never `for`
            # from the last change of reason (that would be hold/2 s later still)
            assert hold - 0.5 <= waited <= hold + 3.5, (waited, swings)
            assert seen.page["annotations"]["summary"] == "Node sick does not answer on mev-host-1: refused"

            # firing, the node hangs again: the same alert, no resolved page, its text tells the new reason
            proxy.listen()
            _wait_reason(d, "sick", "timeout")
            deadline = time.monotonic() + 10
            while "timeout" not in json.dumps(firing_summaries(d, "NodeDown")):
                assert time.monotonic() < deadline, firing_summaries(d, "NodeDown")
                time.sleep(0.2)
            assert firing_summaries(d, "NodeDown") == ["Node sick does not answer on mev-host-1: timeout"]
            assert firing_alert(d, "NodeDown", endpoint="sick")["fingerprint"] == seen.alert["fingerprint"]
            assert [p["status"] for p in pages_of(hook, "NodeDown", endpoint="sick")] == ["firing"]

            proxy.clear("*")
            screens_cleared(d, hook, "NodeDown", endpoint="sick")
            assert [p["status"] for p in pages_of(hook, "NodeDown", endpoint="sick")] == ["firing", "resolved"]


def firing_summaries(d: RunningDaemon, alertname: str) -> list[str]:
    return [a["annotations"]["summary"] for a in json.loads(d.get("/api/v1/alerts"))["data"]["alerts"]
            if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


def test_head_lag_names_its_reference(tmp_path: Path, mining_pair: tuple[Anvil, Anvil]) -> None:
    a, b = mining_pair
    collectors = f"""collectors:
  - chain:
      interval: 1s
      endpoints: [{{name: erigon, url: "{b.url}"}}]
      reference: {{name: upstream, url: "{a.url}"}}
"""
    with paged_daemon(tmp_path, collectors, instant=["HeadLag"]) as (d, hook):
        d.wait_for("mevwatch_chain_head_lag_blocks", timeout=15, endpoint="erigon")
        try:
            b.rpc("evm_setIntervalMining", [0])
            a.rpc("anvil_mine", ["0xa"])  # the reference moves ten blocks ahead
            seen = screens_agree(d, hook, "HeadLag", endpoint="erigon")
        finally:
            b.rpc("evm_setIntervalMining", [1])
    summary = seen.page["annotations"]["summary"]
    m = re.fullmatch(r"Node erigon is (\d+) blocks behind upstream on mev-host-1: head (\d+), upstream at (\d+)",
                     summary)
    assert m is not None, summary
    lag, head, ahead = map(int, m.groups())
    assert lag >= 10, summary
    assert ahead - head == lag, summary  # both heads, as the node and the reference answered them
    assert head <= int(b.rpc("eth_blockNumber"), 16)
    assert ahead <= int(a.rpc("eth_blockNumber"), 16)
    assert seen.line["status"] == "WARN"


def test_methods_the_node_does_not_serve_are_visible_monitoring_gaps(
        tmp_path: Path, mining_pair: tuple[Anvil, Anvil]) -> None:
    a, _ = mining_pair
    with ThreadedRpcProxy(a.url) as proxy:
        # anvil does not serve net_peerCount over HTTP; the proxy takes eth_syncing away too
        proxy.set("eth_syncing", Fault(rpc_error=(-32601, "the method eth_syncing does not exist/is not available")))
        collectors = f"""collectors:
  - chain: {{interval: 1s, endpoints: [{{name: node, url: "{proxy.url}"}}]}}
"""
        with paged_daemon(tmp_path, collectors, instant=["MonitoringGapPeerCount", "MonitoringGapSyncStatus"]) as (
                d, hook):
            peers = screens_agree(d, hook, "MonitoringGapPeerCount", endpoint="node")
            sync = screens_agree(d, hook, "MonitoringGapSyncStatus", endpoint="node")
            text = d.get()
            assert sample_value(text, "mevwatch_rpc_method_supported", endpoint="node", method="net_peerCount") == 0
            assert sample_value(text, "mevwatch_rpc_method_supported", endpoint="node", method="eth_syncing") == 0
            rules = _rules(d)
    assert peers.page["annotations"]["summary"] == (
        "Peer count of node node cannot be read on mev-host-1: PeersLow cannot fire")
    assert sync.page["annotations"]["summary"] == (
        "Sync status of node node cannot be read on mev-host-1: NodeSyncing cannot fire")
    for s in (peers, sync):
        assert s.page["labels"]["severity"] == "warning"
        assert s.line["status"] == "WARN"
        assert s.alert["annotations"]["runbook_url"].endswith("#monitoring-gap")
    # the rules the gaps disable judge nothing, and say so
    assert rules["PeersLow"]["state"] == "nodata"
    assert rules["NodeSyncing"]["state"] == "nodata"


def test_detection_latency_is_the_engines_own_and_the_probe_has_its_own_budget(tmp_path: Path) -> None:
    with EngineStub() as engine:
        # a fast API whose engine reports a detection latency over the runbook's 15 ms, and a slow API whose
        # engine detects within budget: each breaks one budget only
        engine.set("/health", body={"status": "ok", "latency": {"detection_ms": 25}})
        engine.set("/slow", body={"status": "ok", "latency": {"detection_ms": 3}}, delay=0.3)
        collectors = f"""collectors:
  - http:
      interval: 1s
      timeout: 1900ms
      targets:
        - {{name: detecting, url: "{engine.url('/health')}", latency_field: latency.detection_ms}}
        - {{name: starved, url: "{engine.url('/slow')}", latency_field: latency.detection_ms}}
"""
        with paged_daemon(tmp_path, collectors, instant=["EngineLatencyHigh", "EngineProbeSlow"]) as (d, hook):
            latency = screens_agree(d, hook, "EngineLatencyHigh", target="detecting")
            slow = screens_agree(d, hook, "EngineProbeSlow", target="starved")
            rules = _rules(d)
    assert latency.page["annotations"]["summary"] == (
        "Engine detecting reports 25ms detection latency on mev-host-1 (budget 15ms)")
    assert slow.page["annotations"]["summary"].startswith("Engine probe starved p99 round trip ")
    # each target breaks one budget, not the other
    assert [a["labels"]["target"] for a in rules["EngineLatencyHigh"]["alerts"]] == ["detecting"]
    assert [a["labels"]["target"] for a in rules["EngineProbeSlow"]["alerts"]] == ["starved"]
    starved = [s for s in rules["EngineLatencyHigh"]["series"] if s["labels"]["target"] == "starved"]
    assert [(s["value"], s["breach"]) for s in starved] == [(0.003, False)]


# anvil's third default account deploys the contract; the second is the watched wallet
DEPLOYER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
BOT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
STRANGER = "0x000000000000000000000000000000000000dEaD"


def _mined(node: Anvil, tx: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return node.rpc("eth_getTransactionByHash", [tx]), node.rpc("eth_getTransactionReceipt", [tx])


def test_transaction_pages_carry_the_responders_facts(tmp_path: Path) -> None:
    node = start_anvil()  # mines each transaction as it is sent
    try:
        contract = deploy_reverting(node, DEPLOYER)
        collectors = wallet_collector_yaml(node, BOT, contract)
        with paged_daemon(tmp_path, collectors) as (d, hook):
            d.wait_for("mevwatch_wallet_balance_ether", timeout=15, wallet="bot")
            sent = node.rpc("eth_sendTransaction", [{"from": BOT, "to": STRANGER, "value": "0x2386f26fc10000"}])
            failed = node.rpc("eth_sendTransaction", [{"from": BOT, "to": contract, "gas": "0x30000"}])
            unexpected = screens_agree(d, hook, "UnexpectedOutgoingTransaction", wallet="bot")
            failure = screens_agree(d, hook, "WalletTransactionFailures", wallet="bot")
        for seen, tx in ((unexpected, sent), (failure, failed)):
            got, receipt = _mined(node, tx)
            labels = seen.page["labels"]
            assert labels["tx"] == tx
            assert labels["address"].lower() == BOT.lower() == got["from"].lower()
            assert labels["to"].lower() == got["to"].lower()
            assert labels["nonce"] == str(int(got["nonce"], 16))
            assert labels["block"] == str(int(receipt["blockNumber"], 16))
            assert seen.page["annotations"]["description"].startswith(f"Explorer: https://etherscan.io/tx/{tx} ")
            for fact in (tx, labels["to"], labels["block"], labels["nonce"]):
                assert fact in seen.page["annotations"]["summary"]
                assert fact in seen.row  # the landing page's summary carries them too
        assert _mined(node, failed)[1]["status"] == "0x0"
        assert unexpected.page["labels"]["to"].lower() == STRANGER.lower()
        assert unexpected.page["labels"]["value_ether"] == "0.01"
        assert unexpected.page["labels"]["severity"] == "critical"
        assert unexpected.line["status"] == "CRIT"
        assert failure.page["labels"]["value_ether"] == "0"
        assert failure.page["annotations"]["summary"].startswith(f"Transaction {failed} from bot ")
        assert failure.line["status"] == "WARN"
    finally:
        node.stop()
        node.log.unlink(missing_ok=True)
