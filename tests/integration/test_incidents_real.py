"""Runbook incidents played for real and judged by the default rules: a stale head (anvil stops mining, with
one node and with several) and a dead RPC endpoint (a refused port)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mevwatch.collectors.base import CollectorContext, CollectorError
from mevwatch.collectors.chain import ChainCollector, ChainOptions
from mevwatch.collectors.rpc import RpcCollector, RpcOptions
from mevwatch.families import Metric
from tests.support.anvil import Anvil, start_anvil
from tests.support.families import family_value
from tests.support.peers import free_port
from tests.unit.alerts._helpers import Harness

DEFAULTS = """
  default_rules: true
  host: mev-host-1
  group_wait: 0s
  startup_grace: 0s
"""


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path, DEFAULTS)
    yield h
    h.close()


@pytest.fixture(scope="module")
def two_mining_nodes() -> Iterator[tuple[Anvil, Anvil]]:
    a, b = start_anvil("--block-time", "1"), start_anvil("--block-time", "1")
    try:
        yield a, b
    finally:
        for node in (a, b):
            node.stop()
            node.log.unlink(missing_ok=True)


def firing(h: Harness, alertname: str) -> list[dict[str, str]]:
    return [a.labels for a in h.engine.all_alerts() if a.rule == alertname and a.state == "firing"]


async def _collect(c: Any) -> list[Metric]:
    try:
        return list(await c.collect())
    except CollectorError as exc:
        return list(exc.families or [])


def chain(instance: str, *nodes: tuple[str, Anvil]) -> ChainCollector:
    ctx = CollectorContext(kind="chain", instance=instance, interval=1.0, timeout=5.0)
    return ChainCollector(ctx, ChainOptions(endpoints=[{"name": n, "url": a.url} for n, a in nodes]))


async def test_stale_head_pages_with_one_node_and_with_several(
    two_mining_nodes: tuple[Anvil, Anvil], harness: Harness
) -> None:
    a, b = two_mining_nodes
    single, pair = chain("single", ("solo", a)), chain("pair", ("a", a), ("b", b))
    try:
        # both chains move: the block time is learned from their recent blocks (anvil mines every second)
        deadline = time.monotonic() + 10
        while True:
            fams = await _collect(single) + await _collect(pair)
            learned = family_value(fams, "mevwatch_chain_block_time_seconds", endpoint="solo")
            if (learned is not None and learned <= 1.5) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert learned == pytest.approx(1.0, abs=0.5)
        harness.put(*await _collect(single), key=("chain", "single"))
        harness.put(*await _collect(pair), key=("chain", "pair"))
        harness.advance(1)
        assert firing(harness, "HeadStale") == []

        for node in (a, b):  # mining stops on every node: no reference can tell
            node.rpc("evm_setIntervalMining", [0])
        deadline = time.monotonic() + 20
        while True:
            fams_single, fams_pair = await _collect(single), await _collect(pair)
            age = family_value(fams_single, "mevwatch_chain_head_age_blocks", endpoint="solo")
            if (age is not None and age > 5.5) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        harness.put(*fams_single, key=("chain", "single"))
        harness.put(*fams_pair, key=("chain", "pair"))
        harness.advance(1)
    finally:
        for node in (a, b):
            node.rpc("evm_setIntervalMining", [1])
        await single.close()
        await pair.close()
    assert family_value(fams_pair, "mevwatch_chain_head_lag_blocks", endpoint="a") == 0.0  # lag sees nothing
    assert sorted(lbl["endpoint"] for lbl in firing(harness, "HeadStale")) == ["a", "b", "solo"]
    [note] = [n for n in harness.notifications() if n["commonLabels"].get("alertname") == "HeadStale"]
    summary = note["alerts"][0]["annotations"]["summary"]
    assert summary.startswith("No new block on ")
    assert "block times on mev-host-1" in summary
    assert note["alerts"][0]["labels"]["severity"] == "critical"


async def test_refused_rpc_port_is_critical_in_the_engine_and_in_diagnose(harness: Harness, tmp_path: Path) -> None:
    from mevwatch.daemon.config import load_config_text
    from mevwatch.daemon.diagnose import evaluate, run_collectors

    port = free_port()  # nothing listens: connect() is refused
    ctx = CollectorContext(kind="rpc", instance="default", interval=1.0, timeout=2.0)
    c = RpcCollector(ctx, RpcOptions(endpoints=[{"name": "dead", "url": f"http://127.0.0.1:{port}"}]))
    try:
        fams = await _collect(c)
    finally:
        await c.close()
    assert family_value(fams, "mevwatch_rpc_up", endpoint="dead") == 0.0
    harness.put(*fams, key=("rpc", "default"))
    harness.advance(1)
    assert firing(harness, "RpcEndpointDown") == []  # for: 30s
    harness.put(*fams, key=("rpc", "default"))
    harness.advance(30)
    [labels] = firing(harness, "RpcEndpointDown")
    assert labels["endpoint"] == "dead"
    assert labels["severity"] == "critical"

    text = (f"state_dir: '{tmp_path / 'diag-state'}'\n"
            f"collectors:\n  - rpc: {{endpoints: [{{name: dead, url: 'http://127.0.0.1:{port}'}}]}}\n")
    cfg = load_config_text(text, str(tmp_path / "mevwatch.yaml"))
    lines = evaluate(await run_collectors(cfg, None, 1.0, 5.0), cfg)
    [line] = [ln for ln in lines if ln.check.startswith("RpcEndpointDown")]
    assert line.status == "CRIT"
    assert "dead" in line.value
