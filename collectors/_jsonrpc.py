"""A small async JSON-RPC client (HTTP and WebSocket) for the chain collectors, with classified errors.

Usage::

    client = JsonRpcClient(Endpoint(name="erigon", url="http://127.0.0.1:8545"))
    try:
        head = parse_quantity(await client.call("eth_blockNumber"))
    except RpcError as exc:
        exc.error_class, exc.code  # "timeout" / "refused" / ... ; http status or rpc error code
    await client.close()

At most one call per method is in flight per client: a second caller of the same method with the
same params shares the in-flight call; with other params it waits for it. A caller that is
cancelled does not cancel the shared call, which ends at the endpoint's own timeout. URLs in
labels, logs and error messages are always redacted (``Endpoint.safe_url``).
For ``eth_subscribe`` use :class:`WsRpc` directly (``subscribe`` + ``notifications``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mevwatch.aio import cancel_and_wait, wait_for
from mevwatch.collectors._json import JsonTooDeep, loads_bounded
from mevwatch.fields import ByteSize, Duration
from mevwatch.redaction import redact, redact_url

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "Endpoint",
    "ErrorClass",
    "JsonRpcClient",
    "ResponseTooLarge",
    "RpcError",
    "SharedSession",
    "WsRpc",
    "parse_quantity",
    "short_repr",
]

DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
_READ_CHUNK = 64 * 1024
_JSON_HEADERS = {"Content-Type": "application/json"}
_HEX_RE = re.compile(r"^0[xX][0-9a-fA-F]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ErrorClass(StrEnum):
    """Why a call failed; the ``class`` label of the error counters (a fixed, bounded set)."""

    TIMEOUT = "timeout"
    REFUSED = "refused"
    RESET = "reset"
    UNREACHABLE = "unreachable"  # DNS failure, no route: neither a refusal nor a reset
    HTTP_STATUS = "http_status"
    RPC_ERROR = "rpc_error"
    METHOD_NOT_SUPPORTED = "method_not_supported"
    INVALID_RESPONSE = "invalid_response"


class RpcError(Exception):
    """A failed call: ``error_class``, ``code`` (HTTP status or JSON-RPC error code) and a redacted message."""

    def __init__(self, error_class: ErrorClass, message: str, code: int | None = None) -> None:
        self.error_class = error_class
        self.code = code
        self.message = redact(message)
        super().__init__(self.message)

    @property
    def reason(self) -> str:
        """The supervisor's failure reason: the class, with the code for http_status and rpc_error."""
        return self.error_class.value


class ResponseTooLarge(RpcError):
    """An answer over the endpoint's ``max_response_bytes``, cut off unread: an invalid_response whose caller
    can tell the on-call that the limit, not the node, is the problem."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorClass.INVALID_RESPONSE, message)


class Endpoint(BaseModel):
    """One JSON-RPC endpoint of a chain collector's config: a name for labels, a URL and its timeouts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="label value for this endpoint (letters, digits, '-', '_', '.')")
    url: str = Field(description="http(s):// or ws(s):// URL; API keys in it are redacted everywhere")
    connect_timeout: Duration = Field(default=2.0, description="TCP (and TLS) connect timeout, capped at timeout")
    timeout: Duration = Field(default=5.0, description="total time for one call, connect included")
    max_response_bytes: ByteSize = Field(
        default=DEFAULT_MAX_RESPONSE_BYTES, description="a larger answer is an invalid_response, read no further"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("endpoint name must be 1-64 characters of letters, digits, '-', '_' or '.'")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https", "ws", "wss"):
            raise ValueError(f"endpoint URL must start with http://, https://, ws:// or wss://, got {redact_url(v)!r}")
        if not parts.hostname:
            raise ValueError(f"endpoint URL has no host: {redact_url(v)!r}")
        try:
            parts.port  # noqa: B018 - raises on a non-numeric or out-of-range port
        except ValueError:
            raise ValueError(f"endpoint URL has an invalid port: {redact_url(v)!r}") from None
        return v

    @model_validator(mode="after")
    def _timeouts(self) -> Endpoint:
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("timeout and connect_timeout must be greater than 0")
        if self.max_response_bytes < 1024:
            raise ValueError("max_response_bytes must be at least 1KiB")
        return self

    @property
    def connect_seconds(self) -> float:
        return min(self.connect_timeout, self.timeout)

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)

    @property
    def websocket(self) -> bool:
        return self.url.startswith(("ws://", "wss://"))

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme in ("https", "wss") else 80)


