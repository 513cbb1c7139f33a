"""Transaction-execution incidents played with anvil against a running daemon, each checked on the page, in
``mevwatch diagnose`` and on ``/``: a base-fee spike that leaves the bot's fixed gas price under the runbook's
premium (and under what the market paid at its 75th percentile)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mevwatch.alerts.templates import format_value
from tests.support.anvil import Anvil, start_anvil
from tests.support.daemon import sample_value
from tests.support.screens import paged_daemon, screens_agree, screens_cleared

GWEI = 10**9
# anvil's first default account tips the market
TIPPER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
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
