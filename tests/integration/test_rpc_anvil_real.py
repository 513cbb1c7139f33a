"""rpc collector against real anvil, healthy and through every fault of the proxy; breaker; schedule; staleness."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mevwatch.collectors.base import CollectorContext, CollectorError
from mevwatch.collectors.rpc import RpcCollector, RpcOptions
from mevwatch.daemon.config import load_config_text
from mevwatch.daemon.store import SampleStore
from mevwatch.daemon.supervisor import Supervisor
from tests.support.anvil import Anvil, anvil  # noqa: F401 - fixture
from tests.support.collect import collect_anyway
from tests.support.daemon import RunningDaemon, sample_value
from tests.support.families import family_value
from tests.support.rpcproxy import Fault, RpcProxy, ThreadedRpcProxy


@pytest.fixture
async def proxy(anvil: Anvil) -> AsyncIterator[RpcProxy]:  # noqa: F811 - fixture parameter
    async with RpcProxy(anvil.url) as p:
        yield p


def make(endpoints: list[dict[str, Any]], **options: Any) -> RpcCollector:
    ctx = CollectorContext(kind="rpc", instance="t", interval=1.0, timeout=5.0)
    return RpcCollector(ctx, RpcOptions(endpoints=endpoints, **options))


async def test_healthy_http_and_ws_endpoints(anvil: Anvil) -> None:  # noqa: F811
    c = make([{"name": "http", "url": anvil.url}, {"name": "ws", "url": anvil.ws_url}])
    try:
        await c.collect()
        fams = await c.collect()
    finally:
        await c.close()
    for name in ("http", "ws"):
        assert family_value(fams, "mevwatch_rpc_up", endpoint=name) == 1.0
        assert family_value(fams, "mevwatch_rpc_requests_total", endpoint=name, method="eth_blockNumber") == 2.0
        assert family_value(fams, "mevwatch_rpc_request_duration_seconds_count", endpoint=name) == 2.0
        assert family_value(fams, "mevwatch_rpc_request_duration_seconds_bucket", endpoint=name, le="10.0") == 2.0
        assert family_value(fams, "mevwatch_rpc_circuit_breaker_state", endpoint=name, state="closed") == 1.0
        assert family_value(fams, "mevwatch_rpc_circuit_breaker_state", endpoint=name, state="open") == 0.0
        # the kept-alive HTTP connection and the open WebSocket, read from the live /proc/net/tcp
        conns = family_value(fams, "mevwatch_rpc_established_connections", endpoint=name)
        assert conns is not None
        assert conns >= 1
    assert family_value(fams, "mevwatch_rpc_endpoint_info", endpoint="ws", transport="websocket") == 1.0


FAULTS = [
    (Fault(http_status=429), "http_status", "429"),
    (Fault(http_status=503), "http_status", "503"),
    (Fault(non_json=True), "invalid_response", ""),
    (Fault(wrong_id=True), "invalid_response", ""),
    (Fault(oversized=True), "invalid_response", ""),
    (Fault(close_mid_response=True), "reset", ""),
    (Fault(rpc_error=(-32005, "rate limited")), "rpc_error", "-32005"),
    (Fault(hang=True), "timeout", ""),
    (Fault(delay=1.0), "timeout", ""),
]


@pytest.mark.parametrize(("fault", "error_class", "code"), FAULTS, ids=[f[1] + f[2] for f in FAULTS])
async def test_fault_gives_its_error_class(proxy: RpcProxy, fault: Fault, error_class: str, code: str) -> None:
    c = make([{"name": "px", "url": proxy.url, "timeout": 0.3, "connect_timeout": 0.2}])
    proxy.set("eth_blockNumber", fault)
    loop = asyncio.get_running_loop()
    try:
        t0 = loop.time()
        with pytest.raises(CollectorError) as info:  # the only thing that leaves collect()
            await c.collect()
        elapsed = loop.time() - t0
    finally:
        await c.close()
    assert info.value.reason == error_class
    assert elapsed < 0.3 + 0.1  # a hung or slow node costs at most the timeout
    fams = info.value.families or []
    assert family_value(fams, "mevwatch_rpc_up", endpoint="px") == 0.0
    errors = family_value(fams, "mevwatch_rpc_errors_total", endpoint="px", method="eth_blockNumber",
                          code=code, **{"class": error_class})
    assert errors == 1.0


async def test_unsupported_probe_method_is_not_a_failure(proxy: RpcProxy) -> None:
    c = make([{"name": "px", "url": proxy.url}], methods=["eth_blockNumber", "net_peerCount"])
    try:
        fams = await c.collect()  # anvil: net_peerCount -> -32601
    finally:
        await c.close()
    assert family_value(fams, "mevwatch_rpc_up", endpoint="px") == 1.0
    assert family_value(fams, "mevwatch_rpc_errors_total", method="net_peerCount",
                        **{"class": "method_not_supported"}) == 1.0


async def test_breaker_opens_after_five_failures_and_half_opens_after_recovery(proxy: RpcProxy) -> None:
    c = make([{"name": "px", "url": proxy.url}], methods=["eth_blockNumber", "eth_chainId"],
             failure_threshold=5, recovery_time=0.3)
    proxy.set("*", Fault(http_status=503))

    async def state() -> tuple[str, Any]:
        fams = await collect_anyway(c)
        current = next(s.labels["state"] for f in fams for s in f.samples
                       if s.name == "mevwatch_rpc_circuit_breaker_state" and s.value == 1.0)
        return current, fams

    try:
        for _ in range(4):
            assert (await state())[0] == "closed"
        current, _ = await state()
        assert current == "open"
        assert (proxy.calls["eth_blockNumber"], proxy.calls["eth_chainId"]) == (5, 5)
        # open: nothing is sent
        with pytest.raises(CollectorError, match="circuit breaker is open") as info:
            await c.collect()
        assert info.value.reason == "circuit_open"
        assert proxy.calls["eth_blockNumber"] == 5
        assert family_value(info.value.families or [], "mevwatch_rpc_probes_skipped_total", endpoint="px") == 1.0
        # after the recovery time: one trial call (first method only); it fails, so open again
        await asyncio.sleep(0.35)
        current, fams = await state()
        assert current == "open"
        assert (proxy.calls["eth_blockNumber"], proxy.calls["eth_chainId"]) == (6, 5)
        assert family_value(fams, "mevwatch_rpc_circuit_breaker_transitions_total", state="half_open") == 1.0
        # the node recovers: the next trial closes the breaker, and every method is probed again
        proxy.clear()
        await asyncio.sleep(0.35)
        current, fams = await state()
        assert current == "closed"
        assert family_value(fams, "mevwatch_rpc_up", endpoint="px") == 1.0
        await c.collect()
        assert (proxy.calls["eth_blockNumber"], proxy.calls["eth_chainId"]) == (8, 6)
        assert family_value(fams, "mevwatch_rpc_circuit_breaker_transitions_total", state="open") == 2.0
        assert family_value(fams, "mevwatch_rpc_circuit_breaker_transitions_total", state="closed") == 1.0
    finally:
        await c.close()


async def test_hung_node_keeps_one_call_in_flight_across_overlapping_runs(proxy: RpcProxy) -> None:
    c = make([{"name": "px", "url": proxy.url, "timeout": 0.5, "connect_timeout": 0.2}])
    proxy.set("eth_blockNumber", Fault(hang=True))
    try:
        first = asyncio.ensure_future(c.collect())
        await asyncio.sleep(0.1)
        first.cancel()  # the supervisor gave up on the run; the call itself runs to its own timeout
        with pytest.raises(CollectorError, match="no answer within"):
            await c.collect()
        assert proxy.calls["eth_blockNumber"] == 1
    finally:
        await c.close()


async def test_other_collectors_keep_their_schedule_while_the_node_hangs(proxy: RpcProxy) -> None:
    proxy.set("*", Fault(hang=True))
    config = load_config_text(
        "collectors:\n"
        "  - process: {interval: 0.1}\n"
        f"  - rpc: {{interval: 0.2, timeout: 0.15, endpoints: [{{name: px, url: '{proxy.url}', timeout: 1}}]}}\n",
        "t", {},
    )
    store = SampleStore()
    sup = Supervisor(config, store)
    await sup.start()
    try:
        await asyncio.sleep(1.0)
        process = sup.status[("process", "default")]
        rpc = sup.status[("rpc", "default")]
        assert process.runs >= 8
        assert process.success is True
        assert rpc.success is False
        assert rpc.errors["timeout"] >= 3
        assert proxy.calls["eth_blockNumber"] <= 2  # one in flight at a time, each ending at its 1 s timeout
    finally:
        await sup.shutdown()


def test_daemon_drops_rpc_series_two_intervals_after_the_node_hangs(anvil: Anvil, tmp_path: Path) -> None:  # noqa: F811
    with ThreadedRpcProxy(anvil.url) as proxy:
        config = (
            "collectors:\n"
            f"  - rpc: {{interval: 0.5, timeout: 0.3, endpoints: [{{name: px, url: '{proxy.url}', timeout: 5}}]}}\n"
        )
        with RunningDaemon(tmp_path, config) as daemon:
            assert daemon.wait_for("mevwatch_rpc_up", endpoint="px") == 1.0
            proxy.set("eth_blockNumber", Fault(hang=True))
            hung_at = time.monotonic()
            while sample_value(daemon.get(), "mevwatch_rpc_up", endpoint="px") is not None:
                assert time.monotonic() - hung_at < 3.0, "stale rpc series still served"
                time.sleep(0.05)
            gone_after = time.monotonic() - hung_at
            assert gone_after >= 0.5  # the last good snapshot is served until it is 2x0.5 s old
            # the run that hangs ends at its 0.3 s timeout, 0.2 s before the snapshot it did not replace goes
            # stale: on a loaded machine the loop may report it a moment after the scrape stopped showing it
            daemon.wait_value("mevwatch_collector_success", 0.0, timeout=2.0, collector="rpc")
            text = daemon.get()
            assert sample_value(text, "mevwatch_collector_errors_total", collector="rpc", reason="timeout")