def parse_quantity(value: Any, what: str = "quantity") -> int:
    """A JSON-RPC hex quantity (``"0x1a"``) as an int; anything else raises ValueError naming ``what``."""
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected a hex string like '0x1a', got {type(value).__name__} {short_repr(value)}")
    if not value.startswith(("0x", "0X")) or len(value) < 3 or len(value) > 66:
        raise ValueError(f"{what}: expected a hex string like '0x1a', got {short_repr(value)}")
    if not _HEX_RE.match(value):
        raise ValueError(f"{what}: not a hex number: {short_repr(value)}")
    return int(value[2:], 16)


def short_repr(value: Any) -> str:
    """``repr`` of a value from a node's answer, cut to 40 characters for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def error_from_rpc(error: Any) -> RpcError:
    """Classify a JSON-RPC ``error`` member: -32601 is method_not_supported, other codes rpc_error."""
    if not isinstance(error, dict) or not isinstance(error.get("code"), int):
        return RpcError(ErrorClass.INVALID_RESPONSE, f"malformed error member {short_repr(error)}")
    code = int(error["code"])
    message = str(error.get("message", ""))[:200]
    if code == -32601:
        return RpcError(ErrorClass.METHOD_NOT_SUPPORTED, f"method not supported: {message}", code)
    return RpcError(ErrorClass.RPC_ERROR, f"rpc error {code}: {message}", code)


def result_of(doc: Any, request_id: int) -> Any:
    """The ``result`` of a decoded response to ``request_id``, or the classified error."""
    if not isinstance(doc, dict):
        raise RpcError(ErrorClass.INVALID_RESPONSE, f"response is not a JSON object: {short_repr(doc)}")
    if doc.get("id") != request_id:
        raise RpcError(ErrorClass.INVALID_RESPONSE,
                       f"response id {short_repr(doc.get('id'))} != request id {request_id}")
    if "error" in doc and doc["error"] is not None:
        raise error_from_rpc(doc["error"])
    if "result" not in doc:
        raise RpcError(ErrorClass.INVALID_RESPONSE, "response has neither result nor error")
    return doc["result"]


def classify_exception(exc: BaseException, endpoint: Endpoint) -> RpcError:
    """Map a transport exception from aiohttp/asyncio to an :class:`RpcError`."""
    where = f"{endpoint.name} ({endpoint.safe_url})"
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return RpcError(ErrorClass.TIMEOUT, f"{where}: no answer within {endpoint.timeout:g}s")
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_err = exc.os_error
        if isinstance(os_err, ConnectionRefusedError) or getattr(os_err, "errno", None) == errno.ECONNREFUSED:
            return RpcError(ErrorClass.REFUSED, f"{where}: connection refused")
        if isinstance(os_err, TimeoutError):
            return RpcError(ErrorClass.TIMEOUT, f"{where}: connect timed out after {endpoint.connect_seconds:g}s")
        return RpcError(ErrorClass.UNREACHABLE, f"{where}: cannot connect: {os_err}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | ConnectionResetError):
        return RpcError(ErrorClass.RESET, f"{where}: connection closed mid-response ({type(exc).__name__})")
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return RpcError(ErrorClass.HTTP_STATUS, f"{where}: websocket handshake got HTTP {exc.status}", exc.status)
    if isinstance(exc, aiohttp.ClientOSError):
        if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
            return RpcError(ErrorClass.RESET, f"{where}: connection reset")
        if exc.errno == errno.ECONNREFUSED:
            return RpcError(ErrorClass.REFUSED, f"{where}: connection refused")
        return RpcError(ErrorClass.UNREACHABLE, f"{where}: {exc}")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return RpcError(ErrorClass.RESET, f"{where}: {type(exc).__name__}: {exc}")
    raise exc


@dataclass(slots=True)
class _InFlight:
    params_key: str
    task: asyncio.Task[Any]


class JsonRpcClient:
    """Calls to one endpoint over HTTP (a pooled session) or WebSocket (one kept-open connection)."""

    def __init__(self, endpoint: Endpoint, session: aiohttp.ClientSession | None = None) -> None:
        self.endpoint = endpoint
        self._session = session
        self._own_session = session is None
        self._ids = itertools.count(1)
        self._inflight: dict[str, _InFlight] = {}
        self._ws: WsRpc | None = None
        self._ws_lock = asyncio.Lock()
        self._timeout = aiohttp.ClientTimeout(total=endpoint.timeout, sock_connect=endpoint.connect_seconds)

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """The call's ``result``; raises :class:`RpcError` for every expected failure."""
        params_key = json.dumps(params, sort_keys=True, separators=(",", ":")) if params else ""
        while True:
            current = self._inflight.get(method)
            if current is None:
                break
            if current.params_key == params_key:
                return await asyncio.shield(current.task)
            await asyncio.wait([current.task])  # another call of this method is in flight: let it end
        # No await between the check above and this registration: the slot cannot be taken twice.
        task = asyncio.ensure_future(self._call_timed(method, list(params)))
        self._inflight[method] = _InFlight(params_key, task)
        task.add_done_callback(lambda t: self._release(method, t))
        # A cancelled caller leaves the call running; it keeps the slot until its own timeout ends it.
        return await asyncio.shield(task)

    def _release(self, method: str, task: asyncio.Task[Any]) -> None:
        current = self._inflight.get(method)
        if current is not None and current.task is task:
            del self._inflight[method]
        if task.done() and not task.cancelled():
            task.exception()  # mark retrieved: the error was delivered to the callers

    async def _call_timed(self, method: str, params: list[Any]) -> Any:
        try:
            # HTTP calls are bounded by the session's total timeout, WebSocket ones by WsRpc's own.
            return await self._call_once(method, params)
        except RpcError:
            raise
        except Exception as exc:
            raise classify_exception(exc, self.endpoint) from None

    async def _call_once(self, method: str, params: list[Any]) -> Any:
        if self.endpoint.websocket:
            return await (await self._websocket()).call(method, params)
        request_id = next(self._ids)
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}).encode()
        async with self._get_session().post(
            self.endpoint.url, data=body, headers=_JSON_HEADERS, timeout=self._timeout
        ) as resp:
            if resp.status != 200:
                raise RpcError(
                    ErrorClass.HTTP_STATUS, f"{self.endpoint.name}: HTTP {resp.status} for {method}", resp.status
                )
            raw = await read_capped(resp, self.endpoint.max_response_bytes)
        return result_of(decode_json(raw), request_id)

    async def _websocket(self) -> WsRpc:
        # Calls of several methods start together: they must share one connection, not race to open one each.
        async with self._ws_lock:
            if self._ws is None or self._ws.closed:
                if self._ws is not None:
                    await self._ws.close()
                ws = WsRpc(self.endpoint, self._get_session())
                await ws.connect()
                self._ws = ws
            return self._ws

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = new_session()
            self._own_session = True
        return self._session

    async def close(self) -> None:
        for inflight in list(self._inflight.values()):
            inflight.task.cancel()
        self._inflight.clear()
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None


