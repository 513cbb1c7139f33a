"""More of the runbook's incidents played for real against anvil and a running daemon, each checked on the
on-call's three screens (the page, `mevwatch diagnose`, the landing page) and seen to clear when it ends:
a watched sender's stuck nonce, a transaction sent with a nonce too high (queued behind the missing one, and
the node that cannot show its queue), the node's connection pool filling up, and the WebSocket
pending-transaction stream refused while the node's HTTP still answers."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.support.anvil import Anvil, start_anvil
from tests.support.daemon import RunningDaemon, sample_value
from tests.support.rpcproxy import Fault, ThreadedRpcProxy
from tests.support.screens import paged_daemon, pages_of, screens_agree, screens_cleared

# anvil's second default account, the watched wallet
BOT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
STRANGER = "0x000000000000000000000000000000000000dEaD"
# anvil's fifth default account: the wallet that skips a nonce (no other test here sends from it)
QUEUER = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"


@pytest.fixture(scope="module")
def node() -> Iterator[Anvil]:
    """One anvil mining each transaction as it is sent (a test that stops that starts it again)."""
    n = start_anvil()
    try:
        yield n
    finally:
        n.stop()
        n.log.unlink(missing_ok=True)


def _rule_state(d: RunningDaemon, name: str) -> str:
    rules = json.loads(d.get("/api/v1/rules"))["data"]["rules"]
    return str(next(r["state"] for r in rules if r["name"] == name))


def _nonce(n: Anvil, block: str, who: str = BOT) -> int:
    return int(n.rpc("eth_getTransactionCount", [who, block]), 16)


def test_stuck_nonce_pages_with_the_sender_and_its_nonces(tmp_path: Path, node: Anvil) -> None:
    tx = node.rpc("eth_sendTransaction", [{"from": BOT, "to": STRANGER, "value": "0x1"}])
    deadline = time.monotonic() + 10
    while node.rpc("eth_getTransactionReceipt", [tx]) is None:  # mined: the nonce moves on
        assert time.monotonic() < deadline, "anvil did not mine the first transaction"
        time.sleep(0.05)
    mined = _nonce(node, "latest")
    assert mined >= 1
    collectors = f"""collectors:
  - wallet:
      interval: 1s
      endpoint: {{name: node, url: "{node.url}"}}
      addresses: [{{name: bot, address: "{BOT}"}}]
