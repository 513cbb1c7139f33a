"""chain collector against real anvil, with the proxy supplying what anvil lacks (peers, syncing) or gets wrong."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mevwatch.collectors.base import CollectorContext, CollectorError
from mevwatch.collectors.chain import ChainCollector, ChainOptions
from tests.support.anvil import Anvil, anvil  # noqa: F401 - fixture
from tests.support.families import family_labels, family_value
from tests.support.peers import free_port
from tests.support.rpcproxy import Fault, RpcProxy


@pytest.fixture
async def proxy(anvil: Anvil) -> AsyncIterator[RpcProxy]:  # noqa: F811 - fixture parameter
    async with RpcProxy(anvil.url) as p:
        yield p


def make(endpoints: list[dict[str, Any]], **options: Any) -> ChainCollector:
    ctx = CollectorContext(kind="chain", instance="t", interval=1.0, timeout=5.0)
    return ChainCollector(ctx, ChainOptions(endpoints=endpoints, **options))


async def test_anvil_head_chain_id_version_and_no_peer_count(proxy: RpcProxy, anvil: Anvil) -> None:  # noqa: F811
    head = int(await asyncio.to_thread(anvil.rpc, "eth_blockNumber"), 16)
    c = make([{"name": "px", "url": proxy.url}, {"name": "ws", "url": anvil.ws_url}], expected_chain_id=31337)
    try:
        fams = await c.collect()
        fams = await c.collect()
    finally:
        await c.close()
    for name in ("px", "ws"):
        assert family_value(fams, "mevwatch_chain_up", endpoint=name) == 1.0
        got_head = family_value(fams, "mevwatch_chain_head_block", endpoint=name)
        assert got_head is not None
        assert got_head >= head
        age = family_value(fams, "mevwatch_chain_head_age_seconds", endpoint=name)
        assert age is not None
        assert 0 <= age < 3600
        assert family_value(fams, "mevwatch_chain_head_lag_blocks", endpoint=name) == 0.0
        assert family_value(fams, "mevwatch_chain_id", endpoint=name) == 31337.0
        assert family_value(fams, "mevwatch_chain_id_match", endpoint=name) == 1.0
        assert family_value(fams, "mevwatch_chain_syncing", endpoint=name) == 0.0  # false: a normal answer
        assert family_value(fams, "mevwatch_chain_sync_remaining_blocks", endpoint=name) == 0.0
        assert family_value(fams, "mevwatch_rpc_method_supported", endpoint=name, method="eth_syncing") == 1.0
        assert family_value(fams, "mevwatch_chain_peers", endpoint=name) is None
    # anvil over HTTP has no net_peerCount (-32601): reported once as unsupported, no peers value, no error.
    # (Over WebSocket anvil answers -32602 instead, an ordinary rpc_error.)
    assert family_value(fams, "mevwatch_rpc_method_supported", endpoint="px", method="net_peerCount") == 0.0
    assert [lbl for lbl in family_labels(fams, "mevwatch_chain_errors_total") if lbl["endpoint"] == "px"] == []
    assert family_labels(fams, "mevwatch_chain_client_info")[0]["version"].startswith("anvil/")
    assert proxy.calls["net_peerCount"] == 1  # not asked again on the second run


async def test_peer_count_through_proxy_override(proxy: RpcProxy) -> None:
    proxy.set("net_peerCount", Fault(result="0x19"))
    c = make([{"name": "px", "url": proxy.url}])
    try:
        fams = await c.collect()
    finally:
        await c.close()
    assert family_value(fams, "mevwatch_chain_peers", endpoint="px") == 25.0
    assert family_value(fams, "mevwatch_rpc_method_supported", endpoint="px", method="net_peerCount") == 1.0


async def test_syncing_object_and_misread_answer(proxy: RpcProxy) -> None:
    c = make([{"name": "px", "url": proxy.url}])
    try:
        proxy.set("eth_syncing", Fault(result={"startingBlock": "0x0", "currentBlock": "0x64", "highestBlock": "0xc8"}))
        fams = await c.collect()
        assert family_value(fams, "mevwatch_chain_syncing", endpoint="px") == 1.0
        assert family_value(fams, "mevwatch_chain_sync_current_block", endpoint="px") == 100.0
        assert family_value(fams, "mevwatch_chain_sync_highest_block", endpoint="px") == 200.0
        assert family_value(fams, "mevwatch_chain_sync_remaining_blocks", endpoint="px") == 100.0
        for garbage in ("0x1", True, None, {"currentBlock": "soon"}):
            proxy.set("eth_syncing", Fault(result=garbage))
            fams = await c.collect()
            # a misread answer is an error, and reads as neither syncing nor synced
            assert family_value(fams, "mevwatch_chain_syncing", endpoint="px") is None, garbage
            assert family_value(fams, "mevwatch_chain_up", endpoint="px") == 1.0
        assert family_value(fams, "mevwatch_chain_errors_total", endpoint="px", method="eth_syncing",
                            **{"class": "invalid_response"}) == 4.0
    finally:
        await c.close()


async def test_client_version_change_replaces_the_info_series(proxy: RpcProxy) -> None:
    c = make([{"name": "px", "url": proxy.url}])
    try:
        proxy.set("web3_clientVersion", Fault(result="Geth/v1.13.0"))
        fams = await c.collect()
        assert [lbl["version"] for lbl in family_labels(fams, "mevwatch_chain_client_info")] == ["Geth/v1.13.0"]
        proxy.set("web3_clientVersion", Fault(result="Geth/v1.14.0"))
        fams = await c.collect()
        assert [lbl["version"] for lbl in family_labels(fams, "mevwatch_chain_client_info")] == ["Geth/v1.14.0"]
    finally:
        await c.close()


async def test_head_lag_behind_highest_and_behind_reference(proxy: RpcProxy, anvil: Anvil) -> None:  # noqa: F811
    head = int(await asyncio.to_thread(anvil.rpc, "eth_blockNumber"), 16)
    ahead = {"number": hex(head + 100), "timestamp": hex(int(time.time()))}
    async with RpcProxy(anvil.url) as reference:
        reference.set("eth_getBlockByNumber", Fault(result={"number": hex(head + 250), "timestamp": "0x1"}))
        proxy.set("eth_getBlockByNumber", Fault(result=ahead))
        endpoints = [{"name": "anvil", "url": anvil.url}, {"name": "ahead", "url": proxy.url}]
        c = make(endpoints)
        r = make(endpoints, reference={"name": "provider", "url": reference.url})
        try:
            fams = await c.collect()
            assert family_value(fams, "mevwatch_chain_head_lag_blocks", endpoint="anvil", reference="ahead") == 100.0
            assert family_value(fams, "mevwatch_chain_head_lag_blocks", endpoint="ahead", reference="ahead") == 0.0
            fams = await r.collect()
            assert family_value(fams, "mevwatch_chain_head_lag_blocks", endpoint="anvil", reference="provider") == 250.0
            assert family_value(fams, "mevwatch_chain_head_lag_blocks", endpoint="ahead") == 150.0
            assert family_value(fams, "mevwatch_chain_reference_up", reference="provider") == 1.0
            assert family_value(fams, "mevwatch_chain_reference_head_block", reference="provider") == head + 250
            # a dead reference: no lag at all rather than a lag against a made-up head
            reference.set("eth_getBlockByNumber", Fault(http_status=503))
            fams = await r.collect()
            assert family_value(fams, "mevwatch_chain_reference_up", reference="provider") == 0.0
            assert family_labels(fams, "mevwatch_chain_head_lag_blocks") == []
        finally:
            await c.close()
            await r.close()


async def test_chain_id_mismatch_is_an_error_status(anvil: Anvil) -> None:  # noqa: F811
    c = make([{"name": "anvil", "url": anvil.url}], expected_chain_id=1)
    try:
        with pytest.raises(CollectorError, match="chain id is not 1 on: anvil") as info:
            await c.collect()
    finally:
        await c.close()
    assert info.value.reason == "chain_id_mismatch"
    fams = info.value.families or []
    assert family_value(fams, "mevwatch_chain_id_match", endpoint="anvil") == 0.0
    assert family_value(fams, "mevwatch_chain_id", endpoint="anvil") == 31337.0


async def test_dead_node_reports_up_zero_and_nothing_else(proxy: RpcProxy, anvil: Anvil) -> None:  # noqa: F811
    c = make([{"name": "anvil", "url": anvil.url}, {"name": "px", "url": proxy.url, "timeout": 0.3},
              {"name": "gone", "url": f"http://127.0.0.1:{free_port()}"}])
    try:
        fams = await c.collect()
        assert family_value(fams, "mevwatch_chain_head_block", endpoint="px") is not None
        proxy.set("*", Fault(hang=True))
        t0 = time.monotonic()
        fams = await c.collect()
        assert time.monotonic() - t0 < 0.3 + 0.1
    finally:
        await c.close()
    assert family_value(fams, "mevwatch_chain_up", endpoint="anvil") == 1.0
    for name, error_class, runs in (("px", "timeout", 1), ("gone", "refused", 2)):
        assert family_value(fams, "mevwatch_chain_up", endpoint=name) == 0.0
        for series in ("mevwatch_chain_head_block", "mevwatch_chain_id", "mevwatch_chain_syncing",
                       "mevwatch_rpc_method_supported"):
            assert [lbl for lbl in family_labels(fams, series) if lbl["endpoint"] == name] == [], (name, series)
        assert family_value(fams, "mevwatch_chain_errors_total", endpoint=name, method="eth_getBlockByNumber",
                            **{"class": error_class}) == runs
