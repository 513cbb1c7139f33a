"""Watched wallets against anvil: balance, nonce gap, failed (reverting) and unexpected transactions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from mevwatch.collectors._eth import checksum_address, keccak256, validate_address
from mevwatch.collectors.base import CollectorContext, CollectorError, Families, NoData
from mevwatch.collectors.wallet import SentTransaction, WalletCollector, WalletOptions, sent_by
from mevwatch.daemon.config import ConfigError, load_config_text
from mevwatch.daemon.state import StateDB
from tests.support.anvil import Anvil, anvil_no_mining, deploy_reverting  # noqa: F401 - fixture
from tests.support.rpcproxy import Fault, RpcProxy

# anvil's default (unlocked) accounts 1..3
BOT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
ROUTER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
DEPLOYER = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
STRANGER = "0x000000000000000000000000000000000000dEaD"


# --- address validation ------------------------------------------------------------------------


def test_keccak256_known_vectors() -> None:
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert keccak256(b"a" * 200).hex() == keccak256(b"a" * 200).hex()  # more than one 136-byte block
    assert keccak256(b"abc").hex() == "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"


def test_eip55_checksums() -> None:
    # vectors of the EIP-55 specification
    for a in ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
              "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB", "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb"):
        assert checksum_address(a.lower()) == a
        assert validate_address(a) == a
        assert validate_address(a.lower()) == a
        assert validate_address("0x" + a[2:].upper()) == a


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD", "fails its EIP-55 checksum"),
        ("0x5aaeb6053f3e94c9b9a09f33669435e7ef1beae", "40 hex digits"),
        ("5aaeb6053f3e94c9b9a09f33669435e7ef1beaed", "40 hex digits"),
        ("0xZaaeb6053f3e94c9b9a09f33669435e7ef1beaed", "40 hex digits"),
    ],
)
def test_bad_addresses(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_address(value)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ("addresses: [{name: bot, address: '0x70997970C51812dc3A010C7d01b50e0d17dc79c8'}]",
         "addresses[0].address", "checksum"),
        ("addresses: [{name: bot, address: '0x1234'}]", "addresses[0].address", "40 hex digits"),
        ("addresses: []", "addresses", "1 to 50"),
        (f"addresses: [{{name: a, address: '{BOT}'}}, {{name: a, address: '{ROUTER}'}}]", "addresses",
         "duplicate name 'a'"),
        (f"addresses: [{{name: a, address: '{BOT}'}}, {{name: b, address: '{BOT.lower()}'}}]", "addresses",
         "duplicate address"),
        (f"addresses: [{{name: a, address: '{BOT}'}}]\n      allow_to: ['0xnope']", "allow_to", "40 hex digits"),
        (f"addresses: [{{name: a, address: '{BOT}'}}]\n      max_blocks_per_run: 0", "max_blocks_per_run",
         "between 1 and 1000"),
        (f"addresses: [{{name: a, address: '{BOT}'}}]\n      queued: content", "queued",
         "'auto', 'content_from' or 'off'"),
        (f"addresses: [{{name: a, address: '{BOT}'}}]\n      recheck_unsupported: 0s", "recheck_unsupported",
         "greater than 0"),
    ],
)
def test_bad_options_are_rejected(body: str, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text(f"collectors:\n  - wallet:\n      {body}\n", "t.yaml")
    assert any(f"collectors[0].wallet.{field}: " in str(i) and message in str(i) for i in err.value.issues), \
        err.value.issues


def test_sent_by_picks_watched_senders() -> None:
    block = {"transactions": [
        {"hash": "0x01", "from": BOT, "to": STRANGER, "nonce": "0x7", "value": "0xde0b6b3a7640000"},
        {"hash": "0x02", "from": ROUTER, "to": BOT},
        {"hash": "0x03", "from": BOT.lower(), "to": None, "nonce": "0x8", "value": "0x0"},
    ]}
    assert sent_by(block, {BOT.lower()}) == [
        SentTransaction("0x01", BOT.lower(), STRANGER.lower(), 7, 10**18),
        SentTransaction("0x03", BOT.lower(), None, 8, 0),
    ]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (None, "expected a block"),
        ({"transactions": ["0x" + "ab" * 32]}, "full transaction object"),
        ({"transactions": [{"hash": "0x01", "to": None}]}, "missing from/hash"),
        ({"transactions": [{"hash": "0x01", "from": BOT, "to": None, "value": "0x0"}]}, r"transactions\[0\]\.nonce"),
    ],
)
def test_sent_by_rejects_malformed_blocks(block: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sent_by(block, {BOT.lower()})


async def test_no_addresses_is_no_data() -> None:
    c = WalletCollector(CollectorContext(kind="wallet", instance="t", interval=1.0, timeout=1.0), WalletOptions())
    with pytest.raises(NoData):
        await c.collect()
    await c.close()


# --- against anvil -------------------------------------------------------------------------------


def _value(families: Families, metric: str, **labels: str) -> float | None:
    for fam in families:
        for s in fam.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def _samples(families: Families, name: str) -> list[Any]:
    return [s for f in families for s in f.samples if s.name == name]


def _wallet(url: str, state: StateDB | None = None, **opts: Any) -> WalletCollector:
    options = WalletOptions.model_validate({
        "endpoint": {"name": "node", "url": url, "timeout": 2.0, "connect_timeout": 1.0},
        "addresses": [{"name": "bot", "address": BOT}], "allow_to": [ROUTER], **opts,
    })
    return WalletCollector(CollectorContext(kind="wallet", instance="t", interval=1.0, timeout=5.0, state=state),
                           options)


@contextlib.asynccontextmanager
async def _following(node: Anvil, **opts: Any) -> AsyncIterator[WalletCollector]:
    """A wallet collector on ``node`` that made its first run on a freshly mined block; closed at the end."""
    await _mine(node)
    c = _wallet(node.url, **opts)
    try:
        await c.collect()
        yield c
    finally:
        await c.close()


def _send(node: Anvil, sender: str, to: str | None, **extra: Any) -> str:
    tx: dict[str, Any] = {"from": sender, "value": "0x1", **extra}
    if to is not None:
        tx["to"] = to
    return str(node.rpc("eth_sendTransaction", [tx]))


@pytest.fixture(scope="module")
def reverter(anvil_no_mining: Anvil) -> str:  # noqa: F811 - fixture from import
    """Address of a contract whose every call reverts, deployed by an unwatched account."""
    address = deploy_reverting(anvil_no_mining, DEPLOYER)
    assert anvil_no_mining.rpc("eth_getCode", [address, "latest"]) == "0x60006000fd"
    return checksum_address(address)


async def _mine(node: Anvil) -> None:
    await asyncio.to_thread(node.rpc, "evm_mine")


async def test_balance_nonce_and_a_stuck_transaction(anvil_no_mining: Anvil) -> None:  # noqa: F811
    node = anvil_no_mining
    await _mine(node)
    c = _wallet(node.url)
    try:
        await asyncio.to_thread(_send, node, BOT, ROUTER)  # stays pending: anvil --no-mining
        fams = await c.collect()
        balance = int(await asyncio.to_thread(node.rpc, "eth_getBalance", [BOT, "latest"]), 16)
        nonce = int(await asyncio.to_thread(node.rpc, "eth_getTransactionCount", [BOT, "latest"]), 16)
        assert _value(fams, "mevwatch_wallet_balance_ether", wallet="bot", address=BOT) == pytest.approx(balance / 1e18)
        assert _value(fams, "mevwatch_wallet_nonce", wallet="bot") == nonce
        assert _value(fams, "mevwatch_wallet_nonce_gap", wallet="bot") == 1
        await _mine(node)
        fams = await c.collect()
    finally:
        await c.close()
    assert _value(fams, "mevwatch_wallet_nonce_gap", wallet="bot") == 0
    assert _value(fams, "mevwatch_wallet_transactions_total", wallet="bot", status="succeeded") == 1
    assert _value(fams, "mevwatch_wallet_unexpected_transactions_total", wallet="bot") == 0  # ROUTER is allowed


async def test_reverting_transaction_counts_as_failed_with_its_gas(
    anvil_no_mining: Anvil, reverter: str,  # noqa: F811
) -> None:
    node = anvil_no_mining
    async with _following(node, allow_to=[ROUTER, reverter]) as c:
        # explicit gas: without it the node's estimate would refuse the reverting call before sending
        h = await asyncio.to_thread(_send, node, BOT, reverter, gas=hex(100_000))
        await _mine(node)
        fams = await c.collect()
    receipt = await asyncio.to_thread(node.rpc, "eth_getTransactionReceipt", [h])
    assert receipt["status"] == "0x0"
    cost = int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16)
    assert _value(fams, "mevwatch_wallet_transactions_total", wallet="bot", status="failed") == 1
    assert _value(fams, "mevwatch_wallet_transactions_total", wallet="bot", status="succeeded") == 0
    assert _value(fams, "mevwatch_wallet_failed_gas_ether_total", wallet="bot") == pytest.approx(cost / 1e18)
    assert cost > 0
    assert _value(fams, "mevwatch_wallet_unexpected_transactions_total", wallet="bot") == 0
    tx = await asyncio.to_thread(node.rpc, "eth_getTransactionByHash", [h])
    [info] = _samples(fams, "mevwatch_wallet_last_failed_transaction_info")
    assert info.labels == {"address": BOT, "wallet": "bot", "to": reverter, "tx": h, "nonce": str(int(tx["nonce"], 16)),
                           "block": str(int(receipt["blockNumber"], 16)), "value_ether": "0.000000000000000001",
                           "found": "1", "found_txs": h}


async def test_several_failures_found_by_one_run_are_counted_and_listed_on_the_last(
    anvil_no_mining: Anvil, reverter: str,  # noqa: F811
) -> None:
    node = anvil_no_mining
    async with _following(node, allow_to=[ROUTER, reverter]) as c:
        sent = [await asyncio.to_thread(_send, node, BOT, reverter, gas=hex(100_000)) for _ in range(5)]
        await _mine(node)
        await _mine(node)  # two blocks, one run
        stranger = await asyncio.to_thread(_send, node, BOT, STRANGER)
        await _mine(node)
        together = await c.collect()
        again = await asyncio.to_thread(_send, node, BOT, reverter, gas=hex(100_000))
        await _mine(node)
        alone = await c.collect()
    [info] = _samples(together, "mevwatch_wallet_last_failed_transaction_info")
    assert info.labels["tx"] == sent[-1]
    assert (info.labels["found"], info.labels["found_txs"]) == ("5", f"{', '.join(sent[:3])} +2 more")
    [unexpected] = _samples(together, "mevwatch_wallet_last_unexpected_transaction_info")
    assert (unexpected.labels["tx"], unexpected.labels["found"], unexpected.labels["found_txs"]) == (
        stranger, "1", stranger)
    # the next run's failure is counted on its own; the unexpected one found before is still the last
    [info] = _samples(alone, "mevwatch_wallet_last_failed_transaction_info")
    assert (info.labels["tx"], info.labels["found"], info.labels["found_txs"]) == (again, "1", again)
    assert _samples(alone, "mevwatch_wallet_last_unexpected_transaction_info") == [unexpected]
    assert _value(alone, "mevwatch_wallet_transactions_total", wallet="bot", status="failed") == 6


async def test_a_failed_transaction_pages_with_its_facts(
    anvil_no_mining: Anvil, reverter: str, tmp_path: Path,  # noqa: F811
) -> None:
    from tests.unit.alerts._helpers import Harness

    node = anvil_no_mining
    await _mine(node)
    c = _wallet(node.url, allow_to=[ROUTER, reverter])
    harness = Harness(tmp_path, "\n  default_rules: true\n  host: mev-host-1\n  group_wait: 0s\n  startup_grace: 0s\n")
    try:
        harness.put(*await c.collect(), key=("wallet", "default"), interval=15)
        harness.advance(15)
        h = await asyncio.to_thread(_send, node, BOT, reverter, gas=hex(100_000), value=hex(25 * 10**16))
        await _mine(node)
        harness.put(*await c.collect(), key=("wallet", "default"), interval=15)
        harness.advance(15)
        receipt = await asyncio.to_thread(node.rpc, "eth_getTransactionReceipt", [h])
        tx = await asyncio.to_thread(node.rpc, "eth_getTransactionByHash", [h])
        pages = [a for a in harness.engine.all_alerts()
                 if a.rule == "WalletTransactionFailures" and a.state == "firing"]
    finally:
        await c.close()
        harness.close()
    assert receipt["status"] == "0x0"
    [page] = pages
    assert page.labels["tx"] == h  # one failed transaction, one page, its facts bounded to one series per wallet
    assert page.annotations["summary"] == (
        f"Transaction {h} from bot ({BOT}) to {reverter} failed (status 0) in block "
        f"{int(receipt['blockNumber'], 16)}: nonce {int(tx['nonce'], 16)}, value 0.25 ETH; 1 failed transaction(s) of "
        f"the wallet found at once: {h}")
    assert f"https://etherscan.io/tx/{h}" in page.annotations["description"]


async def test_transfer_to_an_unlisted_address_is_flagged(anvil_no_mining: Anvil) -> None:  # noqa: F811
    node = anvil_no_mining
    async with _following(node) as c:
        h = await asyncio.to_thread(_send, node, BOT, STRANGER)
        await asyncio.to_thread(_send, node, ROUTER, STRANGER)  # not watched: not our business
        await _mine(node)
        fams = await c.collect()
    assert _value(fams, "mevwatch_wallet_unexpected_transactions_total", wallet="bot") == 1
    info = _samples(fams, "mevwatch_wallet_last_unexpected_transaction_info")
    assert [(s.labels["wallet"], s.labels["to"], s.labels["tx"]) for s in info] == [("bot", STRANGER, h)]
    ts = _value(fams, "mevwatch_wallet_last_unexpected_transaction_timestamp_seconds", wallet="bot")
    assert ts is not None
    assert ts > 1_600_000_000


async def test_without_allow_list_nothing_is_flagged(anvil_no_mining: Anvil) -> None:  # noqa: F811
    node = anvil_no_mining
    async with _following(node, allow_to=None) as c:
        await asyncio.to_thread(_send, node, BOT, STRANGER)
        await _mine(node)
        fams = await c.collect()
    assert _value(fams, "mevwatch_wallet_transactions_total", status="succeeded") == 1
    assert _samples(fams, "mevwatch_wallet_unexpected_transactions_total") == []


async def test_blocks_are_followed_in_bounded_steps_and_resumed_after_restart(
    anvil_no_mining: Anvil, state_db: StateDB,  # noqa: F811
) -> None:
    node = anvil_no_mining
    await _mine(node)
    first = _wallet(node.url, state=state_db, max_blocks_per_run=2)
    try:
        fams = await first.collect()
        start = _value(fams, "mevwatch_wallet_followed_block")
        assert start is not None
    finally:
        await first.close()
    # While mevwatch is down: five blocks, the third holding a flagged transfer.
    for i in range(5):
        if i == 2:
            await asyncio.to_thread(_send, node, BOT, STRANGER)
        await _mine(node)
    second = _wallet(node.url, state=state_db, max_blocks_per_run=2)
    try:
        fams = await second.collect()
        assert _value(fams, "mevwatch_wallet_followed_block") == start + 2
        assert _value(fams, "mevwatch_wallet_blocks_behind") == 3
        assert _value(fams, "mevwatch_wallet_unexpected_transactions_total") == 0
        fams = await second.collect()
        assert _value(fams, "mevwatch_wallet_unexpected_transactions_total") == 1
        fams = await second.collect()
    finally:
        await second.close()
    assert _value(fams, "mevwatch_wallet_followed_block") == start + 5
    assert _value(fams, "mevwatch_wallet_blocks_behind") == 0


@pytest.fixture
async def proxy(anvil_no_mining: Anvil) -> AsyncIterator[RpcProxy]:  # noqa: F811 - fixture from import
    async with RpcProxy(anvil_no_mining.url) as p:
        yield p


@pytest.mark.parametrize(
    ("method", "fault", "reason"),
    [
        ("eth_getBlockByNumber", Fault(result={"number": "0x1"}), "invalid_response"),
        ("eth_getBlockByNumber", Fault(result={"transactions": [{"hash": 1}]}), "invalid_response"),
        ("eth_getTransactionReceipt", Fault(result=None), "invalid_response"),
        ("eth_getTransactionReceipt", Fault(result={"status": "ok"}), "invalid_response"),
        ("eth_getBalance", Fault(result=12), "invalid_response"),
        ("eth_getBalance", Fault(close_mid_response=True), "reset"),
        ("eth_blockNumber", Fault(http_status=429), "http_status"),
        ("eth_getTransactionCount", Fault(rpc_error=(-32000, "header not found")), "rpc_error"),
    ],
)
async def test_faults_are_clear_collector_errors(
    proxy: RpcProxy, anvil_no_mining: Anvil, method: str, fault: Fault, reason: str,  # noqa: F811
) -> None:
    node = anvil_no_mining
    await _mine(node)
    c = _wallet(proxy.url)
    try:
        await c.collect()
        await asyncio.to_thread(_send, node, BOT, STRANGER)
        await _mine(node)
        proxy.set(method, fault)
        with pytest.raises(CollectorError) as err:
            await c.collect()
        assert err.value.reason == reason
        proxy.clear(method)
        fams = await c.collect()  # the fault left nothing behind: the same block is scanned again
    finally:
        await c.close()
    assert _value(fams, "mevwatch_wallet_unexpected_transactions_total") == 1


# --- transactions queued behind a missing nonce ------------------------------------------------------

QUEUER = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"  # anvil's account 4: its queue is these tests' own
GETH_CONTENT_FROM = {  # geth's txpool_contentFrom for a sender whose nonce 5 is missing, 6 and 7 queued
    "pending": {},
    "queued": {str(n): {"blockHash": None, "blockNumber": None, "from": QUEUER.lower(), "gas": "0x5208",
                        "gasPrice": "0x3b9aca00", "hash": "0x" + f"{n:x}" * 64, "input": "0x", "nonce": hex(n),
                        "to": STRANGER.lower(), "transactionIndex": None, "value": "0x1", "type": "0x0",
                        "chainId": "0x7a69", "v": "0xf4f5", "r": "0x1", "s": "0x2"} for n in (6, 7)},
}


def _queuer(url: str, **opts: Any) -> WalletCollector:
    return _wallet(url, addresses=[{"name": "queuer", "address": QUEUER}], allow_to=None, **opts)


def _pending_nonce(node: Anvil, who: str = QUEUER) -> int:
    return int(node.rpc("eth_getTransactionCount", [who, "pending"]), 16)


async def test_a_transaction_sent_with_a_nonce_too_high_is_seen_queued_until_the_gap_is_filled(
    proxy: RpcProxy, anvil_no_mining: Anvil,  # noqa: F811
) -> None:
    node = anvil_no_mining
    c = _queuer(proxy.url)
    try:
        fams = await c.collect()
        n = await asyncio.to_thread(_pending_nonce, node)
        assert _value(fams, "mevwatch_wallet_queued_transactions", wallet="queuer", address=QUEUER) == 0
        assert _value(fams, "mevwatch_wallet_queued_nonce_gap", wallet="queuer") == 0
        assert _samples(fams, "mevwatch_wallet_queued_lowest_nonce") == []
        assert _samples(fams, "mevwatch_wallet_queued_gap_info") == []
        assert _samples(fams, "mevwatch_wallet_queued_unread_reason") == []

        stuck = await asyncio.to_thread(_send, node, QUEUER, STRANGER, nonce=hex(n + 2))
        fams = await c.collect()
        assert _value(fams, "mevwatch_wallet_pending_nonce", wallet="queuer") == n  # the pending nonce is blind
        assert _value(fams, "mevwatch_wallet_nonce_gap", wallet="queuer") == 0  # and so is WalletNonceGap
        assert _value(fams, "mevwatch_wallet_queued_transactions", wallet="queuer") == 1
        assert _value(fams, "mevwatch_wallet_queued_lowest_nonce", wallet="queuer") == n + 2
        assert _value(fams, "mevwatch_wallet_queued_nonce_gap", wallet="queuer") == 2
        [info] = _samples(fams, "mevwatch_wallet_queued_gap_info")
        assert info.labels == {"address": QUEUER, "wallet": "queuer", "missing": f"{n}-{n + 1}", "stuck": stuck}
        # anvil does not serve txpool_contentFrom: asked once, then the whole pool is read
        assert proxy.calls["txpool_contentFrom"] == 1
        assert proxy.calls["txpool_content"] == 2

        # one missing nonce sent: the gap narrows; the other: the queued transaction is promoted
        await asyncio.to_thread(_send, node, QUEUER, STRANGER, nonce=hex(n))
        fams = await c.collect()
        assert _value(fams, "mevwatch_wallet_queued_nonce_gap", wallet="queuer") == 1
        assert _samples(fams, "mevwatch_wallet_queued_gap_info")[0].labels["missing"] == str(n + 1)
        await asyncio.to_thread(_send, node, QUEUER, STRANGER, nonce=hex(n + 1))
        fams = await c.collect()
        assert _value(fams, "mevwatch_wallet_pending_nonce", wallet="queuer") == n + 3
        assert _value(fams, "mevwatch_wallet_queued_transactions", wallet="queuer") == 0
        assert _value(fams, "mevwatch_wallet_queued_nonce_gap", wallet="queuer") == 0
        assert _samples(fams, "mevwatch_wallet_queued_gap_info") == []
        assert proxy.calls["txpool_contentFrom"] == 1  # not asked again within recheck_unsupported
    finally:
        await c.close()
        await _mine(node)


async def test_the_per_wallet_call_is_preferred_and_never_falls_back_on_a_bad_answer(
    proxy: RpcProxy, anvil_no_mining: Anvil,  # noqa: F811
) -> None:
    proxy.set("txpool_contentFrom", Fault(result=GETH_CONTENT_FROM))
    c = _queuer(proxy.url)
    try:
        fams = await c.collect()
        assert proxy.calls["txpool_content"] == 0
        n = await asyncio.to_thread(_pending_nonce, anvil_no_mining)
        assert _value(fams, "mevwatch_wallet_queued_lowest_nonce", wallet="queuer") == 6
        [info] = _samples(fams, "mevwatch_wallet_queued_gap_info")
        assert info.labels["missing"] == (f"{n}-5" if n < 5 else "5")
        assert info.labels["stuck"] == f"0x{'6' * 64}, 0x{'7' * 64}"
        # a malformed per-wallet answer is this run's gap: the whole pool is not read instead
        proxy.set("txpool_contentFrom", Fault(result={"pending": {}, "queued": {"6": {"hash": "0x6"}}}))
        fams = await c.collect()
    finally:
        await c.close()
    assert proxy.calls["txpool_content"] == 0
    [gap] = _samples(fams, "mevwatch_wallet_queued_unread_reason")
    assert gap.labels == {"endpoint": "node", "method": "txpool_contentFrom", "reason": "invalid_response"}
    assert _samples(fams, "mevwatch_wallet_queued_transactions") == []  # never a zero that was not read
    assert _samples(fams, "mevwatch_wallet_queued_nonce_gap") == []
    assert _value(fams, "mevwatch_wallet_nonce", wallet="queuer") is not None  # the rest of the run stands


@pytest.mark.parametrize(
    ("queued", "faults", "method", "reason"),
    [
        ("auto", {"txpool_content": Fault(rpc_error=(-32601, "the method txpool_content does not exist"))},
         "txpool_content", "method_not_supported"),
        ("content_from", {}, "txpool_contentFrom", "method_not_supported"),
        ("auto", {"txpool_content": Fault(oversized=True)}, "txpool_content", "too_large"),
        ("auto", {"txpool_content": Fault(result={"pending": {}})}, "txpool_content", "invalid_response"),
        ("auto", {"txpool_content": Fault(rpc_error=(-32000, "txpool disabled"))}, "txpool_content", "rpc_error"),
        ("auto", {"txpool_content": Fault(http_status=503)}, "txpool_content", "http_status"),
    ],
)
async def test_a_pool_that_cannot_be_read_is_a_visible_gap_with_its_reason(
    proxy: RpcProxy, anvil_no_mining: Anvil, queued: str, faults: dict[str, Fault], method: str,  # noqa: F811
    reason: str,
) -> None:
    for m, fault in faults.items():
        proxy.set(m, fault)
    c = _queuer(proxy.url, queued=queued)
    try:
        with structlog.testing.capture_logs() as logs:
            fams = await c.collect()
            again = await c.collect()
    finally:
        await c.close()
    for f in (fams, again):
        [gap] = _samples(f, "mevwatch_wallet_queued_unread_reason")
        assert gap.labels == {"endpoint": "node", "method": method, "reason": reason}
        assert gap.value == 1
        assert _samples(f, "mevwatch_wallet_queued_transactions") == []
        assert _value(f, "mevwatch_wallet_balance_ether", wallet="queuer") is not None
    unread = [e for e in logs if e["event"] == "wallet_queued_unread"]
    assert len(unread) == 1, logs  # logged when it turns unreadable, not on every run
    assert unread[0]["method"] == method
    assert unread[0]["reason"] == reason
    # a method the node does not serve is not asked again on the next run
    assert proxy.calls["txpool_contentFrom"] == 1
    if reason != "method_not_supported":
        assert proxy.calls["txpool_content"] == 2


async def test_an_unserved_method_is_asked_again_after_recheck_unsupported_and_the_gap_clears(
    proxy: RpcProxy, anvil_no_mining: Anvil,  # noqa: F811
) -> None:
    proxy.set("txpool_content", Fault(rpc_error=(-32601, "Method not found")))
    c = _queuer(proxy.url, recheck_unsupported="1ms")
    try:
        with structlog.testing.capture_logs() as logs:
            fams = await c.collect()
            assert _samples(fams, "mevwatch_wallet_queued_unread_reason")[0].labels["reason"] == "method_not_supported"
            proxy.clear("txpool_content")  # the node's txpool API is enabled
            fams = await c.collect()
    finally:
        await c.close()
    assert proxy.calls["txpool_contentFrom"] == 2
    assert proxy.calls["txpool_content"] == 2
    assert _samples(fams, "mevwatch_wallet_queued_unread_reason") == []
    assert _value(fams, "mevwatch_wallet_queued_nonce_gap", wallet="queuer") == 0
    assert [e["event"] for e in logs if e["event"].startswith("wallet_queued")] == [
        "wallet_queued_unread", "wallet_queued_read_again"]


async def test_queued_off_reads_no_pool(proxy: RpcProxy, anvil_no_mining: Anvil) -> None:  # noqa: F811
    c = _queuer(proxy.url, queued="off")
    try:
        fams = await c.collect()
    finally:
        await c.close()
    assert not [s for f in fams for s in f.samples if s.name.startswith("mevwatch_wallet_queued_")]
    assert proxy.calls["txpool_contentFrom"] == proxy.calls["txpool_content"] == 0