"""
    with paged_daemon(tmp_path, collectors, instant=["WalletNonceGap"]) as (d, hook):
        d.wait_value("mevwatch_wallet_nonce", mined, timeout=15, wallet="bot")
        assert sample_value(d.get(), "mevwatch_wallet_nonce_gap", wallet="bot") == 0
        assert _rule_state(d, "WalletNonceGap") == "inactive"
        node.rpc("evm_setAutomine", [False])  # the node stops mining: what the bot sends now waits in the pool
        try:
            sent: list[dict[str, Any]] = []
            for _ in range(2):
                tx = node.rpc("eth_sendTransaction", [{"from": BOT, "to": STRANGER, "value": "0x1"}])
                sent.append(node.rpc("eth_getTransactionByHash", [tx]))
            assert (_nonce(node, "latest"), _nonce(node, "pending")) == (mined, mined + 2)
            seen = screens_agree(d, hook, "WalletNonceGap", wallet="bot")
        finally:
            node.rpc("evm_setAutomine", [True])
        # the stuck transaction is the one at the mined nonce; the sender and both nonces are on the page
        assert [int(t["nonce"], 16) for t in sent] == [mined, mined + 1]
        assert seen.page["labels"]["address"] == BOT
        assert seen.page["annotations"]["summary"] == (
            f"2 transaction(s) of bot ({BOT}) not mined: nonce {mined} is stuck, pending nonce {mined + 2}")
        assert seen.page["labels"]["severity"] == "warning"
        assert seen.line["status"] == "WARN"
        assert f"nonce {mined} is stuck" in seen.row
        # mined at last: the gap closes and the alert resolves on every screen
        node.rpc("evm_mine")
        assert _nonce(node, "latest") == mined + 2
        screens_cleared(d, hook, "WalletNonceGap", wallet="bot")


def _queuer_config(url: str, extra: str = "") -> str:
    return f"""collectors:
  - wallet:
      interval: 1s
      endpoint: {{name: node, url: "{url}"}}
      addresses: [{{name: queuer, address: "{QUEUER}"}}]
{extra}"""


def test_a_nonce_too_high_pages_with_the_missing_nonces_and_the_stuck_hash(tmp_path: Path, node: Anvil) -> None:
    with paged_daemon(tmp_path, _queuer_config(node.url), instant=["WalletQueuedNonceGap"]) as (d, hook):
        d.wait_value("mevwatch_wallet_queued_transactions", 0, timeout=15, wallet="queuer")
        assert _rule_state(d, "WalletQueuedNonceGap") == "inactive"  # read and judged, not merely silent
        n = _nonce(node, "pending", QUEUER)
        # the bot skips two nonces: anvil mines what it can and queues this one behind the missing nonces
        stuck = node.rpc("eth_sendTransaction", [{"from": QUEUER, "to": STRANGER, "value": "0x1",
                                                  "nonce": hex(n + 2)}])
        assert node.rpc("eth_getTransactionReceipt", [stuck]) is None
        seen = screens_agree(d, hook, "WalletQueuedNonceGap", wallet="queuer")
        text = d.get()
        # the pending nonce does not move: the older nonce-gap check is blind to it
        assert sample_value(text, "mevwatch_wallet_pending_nonce", wallet="queuer") == n
        assert sample_value(text, "mevwatch_wallet_nonce_gap", wallet="queuer") == 0
        assert _rule_state(d, "WalletNonceGap") == "inactive"
        # the page names the wallet, its address, the missing nonces and the stuck transaction's hash
        assert seen.page["labels"]["address"] == QUEUER
        assert seen.page["annotations"]["summary"] == (
            f"1 transaction(s) of queuer ({QUEUER}) queued behind missing nonce(s) {n}-{n + 1}: stuck {stuck}")
        assert (f"the node's next nonce for the wallet is {n}, its lowest queued transaction has nonce {n + 2}"
                in seen.page["annotations"]["description"])
        assert seen.page["labels"]["severity"] == "warning"
        assert seen.line["status"] == "WARN"
        assert seen.line["value"] == "firing: !wallet=queuer=2"  # two nonces missing
        assert f"nonce(s) {n}-{n + 1}: stuck {stuck}" in seen.row
        # diagnose carries the page's facts too, not only the count
        facts = [ln for ln in seen.diagnose["lines"] if ln["check"] == "WalletQueuedNonceGap queuer"]
        assert [ln["value"] for ln in facts] == [seen.page["annotations"]["summary"]]
        # the missing nonces are sent: the queued transaction is mined after them and the alert resolves
        for nonce in (n, n + 1):
            node.rpc("eth_sendTransaction", [{"from": QUEUER, "to": STRANGER, "value": "0x1", "nonce": hex(nonce)}])
        screens_cleared(d, hook, "WalletQueuedNonceGap", wallet="queuer")
        assert sample_value(d.get(), "mevwatch_wallet_queued_transactions", wallet="queuer") == 0
        node.rpc("evm_mine")
        assert node.rpc("eth_getTransactionReceipt", [stuck])["status"] == "0x1"


def test_a_node_that_cannot_show_its_queue_is_a_monitoring_gap_never_ok(tmp_path: Path, node: Anvil) -> None:
    with ThreadedRpcProxy(node.url) as proxy:
        # anvil has no txpool_contentFrom; the proxy takes txpool_content away too, as a node without its
        # txpool API answers
        proxy.set("txpool_content", Fault(rpc_error=(-32601, "the method txpool_content does not exist")))
        config = _queuer_config(proxy.url, "      recheck_unsupported: 1s\n")
        with paged_daemon(tmp_path, config, instant=["MonitoringGapQueuedTransactions"]) as (d, hook):
            seen = screens_agree(d, hook, "MonitoringGapQueuedTransactions", endpoint="node")
            assert "method" not in seen.page["labels"]
            assert "reason" not in seen.page["labels"]
            assert seen.page["annotations"]["summary"] == (
                "Queued transactions of the watched wallets cannot be read from node node on mev-host-1 "
                "(txpool_content: method_not_supported): WalletQueuedNonceGap cannot fire")
            assert seen.page["labels"]["severity"] == "warning"
            assert seen.line["status"] == "WARN"
            # the rule it blinds is UNKNOWN with why, on the daemon's rules and in diagnose, never OK
            assert _rule_state(d, "WalletQueuedNonceGap") == "nodata"
            blind = [ln for ln in seen.diagnose["lines"] if ln["check"].startswith("WalletQueuedNonceGap (")]
            assert [ln["status"] for ln in blind] == ["UNKNOWN"], blind
            assert blind[0]["value"].startswith(
                "no series of mevwatch_wallet_queued_nonce_gap: the wallet collector runs but cannot make this "
                "check: MonitoringGapQueuedTransactions firing: Queued transactions of the watched wallets"), blind
            text = d.get()
            assert sample_value(text, "mevwatch_wallet_queued_transactions", wallet="queuer") is None
            assert sample_value(text, "mevwatch_collector_success", collector="wallet") == 1  # the rest is read
            assert proxy.calls["txpool_contentFrom"] >= 1
            # the node's txpool API is back: asked again after recheck_unsupported, the gap resolves
            proxy.clear("txpool_content")
            d.wait_value("mevwatch_wallet_queued_nonce_gap", 0, timeout=15, wallet="queuer")
            screens_cleared(d, hook, "MonitoringGapQueuedTransactions", endpoint="node")
            assert _rule_state(d, "WalletQueuedNonceGap") == "inactive"


def _hold_connections(stack: ExitStack, port: int, count: int) -> list[socket.socket]:
    """``count`` real TCP connections to the node's port, open until ``stack`` closes them."""
    held = []
    for _ in range(count):
        s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        held.append(s)
    return held


