"""The JSON-RPC client's pure parts: hex quantities, endpoint validation, answer classification, redaction."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from mevwatch.collectors._jsonrpc import (
    Endpoint,
    ErrorClass,
    JsonRpcClient,
    ResponseTooLarge,
    RpcError,
    decode_json,
    parse_quantity,
    result_of,
)
from tests.support.peers import free_port


@pytest.mark.parametrize(("text", "value"), [("0x0", 0), ("0x1a", 26), ("0X10", 16), ("0x" + "f" * 64, 2**256 - 1)])
def test_parse_quantity(text: str, value: int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("26", "expected a hex string"),
        ("0x", "expected a hex string"),
        ("0xzz", "not a hex number"),
        ("0x-1", "not a hex number"),
        (26, "got int"),
        (None, "got NoneType"),
        ("0x" + "1" * 100, "expected a hex string"),
    ],
)
def test_parse_quantity_rejects_garbage(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_quantity(value, "peer count")
    assert "peer count" in str(info.value)


def test_endpoint_defaults_and_properties() -> None:
    ep = Endpoint(name="erigon", url="http://127.0.0.1:8545")
    assert (ep.connect_timeout, ep.timeout, ep.max_response_bytes) == (2.0, 5.0, 1024 * 1024)
    assert (ep.host, ep.port, ep.websocket) == ("127.0.0.1", 8545, False)
    assert Endpoint(name="a", url="wss://node.example/ws").port == 443
    assert Endpoint(name="a", url="ws://h:8546", timeout="500ms", connect_timeout="100ms").websocket
    assert Endpoint(name="a", url="http://h", timeout="1s").connect_seconds == 1.0  # default 2s capped


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "bad name", "url": "http://h:1"}, "endpoint name"),
        ({"name": "a", "url": "ftp://h"}, "must start with http"),
        ({"name": "a", "url": "http://"}, "no host"),
        ({"name": "a", "url": "http://h:99999"}, "invalid port"),
        ({"name": "a", "url": "http://h", "timeout": 0}, "greater than 0"),
        ({"name": "a", "url": "http://h", "max_response_bytes": 10}, "at least 1KiB"),
        ({"name": "a", "url": "http://h", "retries": 3}, "Extra inputs"),
    ],
)
def test_endpoint_rejects_bad_config(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Endpoint(**fields)


def test_bad_url_error_does_not_echo_the_key() -> None:
    with pytest.raises(ValidationError) as info:
        Endpoint(name="a", url="ftp://user:hunter2@h/v3/0123456789abcdef0123456789abcdef")
    # mevwatch's config errors print the message only (never pydantic's input_value)
    message = info.value.errors()[0]["msg"]
    assert "must start with http" in message
    assert "hunter2" not in message
    assert "0123456789abcdef0123456789abcdef" not in message


def test_safe_url_redacts_keys() -> None:
    ep = Endpoint(name="infura", url="https://user:pw@mainnet.infura.io/v3/0123456789abcdef0123456789abcdef?apikey=s3cr3t")
    assert "pw" not in ep.safe_url.replace("mainnet", "")
    assert "0123456789abcdef0123456789abcdef" not in ep.safe_url
    assert "s3cr3t" not in ep.safe_url


def test_result_of_classifies_answers() -> None:
    assert result_of({"jsonrpc": "2.0", "id": 7, "result": "0x1"}, 7) == "0x1"
    assert result_of({"jsonrpc": "2.0", "id": 7, "result": False}, 7) is False
    cases: list[tuple[Any, ErrorClass, int | None]] = [
        ({"id": 8, "result": "0x1"}, ErrorClass.INVALID_RESPONSE, None),
        ({"id": 7}, ErrorClass.INVALID_RESPONSE, None),
        ([1, 2], ErrorClass.INVALID_RESPONSE, None),
        ({"id": 7, "error": {"code": -32601, "message": "Method not found"}}, ErrorClass.METHOD_NOT_SUPPORTED, -32601),
        ({"id": 7, "error": {"code": -32000, "message": "header not found"}}, ErrorClass.RPC_ERROR, -32000),
        ({"id": 7, "error": "boom"}, ErrorClass.INVALID_RESPONSE, None),
    ]
    for doc, cls, code in cases:
        with pytest.raises(RpcError) as info:
            result_of(doc, 7)
        assert (info.value.error_class, info.value.code) == (cls, code), doc


def test_decode_json_rejects_non_json() -> None:
    with pytest.raises(RpcError, match="not JSON") as info:
        decode_json(b"<html>502</html>")
    assert info.value.error_class is ErrorClass.INVALID_RESPONSE


def test_rpc_error_message_is_redacted() -> None:
    err = RpcError(ErrorClass.REFUSED, "cannot reach https://node/v3/0123456789abcdef0123456789abcdef")
    assert "0123456789abcdef0123456789abcdef" not in str(err)


async def test_refused_is_classified_and_redacted() -> None:
    port = free_port()  # nothing listens there
    key = "0123456789abcdef0123456789abcdef"
    client = JsonRpcClient(Endpoint(name="local", url=f"http://u:secret@127.0.0.1:{port}/v3/{key}"))
    try:
        with pytest.raises(RpcError) as info:
            await client.call("eth_blockNumber")
    finally:
        await client.close()
    assert info.value.error_class is ErrorClass.REFUSED
    assert key not in str(info.value)
    assert "secret" not in str(info.value)


async def test_hung_server_costs_the_timeout_and_one_call() -> None:
    """A server that accepts and never answers: callers share one call that ends at the timeout."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = JsonRpcClient(Endpoint(name="hung", url=f"http://127.0.0.1:{port}", timeout=0.3, connect_timeout=0.2))
    loop = asyncio.get_running_loop()
    try:
        t0 = loop.time()
        results = await asyncio.gather(*(client.call("eth_blockNumber") for _ in range(5)), return_exceptions=True)
        elapsed = loop.time() - t0
    finally:
        await client.close()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
    assert all(isinstance(r, RpcError) and r.error_class is ErrorClass.TIMEOUT for r in results)
    assert elapsed < 0.3 + 0.1
    assert len(accepted) == 1  # five callers, one request on the wire


async def test_chunked_oversized_body_is_cut_at_the_limit() -> None:
    """No Content-Length: the body is read in chunks and abandoned once past the limit."""
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(160):  # 10 MiB
                await resp.write(b"f" * 65536)
                sent += 65536
        return resp

    app = web.Application()
    app.router.add_post("/", endless)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    client = JsonRpcClient(Endpoint(name="big", url=f"http://127.0.0.1:{port}", max_response_bytes="256KiB"))
    try:
        with pytest.raises(RpcError, match="exceeds 262144 bytes") as info:
            await client.call("eth_blockNumber")
    finally:
        await client.close()
        await runner.cleanup()
    assert info.value.error_class is ErrorClass.INVALID_RESPONSE
    assert isinstance(info.value, ResponseTooLarge)  # a caller can say the limit is the cause
    assert sent < 10 * 1024 * 1024
