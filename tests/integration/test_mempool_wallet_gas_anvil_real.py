"""The whole daemon with mempool, mempool_stream, gas and wallet against anvil behind the fault proxy."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.anvil import DEV_ACCOUNT, Anvil, anvil_no_mining  # noqa: F401 - fixture
from tests.support.daemon import RunningDaemon, sample_value
from tests.support.rpcproxy import Fault, ThreadedRpcProxy

BOT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
STRANGER = "0x000000000000000000000000000000000000dEaD"


def _until(d: RunningDaemon, what: str, pred: Callable[[str], bool], timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = d.get()
        if pred(text):
            return text
        time.sleep(0.1)
    relevant = "\n".join(line for line in text.splitlines() if "mempool" in line or "wallet" in line
                         or "collector_success" in line)
    raise AssertionError(f"{what} not reached in {timeout}s:\n{relevant}\n{d.log.read_text()[-2000:]}")


def test_daemon_follows_mempool_wallet_and_gas(tmp_path: Path, anvil_no_mining: Anvil) -> None:  # noqa: F811
    node = anvil_no_mining
    with ThreadedRpcProxy(node.url) as proxy:
        config = f"""
collectors:
  - mempool:
      interval: 300ms
      endpoint: {{name: node, url: "{proxy.url}", timeout: 250ms, connect_timeout: 250ms}}
  - mempool_stream:
      interval: 200ms
      endpoint: {{name: node, url: "{proxy.ws_url}"}}
      reconnect_min: 100ms
      reconnect_max: 300ms
  - gas:
      interval: 300ms
      endpoint: {{name: node, url: "{node.url}"}}
      bid: {{value: 1.1}}
  - wallet:
      interval: 300ms
      endpoint: {{name: node, url: "{node.url}"}}
      addresses: [{{name: bot, address: "{BOT}"}}]
      allow_to: []
"""
        with RunningDaemon(tmp_path, config) as d:
            _until(d, "stream up", lambda t: sample_value(t, "mevwatch_mempool_stream_up") == 1)
            before = sample_value(d.get(), "mevwatch_mempool_txpool_transactions", state="pending") or 0.0
            for _ in range(2):
                node.rpc("eth_sendTransaction", [{"from": BOT, "to": STRANGER, "value": "0x1"}])
            text = _until(d, "two notifications and two pending", lambda t: (
                sample_value(t, "mevwatch_mempool_stream_notifications_total") == 2
                and sample_value(t, "mevwatch_mempool_txpool_transactions", state="pending") == before + 2
                and (sample_value(t, "mevwatch_mempool_filter_hashes_total") or 0) >= 2))
            assert sample_value(text, "mevwatch_mempool_filter_up") == 1
            assert sample_value(text, "mevwatch_wallet_nonce_gap", wallet="bot") == 2

            node.rpc("evm_mine")
            text = _until(d, "two flagged transfers", lambda t: sample_value(
                t, "mevwatch_wallet_unexpected_transactions_total", wallet="bot") == 2)
            assert sample_value(text, "mevwatch_wallet_transactions_total", wallet="bot", status="succeeded") == 2
            assert sample_value(text, "mevwatch_wallet_last_unexpected_transaction_info", to=STRANGER) == 1
            # the page carries the responder's first facts: destination and transaction hash
            deadline = time.monotonic() + 10
            while True:
                alerts = [a for a in json.loads(d.get("/api/v1/alerts"))["data"]["alerts"]
                          if a["labels"]["alertname"] == "UnexpectedOutgoingTransaction"]
                if alerts or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            [alert] = alerts
            tx = alert["labels"]["tx"]
            assert alert["labels"]["to"] == STRANGER
            assert tx.startswith("0x")
            assert len(tx) == 66
            # both transfers were mined in one block: one page, of the last, that counts and lists them
            assert alert["labels"]["found"] == "2"
            assert alert["labels"]["found_txs"].endswith(f", {tx}")
            assert alert["annotations"]["summary"] == (
                f"Wallet bot ({BOT}) sent {tx} to {STRANGER}, not on the allow list: block "
                f"{alert['labels']['block']}, nonce {alert['labels']['nonce']}, value 0.000000000000000001 ETH; "
                f"2 unexpected transaction(s) of the wallet found at once: {alert['labels']['found_txs']}")
            assert int(alert["labels"]["block"]) >= 1
            assert alert["labels"]["value_ether"] == "0.000000000000000001"  # the 1 wei the test sent
            assert alert["annotations"]["description"].startswith(f"Explorer: https://etherscan.io/tx/{tx} ")
            _until(d, "gas ratio", lambda t: sample_value(t, "mevwatch_gas_bid_competitiveness_ratio") is not None)

            # The WebSocket drops: the stream is re-established and counted.
            proxy.drop_websockets()
            _until(d, "reconnect", lambda t: sample_value(t, "mevwatch_mempool_stream_reconnects_total") == 1
                   and sample_value(t, "mevwatch_mempool_stream_up") == 1)

            # The node hangs for mempool calls: that collector fails and its series go stale and vanish,
            # while gas and wallet (straight to the node) keep their schedule.
            proxy.set("*", Fault(hang=True))
            text = _until(d, "mempool stale", lambda t: (
                sample_value(t, "mevwatch_collector_success", collector="mempool") == 0
                and sample_value(t, "mevwatch_mempool_filter_up") is None), timeout=5.0)
            assert sample_value(text, "mevwatch_collector_success", collector="gas") == 1
            assert sample_value(text, "mevwatch_collector_success", collector="wallet") == 1
            assert sample_value(text, "mevwatch_collector_errors_total", collector="mempool", reason="timeout")
            proxy.clear("*")
            _until(d, "mempool back", lambda t: sample_value(t, "mevwatch_mempool_filter_up") == 1)
            assert "Traceback" not in d.log.read_text()
    # leave the module's node without our pending transactions
    node.rpc("evm_mine")
    assert DEV_ACCOUNT
