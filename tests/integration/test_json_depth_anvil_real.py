"""A node that answers deeply nested JSON (a RecursionError in Python's parser), through the fault proxy.

Before, one such answer blanked the rpc and chain collectors for the healthy endpoints too, and one
such WebSocket frame killed the mempool stream's reader silently while it still reported up. Now
only that endpoint or that connection fails, as invalid_response with a reason; the stream
reconnects and logs the outage once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mevwatch.collectors.base import CollectorContext
from mevwatch.collectors.chain import ChainCollector, ChainOptions
from mevwatch.collectors.mempool_stream import MempoolStreamCollector, MempoolStreamOptions
from mevwatch.collectors.rpc import RpcCollector, RpcOptions
from mevwatch.families import Metric
from tests.support.anvil import Anvil, anvil  # noqa: F401 - fixture
from tests.support.families import family_value
from tests.support.rpcproxy import Fault, RpcProxy, deep_frame

DEEP = 200_000  # far past Python's recursion limit; 400 kB, under the 1 MiB answer limit


@pytest.fixture
async def proxy(anvil: Anvil) -> AsyncIterator[RpcProxy]:  # noqa: F811 - fixture parameter
    async with RpcProxy(anvil.url) as p:
        yield p


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_deep_answer_fails_that_rpc_endpoint_only(proxy: RpcProxy, anvil: Anvil,  # noqa: F811
                                                         transport: str) -> None:
    url = proxy.url if transport == "http" else proxy.ws_url
    ctx = CollectorContext(kind="rpc", instance="t", interval=1.0, timeout=5.0)
    c = RpcCollector(ctx, RpcOptions(endpoints=[{"name": "hostile", "url": url, "timeout": 1.0},
                                                {"name": "healthy", "url": anvil.url}]))
    proxy.set("eth_blockNumber", Fault(deep_json=DEEP))
    try:
        fams = await c.collect()  # returns: one endpoint up is a successful run
    finally:
        await c.close()
    assert family_value(fams, "mevwatch_rpc_up", endpoint="healthy") == 1.0
    assert family_value(fams, "mevwatch_rpc_up", endpoint="hostile") == 0.0
    assert family_value(fams, "mevwatch_rpc_errors_total", endpoint="hostile", method="eth_blockNumber",
                        **{"class": "invalid_response"}) == 1.0


async def test_deep_answer_fails_that_chain_node_only(proxy: RpcProxy, anvil: Anvil) -> None:  # noqa: F811
    ctx = CollectorContext(kind="chain", instance="t", interval=1.0, timeout=5.0)
    c = ChainCollector(ctx, ChainOptions(endpoints=[{"name": "hostile", "url": proxy.url, "timeout": 1.0},
                                                    {"name": "healthy", "url": anvil.url}]))
    proxy.set("*", Fault(deep_json=DEEP))
    try:
        fams = await c.collect()
    finally:
        await c.close()
    assert family_value(fams, "mevwatch_chain_up", endpoint="healthy") == 1.0
    assert family_value(fams, "mevwatch_chain_head_block", endpoint="healthy") is not None
    assert family_value(fams, "mevwatch_chain_up", endpoint="hostile") == 0.0
    assert family_value(fams, "mevwatch_chain_head_block", endpoint="hostile") is None


class _Emitted:
    def __init__(self) -> None:
        self.last: list[Metric] = []
        self.history: list[list[Metric]] = []

    def __call__(self, families: Any) -> None:
        self.last = list(families)
        self.history.append(self.last)

    async def until(self, what: str, pred: Callable[[list[Metric]], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred(self.last):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached in {timeout}s")
            await asyncio.sleep(0.02)


async def test_deep_frame_ends_the_stream_connection_which_reconnects(proxy: RpcProxy,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    ctx = CollectorContext(kind="mempool_stream", instance="t", interval=0.05, timeout=5.0)
    c = MempoolStreamCollector(ctx, MempoolStreamOptions(
        endpoint={"name": "node", "url": proxy.ws_url}, reconnect_min=0.05, reconnect_max=0.2))
    logged: list[dict[str, Any]] = []
    c.ctx.log = _Recorder(logged)
    emitted = _Emitted()
    task = asyncio.create_task(c.run(emitted))
    try:
        def up(fams: list[Metric]) -> bool:
            return family_value(fams, "mevwatch_mempool_stream_up", endpoint="node") == 1.0

        await emitted.until("stream up", up)
        def errors(fams: list[Metric]) -> float | None:
            return family_value(fams, "mevwatch_mempool_stream_errors_total", endpoint="node",
                                **{"class": "invalid_response"})

        def reconnects(fams: list[Metric]) -> float | None:
            return family_value(fams, "mevwatch_mempool_stream_reconnects_total", endpoint="node")

        for n in (1, 2):
            await proxy.push_websockets(deep_frame(DEEP))
            await emitted.until(f"error {n} counted", lambda f: errors(f) == n)  # noqa: B023 - awaited here
            await emitted.until(f"reconnect {n}", lambda f: up(f) and reconnects(f) == n)  # noqa: B023
            # between the frame and the reconnect the stream said it was down
            assert any(errors(f) == n and not up(f) for f in emitted.history)
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await c.close()
    downs = [e for e in logged if e["event"] == "mempool_stream_down"]
    assert len(downs) == 2  # once per outage, each with its reason
    assert all(e["reason"] == "invalid_response" and "nests deeper than 64 levels" in e["error"] for e in downs)


class _Recorder:
    """A structlog-shaped logger that keeps events."""

    def __init__(self, into: list[dict[str, Any]]) -> None:
        self.into = into

    def _add(self, event: str, **kw: Any) -> None:
        self.into.append({"event": event, **kw})

    info = warning = error = debug = exception = _add

    def bind(self, **_: Any) -> _Recorder:
        return self
