"""The JSON-RPC client against real anvil, through the fault proxy: every fault gets its error class."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mevwatch.aio import wait_for
from mevwatch.collectors._jsonrpc import (
    Endpoint,
    ErrorClass,
    JsonRpcClient,
    ResponseTooLarge,
    RpcError,
    WsRpc,
    parse_quantity,
)
from tests.support.anvil import Anvil, anvil  # noqa: F401 - fixture
from tests.support.rpcproxy import Fault, RpcProxy


@pytest.fixture
async def proxy(anvil: Anvil) -> AsyncIterator[RpcProxy]:  # noqa: F811 - fixture parameter
    async with RpcProxy(anvil.url) as p:
        yield p


def _client(url: str, timeout: float = 1.0) -> JsonRpcClient:
    return JsonRpcClient(Endpoint(name="anvil", url=url, timeout=timeout, connect_timeout=0.5))


async def test_http_call_through_proxy(proxy: RpcProxy) -> None:
    client = _client(proxy.url)
    try:
        assert parse_quantity(await client.call("eth_chainId")) == 31337
        assert proxy.calls["eth_chainId"] == 1
    finally:
        await client.close()


async def test_anvil_has_no_peer_count_and_proxy_overrides_it(proxy: RpcProxy) -> None:
    client = _client(proxy.url)
    try:
        with pytest.raises(RpcError) as info:
            await client.call("net_peerCount")
        assert (info.value.error_class, info.value.code) == (ErrorClass.METHOD_NOT_SUPPORTED, -32601)
        proxy.set("net_peerCount", Fault(result="0x19"))
        assert parse_quantity(await client.call("net_peerCount")) == 25
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("fault", "error_class", "code"),
    [
        (Fault(http_status=429), ErrorClass.HTTP_STATUS, 429),
        (Fault(http_status=503), ErrorClass.HTTP_STATUS, 503),
        (Fault(non_json=True), ErrorClass.INVALID_RESPONSE, None),
        (Fault(wrong_id=True), ErrorClass.INVALID_RESPONSE, None),
        (Fault(oversized=True), ErrorClass.INVALID_RESPONSE, None),
        (Fault(close_mid_response=True), ErrorClass.RESET, None),
        (Fault(rpc_error=(-32005, "limit exceeded")), ErrorClass.RPC_ERROR, -32005),
        (Fault(hang=True), ErrorClass.TIMEOUT, None),
        (Fault(delay=2.0), ErrorClass.TIMEOUT, None),
    ],
    ids=["429", "503", "non_json", "wrong_id", "oversized", "close_mid_response", "rpc_error", "hang", "delay"],
)
async def test_http_fault_classes(proxy: RpcProxy, fault: Fault, error_class: ErrorClass, code: int | None) -> None:
    client = _client(proxy.url, timeout=0.4)
    proxy.set("eth_blockNumber", fault)
    loop = asyncio.get_running_loop()
    try:
        t0 = loop.time()
        with pytest.raises(RpcError) as info:
            await client.call("eth_blockNumber")
        elapsed = loop.time() - t0
        assert (info.value.error_class, info.value.code) == (error_class, code)
        assert elapsed < 0.4 + 0.1  # a hang costs at most the timeout
        proxy.clear()
        assert parse_quantity(await client.call("eth_blockNumber")) >= 0  # and the client recovers
    finally:
        await client.close()


async def test_ws_calls_and_faults(proxy: RpcProxy) -> None:
    client = _client(proxy.ws_url, timeout=0.4)
    try:
        assert parse_quantity(await client.call("eth_chainId")) == 31337
        for fault, error_class in [
            (Fault(wrong_id=True), ErrorClass.TIMEOUT),  # on WS an answer with a foreign id answers nothing
            (Fault(hang=True), ErrorClass.TIMEOUT),
            (Fault(rpc_error=(-32000, "x")), ErrorClass.RPC_ERROR),
            (Fault(oversized=True), ErrorClass.INVALID_RESPONSE),
            (Fault(drop_ws=True), ErrorClass.RESET),
        ]:
            proxy.set("eth_blockNumber", fault)
            with pytest.raises(RpcError) as info:
                await client.call("eth_blockNumber")
            assert info.value.error_class is error_class, fault
            assert isinstance(info.value, ResponseTooLarge) == fault.oversized  # over max_msg_size, told apart
            proxy.clear()
            assert parse_quantity(await client.call("eth_blockNumber")) >= 0  # reconnects after a drop
    finally:
        await client.close()


async def test_ws_subscription_ends_when_the_proxy_drops_it(proxy: RpcProxy, anvil: Anvil) -> None:  # noqa: F811
    ws = WsRpc(Endpoint(name="anvil", url=proxy.ws_url))
    await ws.connect()
    try:
        await ws.subscribe("newHeads")
        await asyncio.to_thread(anvil.rpc, "evm_mine")
        head = await wait_for(ws.notifications().__anext__(), 5)
        assert "result" in head
        await proxy.drop_websockets()
        with pytest.raises(RpcError) as info:
            async for _ in ws.notifications():
                pass
        assert info.value.error_class is ErrorClass.RESET
        assert ws.closed
    finally:
        await ws.close()
