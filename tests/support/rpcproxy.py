"""A fault-injecting JSON-RPC proxy (HTTP and WebSocket) in front of a real node, for the chain tests.

In an async test, on the test's loop::

    async with RpcProxy(anvil.url) as proxy:          # proxy.url, proxy.ws_url
        proxy.set("net_peerCount", Fault(result="0x19"))
        proxy.set("eth_blockNumber", Fault(hang=True))  # or delay=, http_status=429, non_json=True,
        ...                                            # wrong_id=True, oversized=True,
        proxy.clear("eth_blockNumber")                 # close_mid_response=True, drop_ws=True,
        proxy.calls["eth_blockNumber"]                 # rpc_error=(-32000, "msg"), deep_json=100_000
        await proxy.drop_websockets()
        await proxy.refuse_connections()               # the port stops listening: connect() is refused
        await proxy.listen()                           # ... and listens again
        await proxy.push_websockets(deep_frame(100_000))  # a frame the node never sent, to every client
        proxy.refuse_websockets = 503                  # upgrades answered 503 (HTTP calls still pass)

In a sync test (e.g. with a mevwatch subprocess), ``with ThreadedRpcProxy(anvil.url) as proxy:``
runs the same proxy on its own loop in a thread; ``set``/``clear``/``calls`` work the same.
``set("*", fault)`` applies a fault to every method without its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from mevwatch.aio import wait_for
from tests.support.peers import free_port

__all__ = ["OVERSIZED_BYTES", "Fault", "RpcProxy", "ThreadedRpcProxy", "deep_answer", "deep_frame"]

OVERSIZED_BYTES = 10 * 1024 * 1024
_UNSET: Any = object()
# module-level aliases: inside RpcProxy the method ``set`` shadows the builtin in annotations
_IdSet = set[Any]
_WsSet = set[web.WebSocketResponse]
_TaskSet = set[asyncio.Task[None]]


def deep_answer(request_id: Any, depth: int) -> str:
    """A JSON-RPC answer whose result is ``depth`` nested arrays (built as text: json.dumps would recurse)."""
    return json.dumps({"jsonrpc": "2.0", "id": request_id})[:-1] + ',"result":' + "[" * depth + "]" * depth + "}"


def deep_frame(depth: int) -> str:
    """An eth_subscription notification whose result nests ``depth`` arrays deep."""
    return ('{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"0x1","result":'
            + "[" * depth + "]" * depth + "}}")


@dataclass(frozen=True, slots=True)
class Fault:
    """What the proxy does to calls of one method; fields combine (``delay`` runs first)."""

    result: Any = _UNSET  # answer with this result instead of asking the node
    delay: float = 0.0  # seconds to wait before answering
    hang: bool = False  # never answer (until the proxy stops)
    http_status: int | None = None  # answer with this HTTP status and a text body (HTTP only)
    non_json: bool = False  # answer 200 with an HTML body
    wrong_id: bool = False  # the node's answer with another id
    oversized: bool = False  # a 10 MB JSON answer
    close_mid_response: bool = False  # send headers and part of the body, then close the socket
    drop_ws: bool = False  # close the WebSocket connection on this call (WS only)
    rpc_error: tuple[int, str] | None = None  # answer with this JSON-RPC error (code, message)
    deep_json: int = 0  # answer with a result of arrays nested this deep (the text is built, never parsed)


class RpcProxy:
    def __init__(self, upstream: str, port: int | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.upstream_ws = "ws" + self.upstream[4:] if self.upstream.startswith("http") else self.upstream
        self.port = port or free_port()
        self.faults: dict[str, Fault] = {}
        self.calls: Counter[str] = Counter()
        self._websockets: _WsSet = _WsSet()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: _TaskSet = _TaskSet()
        # the HTTP status a WebSocket upgrade is answered with instead of being proxied (None: proxy it), as
        # a reverse proxy whose WebSocket upstream is down answers while its HTTP upstream still serves
        self.refuse_websockets: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def set(self, method: str, fault: Fault) -> None:
        self.faults[method] = fault

    def clear(self, method: str | None = None) -> None:
        if method is None:
            self.faults.clear()
        else:
            self.faults.pop(method, None)

    def fault_for(self, method: str) -> Fault | None:
        return self.faults.get(method) or self.faults.get("*")

    async def start(self) -> None:
        self._closing = asyncio.Event()
        self._session = aiohttp.ClientSession()
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        await self.listen()

    async def listen(self) -> None:
        """Listen on the proxy's port (again, after :meth:`refuse_connections`)."""
        if self._site is None and self._runner is not None:
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await self._site.start()

    async def refuse_connections(self) -> None:
        """Stop listening: new connections are refused, as at the port of a node that is down (calls in
        flight go on as their faults say)."""
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def stop(self) -> None:
        self._closing.set()
        await self.drop_websockets()
        for task in list(self._tasks):
            task.cancel()
        self._site = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> RpcProxy:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def drop_websockets(self) -> None:
        """Close every proxied WebSocket connection now (the client sees the stream end)."""
        for ws in list(self._websockets):
            with contextlib.suppress(Exception):
                await wait_for(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY), 1.0)

    async def push_websockets(self, text: str) -> None:
        """Send ``text`` as one frame to every proxied WebSocket client, as if the node had sent it."""
        for ws in list(self._websockets):
            with contextlib.suppress(Exception):
                await ws.send_str(text)

    # --- HTTP ---------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if self.refuse_websockets is not None:
                self.calls["websocket_refused"] += 1
                return web.Response(status=self.refuse_websockets, text="websocket upstream unavailable\n")
            return await self._handle_ws(request)
        raw = await request.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        method = doc.get("method", "") if isinstance(doc, dict) else ""
        request_id = doc.get("id") if isinstance(doc, dict) else None
        self.calls[method] += 1
        fault = self.fault_for(method) if method else None
        if fault is None:
            return await self._forward(raw)
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.hang:
            await self._closing.wait()
            raise web.HTTPServiceUnavailable()
        if fault.http_status is not None:
            return web.Response(status=fault.http_status, text="upstream busy\n")
        if fault.non_json:
            return web.Response(status=200, text="<html><body>502 Bad Gateway</body></html>",
                                content_type="text/html")
        if fault.close_mid_response:
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = 1000
            await resp.prepare(request)
            await resp.write(b'{"jsonrpc":"2.0","id":')
            if request.transport is not None:
                request.transport.close()
            return resp
        if fault.oversized:
            return await self._oversized(request, request_id)
        if fault.rpc_error is not None:
            code, message = fault.rpc_error
            return web.json_response({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})
        if fault.deep_json:
            return web.Response(text=deep_answer(request_id, fault.deep_json), content_type="application/json")
        if fault.result is not _UNSET:
            return web.json_response({"jsonrpc": "2.0", "id": request_id, "result": fault.result})
        if fault.wrong_id:
            _, body = await self._upstream(raw)
            answer = json.loads(body)
            answer["id"] = _other_id(request_id)
            return web.json_response(answer)
        return await self._forward(raw)

    async def _forward(self, raw: bytes) -> web.Response:
        status, body = await self._upstream(raw)
        return web.Response(body=body, status=status, content_type="application/json")

    async def _upstream(self, raw: bytes) -> tuple[int, bytes]:
        assert self._session is not None
        async with self._session.post(self.upstream, data=raw, headers={"Content-Type": "application/json"}) as up:
            return up.status, await up.read()

    async def _oversized(self, request: web.Request, request_id: Any) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        head = json.dumps({"jsonrpc": "2.0", "id": request_id})[:-1].encode() + b',"result":"0x'
        resp.content_length = OVERSIZED_BYTES
        await resp.prepare(request)
        filler = b"f" * (64 * 1024)
        sent = len(head)
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client hangs up early: expected
            await resp.write(head)
            while sent < OVERSIZED_BYTES - 2:
                chunk = filler[: OVERSIZED_BYTES - 2 - sent]
                await resp.write(chunk)
                sent += len(chunk)
            await resp.write(b'"}')
        return resp

    # --- WebSocket ----------------------------------------------------------------------------

    async def _handle_ws(self, request: web.Request) -> web.WebSocketResponse:
        assert self._session is not None
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self._websockets.add(ws)
        rewrite_ids: _IdSet = _IdSet()
        try:
            async with self._session.ws_connect(self.upstream_ws, max_msg_size=0) as up:
                pump = asyncio.create_task(self._pump_up(up, ws, rewrite_ids))
                try:
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        if not await self._client_message(msg.data, request, ws, up, rewrite_ids):
                            break
                finally:
                    pump.cancel()
                    with contextlib.suppress(BaseException):
                        await pump
        except aiohttp.ClientError:
            pass
        finally:
            self._websockets.discard(ws)
            with contextlib.suppress(Exception):
                await ws.close()
        return ws

    async def _pump_up(self, up: aiohttp.ClientWebSocketResponse, ws: web.WebSocketResponse,
                       rewrite_ids: _IdSet) -> None:
        async for msg in up:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = msg.data
            if rewrite_ids:
                with contextlib.suppress(ValueError, AttributeError):
                    doc = json.loads(data)
                    if doc.get("id") in rewrite_ids:
                        rewrite_ids.discard(doc["id"])
                        doc["id"] = _other_id(doc["id"])
                        data = json.dumps(doc)
            await ws.send_str(data)
        await ws.close()

    async def _client_message(self, data: str, request: web.Request, ws: web.WebSocketResponse,
                              up: aiohttp.ClientWebSocketResponse, rewrite_ids: _IdSet) -> bool:
        """Handle one request frame; False when the connection is to be dropped."""
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        method = doc.get("method", "") if isinstance(doc, dict) else ""
        request_id = doc.get("id") if isinstance(doc, dict) else None
        self.calls[method] += 1
        fault = self.fault_for(method) if method else None
        if fault is None:
            await up.send_str(data)
            return True
        if fault.drop_ws:
            return False
        if fault.close_mid_response:
            if request.transport is not None:
                request.transport.close()
            return False
        if fault.hang:
            return True
        task = asyncio.create_task(self._answer_ws(fault, data, request_id, ws, up, rewrite_ids))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _answer_ws(self, fault: Fault, data: str, request_id: Any, ws: web.WebSocketResponse,
                         up: aiohttp.ClientWebSocketResponse, rewrite_ids: _IdSet) -> None:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        with contextlib.suppress(ConnectionError, RuntimeError):
            if fault.non_json:
                await ws.send_str("<html>502 Bad Gateway</html>")
            elif fault.oversized:
                await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": request_id,
                                              "result": "0x" + "f" * OVERSIZED_BYTES}))
            elif fault.deep_json:
                await ws.send_str(deep_answer(request_id, fault.deep_json))
            elif fault.rpc_error is not None:
                code, message = fault.rpc_error
                await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": request_id,
                                              "error": {"code": code, "message": message}}))
            elif fault.result is not _UNSET:
                await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": request_id, "result": fault.result}))
            else:
                if fault.wrong_id:
                    rewrite_ids.add(request_id)
                await up.send_str(data)