def new_session(limit_per_host: int = 4) -> aiohttp.ClientSession:
    """A session for RPC calls: small per-host pool, no cookies, no proxy from the environment."""
    connector = aiohttp.TCPConnector(limit_per_host=limit_per_host, limit=0, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)


class SharedSession:
    """One RPC session for all of a collector's endpoints: opened on first use, again after a close."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = new_session()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or invalid_response as soon as it passes ``limit`` bytes (never buffers more)."""
    if resp.content_length is not None:
        if resp.content_length > limit:
            resp.close()
            raise ResponseTooLarge(f"response of {resp.content_length} bytes exceeds {limit}")
        return await resp.read()  # reads exactly Content-Length bytes
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await resp.content.read(_READ_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            resp.close()  # drop the connection rather than drain an oversized body
            raise ResponseTooLarge(f"response exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json(raw: bytes) -> Any:
    """Parsed JSON, or invalid_response when it is not JSON or nests deeper than MAX_JSON_DEPTH."""
    try:
        return loads_bounded(raw)
    except JsonTooDeep as exc:
        raise RpcError(ErrorClass.INVALID_RESPONSE, f"response {exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise RpcError(ErrorClass.INVALID_RESPONSE, f"response is not JSON: {raw[:40]!r}") from None


class WsRpc:
    """One WebSocket JSON-RPC connection: calls matched by id, subscription notifications queued.

    ``await ws.connect()``; ``await ws.call(m, params)``; ``sub = await ws.subscribe("newPendingTransactions")``;
    ``async for params in ws.notifications(): ...`` (ends, raising RpcError reset, when the socket drops).
    Notifications beyond ``queue_size`` unread are dropped and counted in ``dropped``.
    """

    def __init__(self, endpoint: Endpoint, session: aiohttp.ClientSession | None = None,
                 queue_size: int = 100_000) -> None:
        self.endpoint = endpoint
        self._session = session
        self._own_session = session is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._queue: asyncio.Queue[Any] = asyncio.Queue(queue_size)
        self._closed_error: RpcError | None = None
        self.dropped = 0

    @property
    def closed(self) -> bool:
        return self._ws is None or self._ws.closed or self._closed_error is not None

    async def connect(self) -> None:
        if self._session is None:
            self._session = new_session()
        timeout = aiohttp.ClientWSTimeout(ws_close=1.0)
        try:
            self._ws = await wait_for(
                self._session.ws_connect(
                    self.endpoint.url,
                    timeout=timeout,
                    max_msg_size=self.endpoint.max_response_bytes,
                    heartbeat=None,
                    autoping=True,
                ),
                self.endpoint.connect_seconds,
            )
        except Exception as exc:
            raise classify_exception(exc, self.endpoint) from None
        self._closed_error = None
        self._reader = asyncio.create_task(self._read(), name=f"ws-rpc:{self.endpoint.name}")

    async def _read(self) -> None:
        assert self._ws is not None
        error = RpcError(ErrorClass.RESET, f"{self.endpoint.name}: websocket closed")
        try:
            async for msg in self._ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    refused = self._dispatch(msg.data)
                    if refused is not None:  # a hostile frame ends this connection, with its reason
                        error = RpcError(refused.error_class, f"{self.endpoint.name}: {refused.message}")
                        break
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    exc = msg.data if isinstance(msg.data, BaseException) else self._ws.exception()
                    if isinstance(exc, aiohttp.WebSocketError) and exc.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
                        error = ResponseTooLarge(
                            f"{self.endpoint.name}: message exceeds {self.endpoint.max_response_bytes}")
                    break
        except Exception as exc:  # transport failure while reading
            try:
                error = classify_exception(exc, self.endpoint)
            except Exception:  # not a transport error: still the end of this connection, never silent
                error = RpcError(ErrorClass.INVALID_RESPONSE,
                                 f"{self.endpoint.name}: reading the websocket failed: {type(exc).__name__}: {exc}")
        self._closed_error = error
        with contextlib.suppress(Exception):
            await wait_for(self._ws.close(), 1.0)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(error)

    def _dispatch(self, text: str) -> RpcError | None:
        """Route one frame; an RpcError when the frame must end the connection (nested too deep)."""
        try:
            doc = loads_bounded(text)
        except JsonTooDeep as exc:
            return RpcError(ErrorClass.INVALID_RESPONSE, f"frame {exc}")
        except ValueError:
            return None  # a garbage frame fails no particular call; the call it belonged to times out
        if isinstance(doc, dict) and doc.get("method") == "eth_subscription":
            try:
                self._queue.put_nowait(doc.get("params"))
            except asyncio.QueueFull:
                self.dropped += 1
            return None
        request_id = doc.get("id") if isinstance(doc, dict) else None
        fut = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if fut is not None and not fut.done():
            fut.set_result(doc)
        return None

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        if self._ws is None or self._closed_error is not None:
            raise self._closed_error or RpcError(ErrorClass.RESET, f"{self.endpoint.name}: websocket not connected")
        request_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        try:
            await self._ws.send_str(
                json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)})
            )
            doc = await wait_for(fut, self.endpoint.timeout)
        except RpcError:
            raise
        except Exception as exc:
            raise classify_exception(exc, self.endpoint) from None
        finally:
            self._pending.pop(request_id, None)
        return result_of(doc, request_id)

    async def subscribe(self, kind: str, *params: Any) -> str:
        """``eth_subscribe``; returns the subscription id. Notifications arrive via :meth:`notifications`."""
        sub = await self.call("eth_subscribe", [kind, *params])
        if not isinstance(sub, str):
            raise RpcError(ErrorClass.INVALID_RESPONSE, f"eth_subscribe returned {short_repr(sub)}")
        return sub

    async def notifications(self) -> AsyncIterator[Any]:
        """The ``params`` of each ``eth_subscription`` message; raises RpcError when the socket drops."""
        while True:
            item = await self._queue.get()
            if isinstance(item, RpcError):
                raise item
            yield item

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await wait_for(self._ws.close(), 1.0)
        if self._reader is not None:
            await cancel_and_wait(self._reader)
            self._reader = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