def test_rpc_connection_pool_saturation_pages_with_the_count_and_the_threshold(tmp_path: Path, node: Anvil) -> None:
    collectors = f"""collectors:
  - rpc: {{interval: 1s, endpoints: [{{name: erigon, url: "{node.url}"}}]}}
"""
    # a pool of a dozen: over 10 open connections pages, at 5 or fewer it clears
    overrides = "  rule_overrides:\n    RpcConnectionsHigh: {threshold: 10, clear: 5, for: 0s}\n"
    with paged_daemon(tmp_path, collectors, extra=overrides) as (d, hook):
        d.wait_value("mevwatch_rpc_up", 1, timeout=15, endpoint="erigon")
        idle = d.wait_for("mevwatch_rpc_established_connections", timeout=15, endpoint="erigon")
        assert idle <= 5, idle  # the daemon's own keep-alive connection, no more
        with ExitStack() as stack:
            _hold_connections(stack, node.port, 16)
            seen = screens_agree(d, hook, "RpcConnectionsHigh", endpoint="erigon")
            shown = d.wait_at_least("mevwatch_rpc_established_connections", 16, timeout=10, endpoint="erigon")
        summary = seen.page["annotations"]["summary"]
        count = int(summary.split(" ", 1)[0])
        assert 16 <= count <= shown, (count, shown)
        assert summary == f"{count} established connections to RPC endpoint erigon on mev-host-1 (threshold 10)"
        assert seen.page["labels"]["severity"] == "warning"
        assert seen.line["status"] == "WARN"
        assert "(threshold 10)" in seen.row
        # the connections are closed: the count falls under the clear threshold and the alert resolves
        screens_cleared(d, hook, "RpcConnectionsHigh", endpoint="erigon")
        assert (sample_value(d.get(), "mevwatch_rpc_established_connections", endpoint="erigon") or 0) <= 5


def test_refused_pending_transaction_stream_pages_why_while_http_answers(tmp_path: Path, node: Anvil) -> None:
    """The stream drops (a reset), then every reconnect is refused with an HTTP status: one outage, one page
    naming the reason of the last attempt, and one resolved page when the stream is back."""
    with ThreadedRpcProxy(node.url) as proxy:
        collectors = f"""collectors:
  - mempool_stream:
      interval: 1s
      endpoint: {{name: node, url: "{proxy.ws_url}"}}
      reconnect_min: 100ms
      reconnect_max: 500ms
  - rpc: {{interval: 1s, endpoints: [{{name: node, url: "{proxy.url}"}}]}}
"""
        # a `for` of 3 s: the reason moves (reset, then http_status) while it runs
        with paged_daemon(tmp_path, collectors, extra="  rule_overrides:\n    MempoolStreamDown: {for: 3s}\n") as (
                d, hook):
            d.wait_value("mevwatch_mempool_stream_up", 1, timeout=15, endpoint="node")
            assert sample_value(d.get(), "mevwatch_mempool_stream_down_reason", endpoint="node") is None
            # the node's WebSocket side goes away (the proxy answers upgrades 503) and the open stream drops
            proxy.refuse_websockets(503)
            proxy.drop_websockets()
            # the drop itself is a reset; every reconnect attempt after it is refused with an HTTP status
            seen = screens_agree(d, hook, "MempoolStreamDown", endpoint="node")
            text = d.get()
            assert sample_value(text, "mevwatch_mempool_stream_up", endpoint="node") == 0
            assert sample_value(text, "mevwatch_rpc_up", endpoint="node") == 1  # HTTP still answers
            assert proxy.calls["websocket_refused"] >= 1
            assert "reason" not in seen.page["labels"]  # a reason that moves is told, it is not the alert's identity
            assert seen.page["annotations"]["summary"] == (
                "newPendingTransactions subscription to node is down on mev-host-1: http_status")
            assert seen.page["labels"]["severity"] == "critical"
            assert seen.line["status"] == "CRIT"
            assert ": http_status" in seen.row

            # the WebSocket side is back: the collector reconnects by itself and the alert resolves
            proxy.refuse_websockets(None)
            d.wait_value("mevwatch_mempool_stream_up", 1, timeout=15, endpoint="node")
            screens_cleared(d, hook, "MempoolStreamDown", endpoint="node")
            assert [a["status"] for a in pages_of(hook, "MempoolStreamDown", endpoint="node")] == ["firing", "resolved"]
            assert sample_value(d.get(), "mevwatch_mempool_stream_reconnects_total", endpoint="node") == 1
