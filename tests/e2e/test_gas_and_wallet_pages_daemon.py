"""Transaction-execution incidents played with anvil against a running daemon, each checked on the page, in
``mevwatch diagnose`` and on ``/``: a base-fee spike that leaves the bot's fixed gas price under the runbook's
premium (and under what the market paid at its 75th percentile), and several failed and unexpected transactions
found in one interval, told on one page each with their count and hashes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mevwatch.alerts.templates import format_value
from tests.support.anvil import Anvil, deploy_reverting, start_anvil, wallet_collector_yaml
from tests.support.daemon import sample_value
from tests.support.screens import paged_daemon, screens_agree, screens_cleared

GWEI = 10**9
# anvil's default accounts: the first tips the market, the second is the watched bot, the third deploys
TIPPER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
BOT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
DEPLOYER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
STRANGER = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture
def node() -> Iterator[Anvil]:
    """An anvil that mines only when told (evm_mine), so a test decides what one block holds."""
    n = start_anvil("--no-mining")
    try:
        yield n
    finally:
        n.stop()
        n.log.unlink(missing_ok=True)


def _next_base_fee(node: Anvil) -> int:
    return int(node.rpc("eth_feeHistory", ["0x1", "latest", []])["baseFeePerGas"][-1], 16)


def test_a_base_fee_spike_puts_a_fixed_bid_under_the_runbooks_premium(tmp_path: Path, node: Anvil) -> None:
    node.rpc("evm_mine")
    collectors = f"""collectors:
  - gas: {{interval: 1s, endpoint: {{name: node, url: "{node.url}"}}, bid: {{kind: gas_price_gwei, value: 30}}}}
"""
    instant = ["GasBidBelowRunbookPremium", "GasBidUncompetitive"]
    with paged_daemon(tmp_path, collectors, instant) as (d, hook):
        calm = d.wait_for("mevwatch_gas_bid_runbook_ratio", timeout=15, basis="base_fee_x1.15")
        assert calm > 10  # 30 gwei against a base fee of about a gwei
        # the spike: a block at a 40 gwei base fee, with a transaction tipping 2 gwei in it
        node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(40 * GWEI)])
        node.rpc("eth_sendTransaction", [{"from": TIPPER, "to": STRANGER, "value": "0x1",
                                          "maxPriorityFeePerGas": hex(2 * GWEI), "maxFeePerGas": hex(100 * GWEI)}])
        node.rpc("evm_mine")
        base = _next_base_fee(node)
        assert base * 1.15 > 30 * GWEI
        premium = screens_agree(d, hook, "GasBidBelowRunbookPremium", basis="base_fee_x1.15")
        market = screens_agree(d, hook, "GasBidUncompetitive", percentile="75")
        text = d.get()
        # the fee has come down: the bid is competitive again on both bases
        node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(10 * GWEI)])
        node.rpc("evm_mine")
        screens_cleared(d, hook, "GasBidBelowRunbookPremium", basis="base_fee_x1.15")
        screens_cleared(d, hook, "GasBidUncompetitive", percentile="75")
    ratio = 30 * GWEI / (base * 1.15)
    assert premium.page["annotations"]["summary"] == (
        f"Gas bid is {format_value(ratio, 'humanizePercentage')} of the runbook's base fee x1.15 on mev-host-1")
    assert premium.page["labels"]["kind"] == "gas_price_gwei"
    assert premium.line["status"] == "WARN"
    assert 'basis="base_fee_x1.15"' in premium.line["check"]
    assert premium.line["value"] == f"firing: !endpoint=node={ratio:.4g}"  # the bid against the runbook's price
    # the runbook's other basis, the 75th percentile of what the market paid: the node's own figure
    assert sample_value(text, "mevwatch_gas_priority_fee_wei", percentile="75") == 2 * GWEI
    versus_p75 = 30 * GWEI / (base + 2 * GWEI)
    assert market.page["annotations"]["summary"] == (
        f"Gas bid is {format_value(versus_p75, 'humanizePercentage')} of what the market paid at its 75th "
        "percentile on mev-host-1")
    assert market.line["status"] == "WARN"


def _facts(node: Anvil, tx: str) -> dict[str, Any]:
    return dict(node.rpc("eth_getTransactionByHash", [tx]))


def test_several_transactions_in_one_interval_are_counted_and_listed_on_the_page(
        tmp_path: Path, node: Anvil) -> None:
    contract = deploy_reverting(node, DEPLOYER)
    collectors = wallet_collector_yaml(node, BOT, contract)
    with paged_daemon(tmp_path, collectors) as (d, hook):
        d.wait_for("mevwatch_wallet_followed_block", timeout=15, endpoint="node")
        # five calls that revert and two transfers to a stranger, all in one block: one interval of the collector
        failed = [node.rpc("eth_sendTransaction", [{"from": BOT, "to": contract, "gas": "0x30000"}])
                  for _ in range(5)]
        sent = [node.rpc("eth_sendTransaction", [{"from": BOT, "to": STRANGER, "value": hex(10**16)}])
                for _ in range(2)]
        node.rpc("evm_mine")
        failure = screens_agree(d, hook, "WalletTransactionFailures", wallet="bot")
        unexpected = screens_agree(d, hook, "UnexpectedOutgoingTransaction", wallet="bot")
        counted = sample_value(d.get(), "mevwatch_wallet_transactions_total", wallet="bot", status="failed")
    assert counted == 5
    assert all(node.rpc("eth_getTransactionReceipt", [tx])["status"] == "0x0" for tx in failed)
    # one page each, of the last transaction found, saying how many were found with it and listing them
    for seen, txs, what in ((failure, failed, "failed"), (unexpected, sent, "unexpected")):
        labels = seen.page["labels"]
        assert labels["tx"] == txs[-1]
        assert labels["nonce"] == str(int(_facts(node, txs[-1])["nonce"], 16))
        assert labels["found"] == str(len(txs))
        listed = ", ".join(txs[:3]) + (f" +{len(txs) - 3} more" if len(txs) > 3 else "")
        assert labels["found_txs"] == listed
        summary = seen.page["annotations"]["summary"]
        assert summary.endswith(f"; {len(txs)} {what} transaction(s) of the wallet found at once: {listed}"), summary
        assert listed in seen.row  # the landing page's summary too
        pages = [a for r in hook.delivered() for a in r.json()["alerts"]
                 if a["labels"]["alertname"] == seen.page["labels"]["alertname"]]
        assert {a["labels"]["tx"] for a in pages} == {txs[-1]}  # the others are told on it, not lost
    assert failure.line["status"] == "WARN"
    assert unexpected.line["status"] == "CRIT"
