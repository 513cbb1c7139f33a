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
            learned = [family_value(fams, "mevwatch_chain_block_time_seconds", endpoint=e) for e in ("solo", "a", "b")]
            if all(x is not None and x <= 1.5 for x in learned) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert learned == [pytest.approx(1.0, abs=0.5)] * 3
        harness.put(*await _collect(single), key=("chain", "single"))
        harness.put(*await _collect(pair), key=("chain", "pair"))
        harness.advance(1)
        assert firing(harness, "HeadStale") == []

        for node in (a, b):  # mining stops on every node: no reference can tell
            node.rpc("evm_setIntervalMining", [0])
        deadline = time.monotonic() + 20
        while True:
            fams_single, fams_pair = await _collect(single), await _collect(pair)
            ages = [family_value(fams_single + fams_pair, "mevwatch_chain_head_age_blocks", endpoint=e)
                     for e in ("solo", "a", "b")]
            if all(age is not None and age > 5.5 for age in ages) or time.monotonic() > deadline:
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


async def test_a_node_without_net_peer_count_is_a_visible_monitoring_gap(
    two_mining_nodes: tuple[Anvil, Anvil], harness: Harness
) -> None:
    a, _ = two_mining_nodes
    c = chain("gap", ("anvil", a))  # anvil over HTTP answers net_peerCount with 'method not found'
    try:
        fams = await _collect(c)
        assert family_value(fams, "mevwatch_rpc_method_supported", endpoint="anvil", method="net_peerCount") == 0
        harness.put(*fams, key=("chain", "gap"))
        harness.advance(1)
        assert firing(harness, "MonitoringGapPeerCount") == []  # for: 10m
        harness.advance(600)
        harness.put(*await _collect(c), key=("chain", "gap"))
        harness.advance(1)
    finally:
        await c.close()
    [labels] = firing(harness, "MonitoringGapPeerCount")
    assert labels["endpoint"] == "anvil"
    assert firing(harness, "MonitoringGapSyncStatus") == []  # anvil serves eth_syncing
    [alert] = [x for x in harness.engine.all_alerts() if x.rule == "MonitoringGapPeerCount"]
    assert alert.annotations["summary"] == (
        "Peer count of node anvil cannot be read on mev-host-1: PeersLow cannot fire")


@pytest.mark.peer("postgresql")
async def test_dead_tuples_page_only_for_tables_past_the_runbooks_1000(harness: Harness) -> None:
    from mevwatch.collectors.postgres import PostgresCollector, PostgresOptions
    from tests.support.pgcluster import LOCAL_DSN, local_psql, need_local_server, scratch_database

    need_local_server()
    with scratch_database() as db:
        for table, rows, keep in (("hot", 2500, 1000), ("tiny", 100, 40)):
            local_psql(f"CREATE TABLE {table} (id int) WITH (autovacuum_enabled = false);"
                       f"INSERT INTO {table} SELECT generate_series(1, {rows});"
                       f"DELETE FROM {table} WHERE id > {keep};", db)
        opts = PostgresOptions.model_validate({"targets": [{"dsn": LOCAL_DSN.rsplit("/", 1)[0] + f"/{db}"}]})
        c = PostgresCollector(CollectorContext("postgres", "dead", 1.0, 5.0), opts)
        try:
            fams = await _collect(c)
            assert family_value(fams, "mevwatch_postgres_table_dead_tuple_ratio", table="tiny") == 1.5
            assert family_value(fams, "mevwatch_postgres_table_dead_tuple_ratio", table="hot") == 1.5
            assert family_value(fams, "mevwatch_postgres_table_dead_tuple_share", table="hot") == 0.6
            harness.put(*fams, key=("postgres", "dead"))
            harness.advance(901)  # for: 15m
            harness.put(*await _collect(c), key=("postgres", "dead"))
            harness.advance(1)
        finally:
            await c.close()
    [labels] = firing(harness, "PostgresDeadTuplesHigh")
    assert labels["table"] == "hot"  # "tiny" is 60 % dead too, with 60 dead tuples: no page
    [alert] = [x for x in harness.engine.all_alerts() if x.rule == "PostgresDeadTuplesHigh"]
    # 1,500 dead and 1,000 live: the share of the table (60 %), not dead per live (150 %)
    assert alert.annotations["summary"].startswith(
        "Table public.hot is 60% dead (1500 dead, 1000 live tuples) on ")


@pytest.mark.peer("postgresql")
async def test_postgres_down_names_its_reason_and_recovery_is_seen_at_the_next_run(harness: Harness) -> None:
    from mevwatch.collectors.postgres import PostgresCollector, PostgresOptions
    from tests.support.pgcluster import pg_cluster

    with pg_cluster() as cluster:
        # a production interval: with a reconnect back-off the first attempts after a restart would be skipped
        opts = PostgresOptions.model_validate({"targets": [{"dsn": cluster.dsn()}], "interval": 60})
        c = PostgresCollector(CollectorContext("postgres", "restart", 60.0, 5.0), opts)
        try:
            assert family_value(await _collect(c), "mevwatch_postgres_up") == 1.0
            await asyncio.to_thread(cluster.stop)
            for _ in range(3):  # three runs down: each one tries again
                fams = await _collect(c)
                harness.put(*fams, key=("postgres", "restart"))
                harness.advance(31)
            assert family_value(fams, "mevwatch_postgres_up") == 0.0
            [labels] = firing(harness, "PostgresDown")
            assert labels["reason"] == "refused"
            [alert] = [x for x in harness.engine.all_alerts() if x.rule == "PostgresDown" and x.state == "firing"]
            assert alert.annotations["summary"].endswith(": refused")
            await asyncio.to_thread(cluster.start)
            fams = await _collect(c)  # the very next run
            assert family_value(fams, "mevwatch_postgres_up") == 1.0
            harness.put(*fams, key=("postgres", "restart"))
            harness.advance(1)
            assert firing(harness, "PostgresDown") == []
        finally:
            await c.close()


async def test_node_down_page_says_why(harness: Harness) -> None:
    port = free_port()  # nothing listens: the head request is refused
    ctx = CollectorContext(kind="chain", instance="down", interval=1.0, timeout=2.0)
    c = ChainCollector(ctx, ChainOptions(endpoints=[{"name": "erigon", "url": f"http://127.0.0.1:{port}"}]))
    try:
        fams = await _collect(c)
        harness.put(*fams, key=("chain", "down"))
        harness.advance(61)  # for: 1m
        harness.put(*await _collect(c), key=("chain", "down"))
        harness.advance(1)
    finally:
        await c.close()
    assert family_value(fams, "mevwatch_chain_down_reason", endpoint="erigon", reason="refused") == 1.0
    [alert] = [x for x in harness.engine.all_alerts() if x.rule == "NodeDown" and x.state == "firing"]
    assert alert.annotations["summary"] == "Node erigon does not answer on mev-host-1: refused"
