"""Gas market from eth_feeHistory and the bot's bid competitiveness, on literal answers and against anvil."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mevwatch.collectors.base import CollectorContext, CollectorError, Families
from mevwatch.collectors.gas import (
    GWEI,
    BidConfigError,
    GasCollector,
    GasOptions,
    bid_from_yaml,
    competitiveness,
    summarize_fee_history,
)
from mevwatch.daemon.config import ConfigError, load_config_text
from tests.support.anvil import DEV_ACCOUNT, Anvil, anvil_no_mining  # noqa: F401 - fixture
from tests.support.peers import free_port
from tests.support.rpcproxy import Fault, RpcProxy

# anvil's answer after one empty and one non-empty block (1 gwei tips)
ANVIL_HISTORY = {
    "baseFeePerGas": ["0x3b9aca00", "0x3b9aca00", "0x342a1c58"],
    "gasUsedRatio": [0.0, 0.0007],
    "baseFeePerBlobGas": ["0x1", "0x1", "0x1"],
    "blobGasUsedRatio": [0.0, 0.0],
    "oldestBlock": "0x0",
    "reward": [["0x0", "0x0", "0x0"], ["0x3b9aca00", "0x3b9aca00", "0x77359400"]],
}


def test_summary_of_a_real_answer() -> None:
    s = summarize_fee_history(ANVIL_HISTORY, [10, 50, 90])
    assert s.blocks == 2
    assert s.next_base_fee == 0x342A1C58
    assert s.latest_base_fee == 1_000_000_000
    # the empty block's zero tips are left out of the means
    assert s.rewards == {10: 1e9, 50: 1e9, 90: 2e9}
    assert s.blocks_with_transactions == 1
    assert s.gas_used_ratio == pytest.approx(0.00035)
    assert s.last_gas_used_ratio == pytest.approx(0.0007)


def test_summary_of_only_empty_blocks_has_zero_tips() -> None:
    s = summarize_fee_history({**ANVIL_HISTORY, "gasUsedRatio": [0.0, 0.0]}, [10, 50, 90])
    assert s.rewards == {10: 0.0, 50: 0.0, 90: 0.0}
    assert s.blocks_with_transactions == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"oldestBlock": 5}, "oldestBlock"),
        ({"baseFeePerGas": ["0x1"]}, "1 base fees for 2 blocks"),
        ({"gasUsedRatio": []}, "empty window"),
        ({"gasUsedRatio": [0.1, 1.5]}, r"gasUsedRatio\[1\]"),
        ({"gasUsedRatio": [0.1, "0.2"]}, r"gasUsedRatio\[1\]"),
        ({"reward": [["0x0", "0x0", "0x0"]]}, "expected 2 rows"),
        ({"reward": None}, "expected 2 rows"),
        ({"reward": [["0x0", "0x0"], ["0x0", "0x0", "0x0"]]}, r"reward\[0\]: expected 3 values"),
        ({"reward": [["0x0", "0x0", "0x0"], ["0x0", "zz", "0x0"]]}, r"reward\[1\]\[1\]"),
        ({"baseFeePerGas": "0x1"}, "must be lists"),
    ],
)
def test_malformed_fee_history_is_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        summarize_fee_history({**ANVIL_HISTORY, **change}, [10, 50, 90])


def test_bid_from_the_bots_yaml() -> None:
    text = "detection:\n  enabled: true\n  gas_price_multiplier: 1.1\n  min_profit_wei: 10000000000000000\n"
    assert bid_from_yaml(text, "detection.gas_price_multiplier") == 1.1
    assert bid_from_yaml("bid: '2.5'\n", "bid") == 2.5


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("detection: [unclosed\n", "invalid_yaml"),
        ("detection:\n  enabled: true\n", "key_missing"),
        ("", "key_missing"),
        ("detection: 3\n", "key_missing"),
        ("detection:\n  gas_price_multiplier: high\n", "not_a_number"),
        ("detection:\n  gas_price_multiplier: true\n", "not_a_number"),
        ("detection:\n  gas_price_multiplier: -1\n", "not_a_number"),
        ("detection:\n  gas_price_multiplier: {a: 1}\n", "not_a_number"),
    ],
)
def test_bad_bot_yaml_has_a_clear_status(text: str, status: str) -> None:
    with pytest.raises(BidConfigError) as err:
        bid_from_yaml(text, "detection.gas_price_multiplier")
    assert err.value.status == status


def test_competitiveness_per_kind() -> None:
    base, tip = 10 * GWEI, 2 * GWEI
    bid, market, ratio = competitiveness("multiplier", 1.1, base, tip)
    assert bid == pytest.approx(11 * GWEI)
    assert market == 12 * GWEI
    assert ratio == pytest.approx(11 / 12)
    assert competitiveness("gas_price_gwei", 15, base, tip)[2] == pytest.approx(15 / 12)
    assert competitiveness("priority_fee_gwei", 1, base, tip)[2] == pytest.approx(0.5)
    assert competitiveness("priority_fee_gwei", 1, base, 0.0)[2] is None


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ("blocks: 0", "blocks", "between 1 and 1024"),
        ("percentiles: [50, 10]", "percentiles", "strictly increasing"),
        ("percentiles: [101]", "percentiles", "within 0..100"),
        ("bid: {value: 1.1, file: /etc/mev/detection-config.yaml}", "bid", "exactly one of value"),
        ("bid: {}", "bid", "exactly one of value"),
        ("bid: {value: 0}", "bid.value", "positive"),
        ("bid: {value: 1.1, percentile: 80}", "", "must be one of percentiles"),
        ("{percentiles: [10, 50, 90], bid: {value: 1.1, percentile: 75}}", "",
         "bid.percentile 75 must be one of percentiles"),
        ("bid: {value: 1.1, kind: wei}", "bid.kind", "multiplier"),
        ("bid: {file: /x.yaml, key: 'a..b'}", "bid.key", "dotted path"),
    ],
)
def test_bad_options_are_rejected(body: str, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text(f"collectors:\n  - gas:\n      {body}\n", "t.yaml")
    where = "collectors[0].gas" + (f".{field}" if field else "")
    assert any(f"{where}: " in str(i) and message in str(i) for i in err.value.issues), err.value.issues


def test_a_bid_with_no_percentile_gets_the_runbooks_75th_added_to_a_list_that_lacks_it() -> None:
    # a config written when the 50th was the default keeps loading (a reload refused would keep the old config)
    cfg = load_config_text("collectors:\n  - gas:\n      {percentiles: [10, 50, 90], bid: {value: 1.1}}\n", "t.yaml")
    [spec] = cfg.collectors
    options = spec.options
    assert isinstance(options, GasOptions)
    assert list(options.percentiles) == [10.0, 50.0, 75.0, 90.0]
    assert options.bid is not None
    assert options.bid.percentile == 75.0


# --- against anvil -------------------------------------------------------------------------------


def _value(families: Families, name: str, **labels: str) -> float | None:
    for fam in families:
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def _gas(url: str, **opts: Any) -> GasCollector:
    options = GasOptions.model_validate({"endpoint": {"name": "node", "url": url, "timeout": 1.0,
                                                      "connect_timeout": 1.0}, **opts})
    return GasCollector(CollectorContext(kind="gas", instance="t", interval=1.0, timeout=3.0), options)


@pytest.fixture(scope="module")
def mined(anvil_no_mining: Anvil) -> Anvil:  # noqa: F811 - fixture from import
    """A block with two transactions tipping 1 and 3 gwei, mined on purpose."""
    for tip in (1, 3):
        anvil_no_mining.rpc("eth_sendTransaction", [{
            "from": DEV_ACCOUNT, "to": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "value": "0x1",
            "maxPriorityFeePerGas": hex(tip * GWEI), "maxFeePerGas": hex(100 * GWEI),
        }])
    anvil_no_mining.rpc("evm_mine")
    return anvil_no_mining


async def test_market_and_bid_ratio_from_anvil(mined: Anvil, tmp_path: Path) -> None:
    bot = tmp_path / "detection-config.yaml"
    bot.write_text("detection:\n  gas_price_multiplier: 1.1\n")
    c = _gas(mined.url, blocks=1, bid={"file": str(bot), "percentile": 90})
    try:
        fams = await c.collect()
    finally:
        await c.close()
    raw = await asyncio.to_thread(mined.rpc, "eth_feeHistory", ["0x1", "latest", [10, 50, 90]])
    next_base = int(raw["baseFeePerGas"][-1], 16)
    assert _value(fams, "mevwatch_gas_next_base_fee_wei") == next_base
    assert _value(fams, "mevwatch_gas_priority_fee_wei", percentile="10") == 1 * GWEI
    assert _value(fams, "mevwatch_gas_priority_fee_wei", percentile="90") == 3 * GWEI
    used = _value(fams, "mevwatch_gas_used_ratio")
    assert used is not None
    assert 0 < used < 1
    assert _value(fams, "mevwatch_gas_bid_config_status", status="ok") == 1
    assert _value(fams, "mevwatch_gas_bid_config_status", status="missing") == 0
    ratio = _value(fams, "mevwatch_gas_bid_competitiveness_ratio", percentile="90", kind="multiplier")
    assert ratio == pytest.approx(1.1 * next_base / (next_base + 3 * GWEI))
    # the runbook's basis beside it: the recent base fee plus 15% (or 30%)
    assert _value(fams, "mevwatch_gas_runbook_price_wei", basis="base_fee_x1.15") == pytest.approx(next_base * 1.15)
    assert _value(fams, "mevwatch_gas_bid_runbook_ratio", basis="base_fee_x1.15") == pytest.approx(1.1 / 1.15)
    assert _value(fams, "mevwatch_gas_bid_runbook_ratio", basis="base_fee_x1.3") == pytest.approx(1.1 / 1.3)


async def test_the_runbooks_75th_percentile_is_offered_and_judged_by_default(mined: Anvil) -> None:
    c = _gas(mined.url, blocks=1, bid={"value": 1.1})
    try:
        fams = await c.collect()
    finally:
        await c.close()
    raw = await asyncio.to_thread(mined.rpc, "eth_feeHistory", ["0x1", "latest", [10, 50, 75, 90]])
    next_base, p75 = int(raw["baseFeePerGas"][-1], 16), int(raw["reward"][0][2], 16)
    assert p75 == 3 * GWEI  # of the tips 1 and 3 gwei, as the node computes it
    offered = {s.labels["percentile"] for f in fams for s in f.samples if s.name == "mevwatch_gas_priority_fee_wei"}
    assert offered == {"10", "50", "75", "90"}
    assert _value(fams, "mevwatch_gas_priority_fee_wei", percentile="75") == p75
    assert _value(fams, "mevwatch_gas_bid_competitiveness_ratio", percentile="75") == pytest.approx(
        1.1 * next_base / (next_base + p75))
    assert _value(fams, "mevwatch_gas_bid_competitiveness_ratio", percentile="50") is None  # one basis: the 75th


async def test_missing_bot_yaml_is_a_status_not_a_failure(mined: Anvil, tmp_path: Path) -> None:
    c = _gas(mined.url, bid={"file": str(tmp_path / "nope.yaml")})
    try:
        fams = await c.collect()
        (tmp_path / "nope.yaml").write_text("detection: {gas_price_multiplier: [1]}\n")
        bad = await c.collect()
    finally:
        await c.close()
    assert _value(fams, "mevwatch_gas_bid_config_status", status="missing") == 1
    assert _value(fams, "mevwatch_gas_bid_competitiveness_ratio") is None
    assert _value(fams, "mevwatch_gas_next_base_fee_wei") is not None  # the market is still measured
    assert _value(bad, "mevwatch_gas_bid_config_status", status="not_a_number") == 1


async def test_bid_as_a_number_in_mevwatch_config(mined: Anvil) -> None:
    c = _gas(mined.url, blocks=1, bid={"value": 2, "kind": "priority_fee_gwei", "percentile": 50})
    try:
        fams = await c.collect()
    finally:
        await c.close()
    assert _value(fams, "mevwatch_gas_bid_value", kind="priority_fee_gwei") == 2
    p50 = _value(fams, "mevwatch_gas_priority_fee_wei", percentile="50")
    assert p50 is not None
    assert _value(fams, "mevwatch_gas_bid_competitiveness_ratio", percentile="50") == pytest.approx(2 * GWEI / p50)
    assert _value(fams, "mevwatch_gas_bid_runbook_ratio") is None  # a tip alone has no total-price basis


@pytest.fixture
async def proxy(anvil_no_mining: Anvil) -> AsyncIterator[RpcProxy]:  # noqa: F811 - fixture from import
    async with RpcProxy(anvil_no_mining.url) as p:
        yield p


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault(result={"oldestBlock": "0x0", "baseFeePerGas": [], "gasUsedRatio": [], "reward": []}),
         "invalid_response"),
        (Fault(result=None), "invalid_response"),
        (Fault(non_json=True), "invalid_response"),
        (Fault(http_status=503), "http_status"),
        (Fault(rpc_error=(-32601, "method not found")), "method_not_supported"),
        (Fault(hang=True), "timeout"),
    ],
)
async def test_faults_are_clear_collector_errors(proxy: RpcProxy, fault: Fault, reason: str) -> None:
    proxy.set("eth_feeHistory", fault)
    c = _gas(proxy.url)
    try:
        with pytest.raises(CollectorError) as err:
            await c.collect()
    finally:
        await c.close()
    assert err.value.reason == reason


async def test_refused_node() -> None:
    c = _gas(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(CollectorError) as err:
            await c.collect()
    finally:
        await c.close()
    assert err.value.reason == "refused"