def _other_id(request_id: Any) -> Any:
    return request_id + 1000 if isinstance(request_id, int) else "not-your-id"


class ThreadedRpcProxy:
    """The same proxy on its own event loop in a daemon thread, for sync tests."""

    def __init__(self, upstream: str) -> None:
        self.proxy = RpcProxy(upstream)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rpcproxy", daemon=True)

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def ws_url(self) -> str:
        return self.proxy.ws_url

    @property
    def calls(self) -> Counter[str]:
        return self.proxy.calls

    def set(self, method: str, fault: Fault) -> None:
        self._loop.call_soon_threadsafe(self.proxy.set, method, fault)

    def clear(self, method: str | None = None) -> None:
        self._loop.call_soon_threadsafe(self.proxy.clear, method)

    def drop_websockets(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.drop_websockets(), self._loop).result(5)

    def refuse_connections(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.refuse_connections(), self._loop).result(5)

    def listen(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.listen(), self._loop).result(5)

    def refuse_websockets(self, status: int | None) -> None:
        """Answer WebSocket upgrades with ``status`` from now on (None: proxy them again)."""
        self._loop.call_soon_threadsafe(setattr, self.proxy, "refuse_websockets", status)

    def push_websockets(self, text: str) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.push_websockets(text), self._loop).result(5)

    def __enter__(self) -> ThreadedRpcProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.proxy.stop(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
