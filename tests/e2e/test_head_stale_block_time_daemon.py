"""A stale head told by the block time the daemon learned, played with anvil against a running daemon: a second
stall right after a first one pages as fast as the first (the first stall's long interval is not the chain's
pace), and a node with too few blocks to learn from is judged by mainnet's 12 s, which the page names."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from tests.support.anvil import Anvil, start_anvil
from tests.support.daemon import RunningDaemon, sample_value
from tests.support.screens import paged_daemon, screens_agree, screens_cleared

THRESHOLD = 5  # HeadStale's default multiple of the block time


def _head(node: Anvil) -> dict[str, int]:
    block = node.rpc("eth_getBlockByNumber", ["latest", False])
    return {"number": int(block["number"], 16), "timestamp": int(block["timestamp"], 16)}


def _firing(d: RunningDaemon, alertname: str, **labels: str) -> list[dict[str, Any]]:
    return [a for a in json.loads(d.get("/api/v1/alerts"))["data"]["alerts"]
            if a["state"] == "firing" and a["labels"]["alertname"] == alertname
            and all(a["labels"].get(k) == v for k, v in labels.items())]


def _stall_until_paged(d: RunningDaemon, node: Anvil, timeout: float = 40.0) -> float:
    """Stop mining; the seconds from the last block's timestamp until HeadStale fires (whole-second timestamps:
    within a second)."""
    node.rpc("evm_setIntervalMining", [0])
    last = _head(node)
    deadline = time.monotonic() + timeout
    while not _firing(d, "HeadStale", endpoint="node"):
        if time.monotonic() > deadline:
            raise AssertionError(f"HeadStale did not fire within {timeout}s of the stall")
        time.sleep(0.1)
    assert _head(node) == last, "the node mined during the stall"
    return time.time() - last["timestamp"]


def test_a_second_stall_right_after_a_first_pages_as_fast(tmp_path: Path) -> None:
    node = start_anvil("--block-time", "1")
    try:
        collectors = f"""collectors:
  - chain: {{interval: 1s, endpoints: [{{name: node, url: "{node.url}"}}]}}
"""
        with paged_daemon(tmp_path, collectors) as (d, hook):
            d.wait_value("mevwatch_chain_block_time_seconds", 1.0, timeout=30, endpoint="node")
            first = _stall_until_paged(d, node)
            assert first < THRESHOLD + 3, f"first stall paged {first:.1f}s after the last block"
            time.sleep(30 - first)  # a long first stall: the interval after it is 30 times the chain's pace
            node.rpc("evm_setIntervalMining", [1])
            screens_cleared(d, hook, "HeadStale", endpoint="node")
            d.wait_at_least("mevwatch_chain_head_block", _head(node)["number"] + 2, timeout=10, endpoint="node")
            # the 30 s interval is among the last 16 the block time is learned from: a mean would read 2.8 s
            # (a page after 14 s); left out as a stall, it is still a second
            assert sample_value(d.get(), "mevwatch_chain_block_time_seconds", endpoint="node") == 1.0
            second = _stall_until_paged(d, node)
            assert second < first + 2, f"second stall paged after {second:.1f}s, the first after {first:.1f}s"
            seen = screens_agree(d, hook, "HeadStale", endpoint="node")
            node.rpc("evm_setIntervalMining", [1])
        assert seen.page["annotations"]["description"].count("Block time assumed: 1s, learned (") == 1
    finally:
        node.stop()
        node.log.unlink(missing_ok=True)


def test_too_few_blocks_to_learn_from_are_judged_by_mainnets_12s_and_the_page_says_so(tmp_path: Path) -> None:
    genesis = int(time.time()) - 120
    node = start_anvil("--timestamp", str(genesis))  # no transactions: no blocks but those mined here
    try:
        # two blocks a second apart, 110 s ago: two intervals are too few to learn a block time from
        node.rpc("evm_mine", [{"timestamp": genesis + 9}])
        node.rpc("evm_mine", [{"timestamp": genesis + 10}])
        assert _head(node) == {"number": 2, "timestamp": genesis + 10}
        collectors = f"""collectors:
  - chain: {{interval: 1s, endpoints: [{{name: node, url: "{node.url}"}}]}}
"""
        with paged_daemon(tmp_path, collectors) as (d, hook):
            seen = screens_agree(d, hook, "HeadStale", endpoint="node")
            text = d.get()
            assert sample_value(text, "mevwatch_chain_block_time_seconds", endpoint="node") == 12.0
            assert sample_value(text, "mevwatch_chain_block_time_info", endpoint="node", source="default") == 1.0
            age_blocks = sample_value(text, "mevwatch_chain_head_age_blocks", endpoint="node")
            assert age_blocks is not None
            assert 110 / 12 <= age_blocks < 130 / 12
        assert seen.page["labels"]["severity"] == "critical"
        times = re.fullmatch(r"No new block on node for ([0-9.]+) block times on mev-host-1",
                             seen.page["annotations"]["summary"])
        assert times is not None, seen.page["annotations"]["summary"]
        assert 9 <= float(times.group(1)) < 11, seen.page["annotations"]["summary"]
        assert "Block time assumed: 12s, default (" in seen.page["annotations"]["description"]
        assert seen.line["status"] == "CRIT"
    finally:
        node.stop()
        node.log.unlink(missing_ok=True)
