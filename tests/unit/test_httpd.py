"""The daemon's HTTP/1.1 server over real loopback sockets: routes, keep-alive, pipelining, limits, timeouts, faults."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from mevwatch.aio import wait_for
from mevwatch.daemon.http import HttpHooks, HttpServer, WebConfigFile
from mevwatch.daemon.store import SampleStore
from mevwatch.families import GaugeMetricFamily

WAIT = 5.0  # upper bound for any single read; every test ends well within it


@dataclass
class Daemon:
    """The daemon side the server asks: status rows, readiness, reload."""

    ready_flag: bool = True
    reload_result: tuple[bool, str] = (True, "reloaded")
    reload_gate: asyncio.Event | None = None
    reloads: int = 0
    status_error: bool = False
    rows: list[dict[str, Any]] = field(default_factory=lambda: [
        {"collector": "process", "instance": "default", "success": True, "last_error": None}])

    def status(self) -> list[dict[str, Any]]:
        if self.status_error:
            raise RuntimeError("status broke")
        return self.rows

    def ready(self) -> bool:
        return self.ready_flag

    async def reload(self) -> tuple[bool, str]:
        self.reloads += 1
        if self.reload_gate is not None:
            await self.reload_gate.wait()
        return self.reload_result

    def hooks(self) -> HttpHooks:
        return HttpHooks(status=self.status, ready=self.ready, reload=self.reload)


def populated_store(samples: int = 3) -> SampleStore:
    store = SampleStore()
    g = GaugeMetricFamily("mevwatch_test_value", "a test gauge", labels=["i"])
    for i in range(samples):
        g.add_metric([str(i)], float(i))
    store.put(("test", "default"), [g], interval=60)
    return store


Start = Callable[..., Awaitable[HttpServer]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[HttpServer] = []

    async def _start(daemon: Daemon | None = None, store: SampleStore | None = None, **kw: Any) -> HttpServer:
        srv = HttpServer(store or populated_store(), (daemon or Daemon()).hooks(), "127.0.0.1:0", **kw)
        await srv.start()
        servers.append(srv)
        return srv

    yield _start
    for srv in servers:
        await srv.stop()


class LoopErrors:
    """What the event loop's exception handler is given, and asyncio's own warnings, while a test runs."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.handled: list[dict[str, Any]] = []
        asyncio.get_event_loop().set_exception_handler(lambda _loop, ctx: self.handled.append(ctx))
        caplog.set_level(logging.DEBUG, logger="asyncio")

    def all(self) -> list[Any]:
        return [*self.handled, *(r.getMessage() for r in self.caplog.records
                                 if r.name == "asyncio" and r.levelno >= logging.WARNING)]


@pytest.fixture
def loop_errors(caplog: pytest.LogCaptureFixture) -> LoopErrors:
    return LoopErrors(caplog)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_reply(reader: asyncio.StreamReader, head_only: bool = False) -> Reply:
    raw = await wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = b"" if head_only else await wait_for(reader.readexactly(int(headers["content-length"])), WAIT)
    return Reply(status, headers, body)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True when the server closes the connection (EOF or reset) before WAIT."""
    try:
        return await wait_for(reader.read(65536), WAIT) == b""
    except ConnectionResetError:
        return True


async def connect(srv: HttpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", srv.port)


async def request(srv: HttpServer, raw: bytes, head_only: bool = False) -> Reply:
    reader, writer = await connect(srv)
    try:
        writer.write(raw)
        return await read_reply(reader, head_only)
    finally:
        writer.close()


def get(path: str, *headers: str, method: str = "GET") -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


# --- routes --------------------------------------------------------------------------------------


async def test_metrics_text_openmetrics_gzip_and_query_string(start: Start) -> None:
    srv = await start()
    plain = await request(srv, get("/metrics"))
    assert plain.status == 200
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b'mevwatch_test_value{i="2"} 2.0' in plain.body
    assert int(plain.headers["content-length"]) == len(plain.body)
    assert "content-encoding" not in plain.headers
    om = await request(srv, get("/metrics", "Accept: application/openmetrics-text; version=1.0.0"))
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.body.endswith(b"# EOF\n")
    gz = await request(srv, get("/metrics", "Accept-Encoding: gzip, deflate"))
    assert gz.headers["content-encoding"] == "gzip"
    assert gzip.decompress(gz.body) == plain.body
    assert (await request(srv, get("/metrics?x=1&y"))).body == plain.body
    assert srv.scrapes_total == 4


async def test_landing_health_healthy_and_ready_until_ready(start: Start) -> None:
    daemon = Daemon(ready_flag=False)
    srv = await start(daemon)
    landing = await request(srv, get("/"))
    assert landing.headers["content-type"] == "text/html; charset=utf-8"
    assert b"<td>process</td>" in landing.body
    health = await request(srv, get("/health"))
    assert health.headers["content-type"].startswith("application/json")
    assert json.loads(health.body)["ready"] is False
    assert (await request(srv, get("/-/healthy"))).body == b"mevwatch is Healthy.\n"
    assert (await request(srv, get("/-/ready"))).status == 503
    daemon.ready_flag = True
    ready = await request(srv, get("/-/ready"))
    assert (ready.status, ready.body) == (200, b"mevwatch is Ready.\n")


async def test_reload_needs_lifecycle_and_reports_the_hook_result(start: Start) -> None:
    daemon = Daemon()
    off = await start(daemon)
    assert (await request(off, get("/-/reload", method="POST"))).status == 403
    assert daemon.reloads == 0
    on = await start(daemon, enable_lifecycle=True)
    assert (await request(on, get("/-/reload", method="POST"))).body == b"reloaded\n"
    daemon.reload_result = (False, "config.yaml:3: bad")
    failed = await request(on, get("/-/reload", method="PUT"))
    assert (failed.status, failed.body) == (500, b"config.yaml:3: bad\n")
    assert daemon.reloads == 2


async def test_unknown_path_404_and_wrong_method_405_with_allow(start: Start) -> None:
    srv = await start()
    assert (await request(srv, get("/nope"))).status == 404
    post = await request(srv, get("/metrics", method="POST"))
    assert (post.status, post.headers["allow"]) == (405, "GET, HEAD")
    reload_get = await request(srv, get("/-/reload"))
    assert (reload_get.status, reload_get.headers["allow"]) == (405, "POST, PUT")


async def test_basic_auth_401_with_challenge_then_200(start: Start) -> None:
    import bcrypt

    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    srv = await start(web_config=WebConfigFile(basic_auth_users={"prom": hashed}))

    def auth(user: str, password: str) -> str:
        return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    missing = await request(srv, get("/metrics"))
    assert (missing.status, missing.headers["www-authenticate"]) == (401, 'Basic realm="mevwatch"')
    assert (await request(srv, get("/metrics", auth("prom", "wrong")))).status == 401
    assert (await request(srv, get("/metrics", "Authorization: Basic %%%"))).status == 401
    assert (await request(srv, get("/metrics", auth("prom", "s3cret")))).status == 200
    assert (await request(srv, get("/nope", auth("prom", "s3cret")))).status == 404


async def test_handler_exception_is_500_logged_and_the_server_keeps_serving(start: Start) -> None:
    daemon = Daemon(status_error=True)
    srv = await start(daemon)
    with structlog.testing.capture_logs() as logs:
        assert (await request(srv, get("/"))).status == 500
    assert [(e["event"], e["log_level"], e.get("path")) for e in logs] == [("http_handler_failed", "error", "/")]
    assert logs[0].get("exc_info") is True
    assert (await request(srv, get("/-/healthy"))).status == 200


# --- connections -----------------------------------------------------------------------------------


async def test_keep_alive_serves_many_requests_on_one_connection(start: Start) -> None:
    srv = await start()
    reader, writer = await connect(srv)
    for _ in range(3):
        writer.write(get("/-/healthy"))
        reply = await read_reply(reader)
        assert reply.status == 200
        assert "connection" not in reply.headers
    assert len(srv.server.connections) == 1
    writer.close()


async def test_http10_closes_unless_keep_alive_and_connection_close_closes(start: Start) -> None:
    srv = await start()
    reader, writer = await connect(srv)
    writer.write(b"GET /-/healthy HTTP/1.0\r\n\r\n")
    reply = await read_reply(reader)
    assert (reply.status, reply.headers["connection"]) == (200, "close")
    assert await closed_by_server(reader)
    writer.close()

    reader, writer = await connect(srv)
    for _ in range(2):
        writer.write(b"GET /-/healthy HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        assert (await read_reply(reader)).headers["connection"] == "keep-alive"
    writer.close()

    reader, writer = await connect(srv)
    writer.write(get("/-/healthy", "Connection: close"))
    assert (await read_reply(reader)).headers["connection"] == "close"
    assert await closed_by_server(reader)
    writer.close()


async def test_head_sends_the_get_headers_without_a_body(start: Start) -> None:
    srv = await start()
    full = await request(srv, get("/metrics"))
    reader, writer = await connect(srv)
    writer.write(get("/metrics", method="HEAD") + get("/-/healthy"))
    head = await read_reply(reader, head_only=True)
    assert (head.status, int(head.headers["content-length"])) == (200, len(full.body))
    assert (await read_reply(reader)).body == b"mevwatch is Healthy.\n"  # next reply follows the head at once
    writer.close()


async def test_pipelined_requests_are_answered_in_order_across_an_async_handler(start: Start) -> None:
    gate = asyncio.Event()
    daemon = Daemon(reload_gate=gate)
    srv = await start(daemon, enable_lifecycle=True)
    reader, writer = await connect(srv)
    writer.write(get("/-/healthy") + get("/-/reload", method="POST") + get("/-/ready") + get("/nope"))
    assert (await read_reply(reader)).body == b"mevwatch is Healthy.\n"
    with pytest.raises(TimeoutError):  # the reload is held: nothing may overtake its answer
        await wait_for(reader.read(1), 0.2)
    assert daemon.reloads == 1
    gate.set()
    assert [(await read_reply(reader)).status for _ in range(3)] == [200, 200, 404]
    writer.close()


async def test_request_body_is_consumed_before_the_next_request(start: Start) -> None:
    srv = await start(enable_lifecycle=True)
    reader, writer = await connect(srv)
    body = b"x" * 3000
    writer.write(f"POST /-/reload HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    writer.write(body[:1000])
    await asyncio.sleep(0.05)
    writer.write(body[1000:] + get("/-/healthy"))
    assert (await read_reply(reader)).body == b"reloaded\n"
    assert (await read_reply(reader)).body == b"mevwatch is Healthy.\n"
    writer.close()


async def test_expect_100_continue_is_answered(start: Start) -> None:
    srv = await start(enable_lifecycle=True)
    reader, writer = await connect(srv)
    writer.write(b"POST /-/reload HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert await wait_for(reader.readuntil(b"\r\n\r\n"), WAIT) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"body")
    assert (await read_reply(reader)).status == 200
    writer.close()


# --- limits and malformed input -------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000, 431),  # never ends: limit hits first
    (b"GET /metrics HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
    (b"GET /metrics\r\n\r\n", 400),
    (b"GET /metrics HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    (b"GET metrics HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET /metrics HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nHost: t\r\nBad Name: v\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nHost: t\r\n folded: v\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nHost: t\r\nX: \xff\xfe\xc3\x28\r\n\r\n", 400),  # invalid UTF-8
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # a TLS hello on the plain port
    (bytes(range(256)) + b"\r\n\r\n", 400),
    (b"POST /-/reload HTTP/1.1\r\nHost: t\r\nContent-Length: 70000\r\n\r\n", 413),
    (b"POST /-/reload HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
    (b"POST /-/reload HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /-/reload HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"POST /-/reload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n", 411),
])
async def test_bad_requests_get_an_error_status_and_the_connection_closes(
    start: Start, loop_errors: LoopErrors, raw: bytes, status: int
) -> None:
    srv = await start(enable_lifecycle=True)
    reader, writer = await connect(srv)
    with structlog.testing.capture_logs() as logs:
        writer.write(raw)
        reply = await read_reply(reader)
        assert reply.status == status
        assert reply.headers["connection"] == "close"
        assert await closed_by_server(reader)
    writer.close()
    assert logs == []
    assert loop_errors.all() == []
    assert (await request(srv, get("/-/healthy"))).status == 200


async def test_a_hundred_headers_are_accepted(start: Start) -> None:
    srv = await start()
    headers = [f"X-{i}: v" for i in range(99)]  # + Host = 100
    assert (await request(srv, get("/-/healthy", *headers))).status == 200


async def test_absolute_form_target_is_accepted_and_bare_lf_line_endings_are_not(start: Start) -> None:
    srv = await start()
    assert (await request(srv, b"GET /-/healthy HTTP/1.1\nHost: t\n\n")).status == 400  # as llhttp and Node
    assert (await request(srv, b"GET http://t:9717/-/healthy HTTP/1.1\r\nHost: t\r\n\r\n")).status == 200


# --- timeouts, caps, faults -----------------------------------------------------------------------


async def test_a_stalled_partial_request_is_closed_after_the_header_timeout(start: Start) -> None:
    srv = await start(header_timeout=0.3, idle_timeout=60)
    reader, writer = await connect(srv)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
    reply = await read_reply(reader)
    assert reply.status == 408
    assert await closed_by_server(reader)
    writer.close()
    reader, writer = await connect(srv)  # a connection that never sends a byte
    assert await closed_by_server(reader)
    writer.close()
    assert not srv.server.connections


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(start: Start) -> None:
    srv = await start(header_timeout=60, idle_timeout=0.3)
    reader, writer = await connect(srv)
    writer.write(get("/-/healthy"))
    assert (await read_reply(reader)).status == 200
    assert await closed_by_server(reader)
    writer.close()



async def test_tls_serves_and_a_stalled_handshake_is_closed(
    start: Start, tls_files: tuple[Path, Path], loop_errors: LoopErrors, tmp_path: Path
) -> None:
    cert, key = tls_files
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    srv = await start(web_config_file=web, tls_handshake_timeout=0.3, header_timeout=60)
    ctx = ssl.create_default_context(cafile=str(cert))
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, ssl=ctx)
    writer.write(get("/-/healthy") + get("/-/ready"))
    assert [(await read_reply(reader)).status for _ in range(2)] == [200, 200]
    writer.close()
    reader, writer = await connect(srv)  # plain TCP, no ClientHello: the handshake never completes
    assert await closed_by_server(reader)
    writer.close()
    assert loop_errors.all() == []


async def until(cond: Callable[[], bool]) -> None:
    for _ in range(int(WAIT / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def test_at_the_connection_cap_the_oldest_incomplete_connection_makes_room(start: Start) -> None:
    srv = await start(max_connections=2)
    served = await connect(srv)
    served[1].write(get("/-/healthy"))
    assert (await read_reply(served[0])).status == 200
    partial = await connect(srv)
    partial[1].write(b"GET /-/healthy HTTP/1.1\r\n")  # never finishes its head
    await until(lambda: len(srv.server.connections) == 2)
    reply = await request(srv, get("/-/healthy"))  # the cap is reached: the partial one is closed for it
    assert reply.status == 200
    assert await closed_by_server(partial[0])
    assert srv.server.evicted == 1
    served[1].write(get("/-/ready"))  # the one that completed a request stays
    assert (await read_reply(served[0])).status == 200
    served[1].close()
    partial[1].close()


async def test_at_the_cap_an_idle_connection_makes_room_and_busy_ones_get_503(start: Start) -> None:
    gate = asyncio.Event()
    srv = await start(Daemon(reload_gate=gate), max_connections=2, enable_lifecycle=True)
    idle = [await connect(srv) for _ in range(2)]
    for reader, writer in idle:
        writer.write(get("/-/healthy"))
        assert (await read_reply(reader)).status == 200
    assert (await request(srv, get("/-/healthy"))).status == 200  # the oldest idle one was closed for it
    assert await closed_by_server(idle[0][0])
    idle[0][1].close()
    idle[1][1].close()
    await until(lambda: not srv.server.connections)
    busy = [await connect(srv) for _ in range(2)]
    for _, writer in busy:  # both wait on a reload: nothing can be closed for a third
        writer.write(get("/-/reload", method="POST"))
    await until(lambda: len(srv.server.tasks) == 2)
    over = await request(srv, get("/-/healthy"))
    assert (over.status, over.headers["connection"]) == (503, "close")
    assert srv.server.rejected == 1
    gate.set()
    for reader, writer in busy:
        assert (await read_reply(reader)).status == 200
        writer.close()


async def test_a_client_resetting_mid_response_never_raises_out_of_the_server(
    start: Start, loop_errors: LoopErrors
) -> None:
    srv = await start(store=populated_store(samples=40000))  # a ~1.2 MB body: the write cannot finish at once
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", srv.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(get("/metrics") * 5)
            await asyncio.sleep(0.05)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST with the response half sent
        await asyncio.sleep(0.1)
    assert loop_errors.all() == []
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    assert (await request(srv, get("/-/healthy"))).status == 200
    for _ in range(100):
        if not srv.server.connections:
            break
        await asyncio.sleep(0.01)
    assert not srv.server.connections


async def test_a_client_that_stops_reading_does_not_grow_the_server_buffers(start: Start) -> None:
    srv = await start(store=populated_store(samples=40000), idle_timeout=0.3)
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    for _ in range(20):
        try:
            sock.send(get("/metrics") * 10)
        except BlockingIOError:
            break
    await asyncio.sleep(0.05)
    [conn] = srv.server.connections
    assert conn.transport is not None
    assert conn.transport.get_write_buffer_size() < 5_000_000  # it stopped answering, it did not queue 200 MB
    for _ in range(int(WAIT / 0.05)):  # then dropped like an idle connection
        if not srv.server.connections:
            break
        await asyncio.sleep(0.05)
    assert not srv.server.connections
    sock.close()


async def test_a_slow_reader_gets_the_whole_last_answer_and_a_stalled_one_is_dropped(start: Start) -> None:
    srv = await start(store=populated_store(samples=10000))  # ~370 kB
    srv.server.linger_timeout = 0.1
    full = srv.cache.get(openmetrics=False, gzipped=False)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connect: the window stays small
    sock.connect(("127.0.0.1", srv.port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=32768)
    # a first keep-alive request: the server accepts a connection once its first bytes arrived
    writer.write(get("/-/healthy"))
    assert (await read_reply(reader)).status == 200
    [conn] = srv.server.connections
    transport = conn.transport
    assert transport is not None
    # a small kernel send buffer, so the answer queues in the transport while the client is slow
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    writer.write(get("/metrics", "Connection: close"))
    received, queued = b"", 0
    while chunk := await wait_for(reader.read(32768), WAIT):
        received += chunk
        queued = max(queued, transport.get_write_buffer_size())
        await asyncio.sleep(0.02)  # the whole read takes several linger timeouts
    assert received.endswith(full)
    assert queued > 100_000  # it really was queued behind the slow reader
    writer.close()

    stalled = socket.create_connection(("127.0.0.1", srv.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(get("/metrics", "Connection: close"))
    for _ in range(int(WAIT / 0.05)):  # never reads: aborted once the answer stops draining
        await asyncio.sleep(0.05)
        if not srv.server.connections:
            break
    assert not srv.server.connections
    stalled.close()


# --- answered in the accept callback -----------------------------------------------------------
# The client connects and sends its whole request while the event loop is held (these calls
# block the loop thread), so the server's first read at accept always finds the request there.


def connect_and_send(srv: HttpServer, raw: bytes, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", srv.port))
    sock.sendall(raw)
    return sock


async def read_to_eof(sock: socket.socket) -> Reply:
    def recv_all() -> bytes:
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        raw = await asyncio.get_running_loop().run_in_executor(None, recv_all)
    finally:
        sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Reply(int(lines[0].split(" ")[1]), headers, body)


async def test_a_request_that_asks_to_close_is_answered_at_accept_like_any_other(start: Start) -> None:
    srv = await start()
    kept = await request(srv, get("/metrics"))  # keep-alive: answered by a connection
    assert srv.server.answered_at_accept == 0
    sock = connect_and_send(srv, get("/metrics", "Connection: close"))
    once = await read_to_eof(sock)
    assert srv.server.answered_at_accept == 1
    assert (once.status, once.body) == (200, kept.body)
    assert once.headers["connection"] == "close"
    assert int(once.headers["content-length"]) == len(once.body)
    assert once.headers["content-type"] == kept.headers["content-type"]
    head = await read_to_eof(connect_and_send(srv, get("/metrics", "Connection: close", method="HEAD")))
    assert (head.status, head.body, head.headers["content-length"]) == (200, b"", str(len(kept.body)))
    http10 = await read_to_eof(connect_and_send(srv, b"GET /-/healthy HTTP/1.0\r\n\r\n"))
    assert (http10.status, http10.body) == (200, b"mevwatch is Healthy.\n")
    assert srv.server.answered_at_accept == 3


async def test_a_request_sent_after_the_connect_is_still_answered_at_accept(start: Start) -> None:
    # the kernel hands the connection over once its first bytes arrived (TCP_DEFER_ACCEPT), so a
    # client slow to send its request costs no extra connection object and loop wake-up
    srv = await start()
    sock = socket.socket()
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", srv.port))
    await asyncio.sleep(0.2)
    assert not srv.server.connections  # nothing accepted yet
    sock.sendall(get("/metrics", "Connection: close"))
    reply = await read_to_eof(sock)
    assert reply.status == 200
    assert srv.server.answered_at_accept == 1


async def test_an_answer_larger_than_the_socket_takes_is_finished_by_a_connection(start: Start) -> None:
    srv = await start(store=populated_store(samples=300_000))  # ~12 MB: more than a socket buffers
    sock = connect_and_send(srv, get("/metrics", "Connection: close"), rcvbuf=4096)
    await asyncio.sleep(0.2)  # the client reads nothing for a while: the first send is partial
    reply = await read_to_eof(sock)
    assert reply.status == 200
    assert len(reply.body) == int(reply.headers["content-length"]) > 10_000_000
    assert reply.body.endswith(b'mevwatch_test_value{i="299999"} 299999.0\n')
    assert srv.server.answered_at_accept == 0


async def test_an_async_handler_reached_at_accept_is_awaited_by_a_connection(start: Start) -> None:
    daemon = Daemon()
    srv = await start(daemon, enable_lifecycle=True)
    sock = connect_and_send(srv, get("/-/reload", "Connection: close", "Content-Length: 0", method="POST"))
    reply = await read_to_eof(sock)
    assert (reply.status, reply.body, daemon.reloads) == (200, b"reloaded\n", 1)


async def test_keep_alive_bad_and_partial_first_reads_go_on_as_connections(start: Start) -> None:
    srv = await start()
    sock = connect_and_send(srv, get("/-/healthy"))  # keep-alive: the connection serves the next one too
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        assert (await read_reply(reader)).status == 200
        writer.write(get("/-/ready"))
        assert (await read_reply(reader)).status == 200
    finally:
        writer.close()
    bad = await read_to_eof(connect_and_send(srv, b"GARBAGE\r\n\r\n"))
    assert bad.status == 400
    partial = connect_and_send(srv, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n")  # head not complete yet
    await asyncio.sleep(0.05)
    partial.sendall(b"Connection: close\r\n\r\n")
    assert (await read_to_eof(partial)).body == b"mevwatch is Healthy.\n"
    assert srv.server.answered_at_accept == 0


# --- the front door under attack (small, fast forms; the full attacks run in tests/e2e/test_http_attacks.py) ---


async def test_padding_before_the_request_line_counts_toward_the_head_limit(start: Start) -> None:
    srv = await start()
    assert (await request(srv, b"\r\n" * 8 + get("/-/healthy"))).status == 200  # a few blank lines are fine
    reader, writer = await connect(srv)
    sent = 0

    async def pad() -> None:
        nonlocal sent
        for _ in range(100):  # at most 800 KiB: far past the 8 KiB limit if nothing stopped it
            writer.write(b"\r\n" * 4096)
            await writer.drain()
            sent += 8192
            await asyncio.sleep(0.005)

    task = asyncio.create_task(pad())
    reply = await read_reply(reader)
    task.cancel()
    assert reply.status == 431
    assert sent <= 16 * 8192  # refused after a few writes, not after the whole stream
    writer.close()


async def test_a_request_has_one_deadline_that_more_bytes_do_not_move(start: Start) -> None:
    srv = await start(header_timeout=0.5, idle_timeout=60)
    reader, writer = await connect(srv)
    loop = asyncio.get_running_loop()
    began = loop.time()
    drip = b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 1000

    async def dribble() -> None:
        for byte in drip:  # one byte every 50 ms: each would re-arm a per-read timeout forever
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(dribble())
    reply = await read_reply(reader)
    elapsed = loop.time() - began
    task.cancel()
    assert reply.status == 408
    assert 0.4 < elapsed < 2.0  # the deadline from the first byte, not from the last
    writer.close()


async def test_one_source_address_holds_a_bounded_number_of_incomplete_connections(start: Start) -> None:
    srv = await start(max_incomplete_per_source=3)

    async def partial(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, local_addr=(source, 0))
        writer.write(b"GET /-/healthy HTTP/1.1\r\n")
        return reader, writer

    held = [await partial("127.0.0.2") for _ in range(3)]
    other = await partial("127.0.0.3")
    await until(lambda: srv.server.incomplete == {"127.0.0.2": 3, "127.0.0.3": 1})
    newest = await partial("127.0.0.2")  # the fourth from that source: its oldest is closed for it
    assert await closed_by_server(held[0][0])
    await until(lambda: srv.server.incomplete == {"127.0.0.2": 3, "127.0.0.3": 1})
    newest[1].write(b"Host: t\r\n\r\n")
    assert (await read_reply(newest[0])).status == 200
    other[1].write(b"Host: t\r\n\r\n")
    assert (await read_reply(other[0])).status == 200  # another source is not touched
    assert srv.server.incomplete == {"127.0.0.2": 2}
    for _, writer in [*held, other, newest]:
        writer.close()


def auth_header(user: str, password: bytes) -> str:
    return "Authorization: Basic " + base64.b64encode(user.encode() + b":" + password).decode()


async def test_basic_auth_caches_successes_and_recent_failures_and_refuses_long_passwords(
    start: Start, loop_errors: LoopErrors
) -> None:
    import bcrypt

    long_password = b"p" * 72
    hashed = bcrypt.hashpw(long_password, bcrypt.gensalt(rounds=4)).decode()
    srv = await start(web_config=WebConfigFile.model_validate({"basic_auth_users": {"prom": hashed}}))
    assert srv._auth is not None
    with structlog.testing.capture_logs() as logs:
        assert (await request(srv, get("/-/healthy", auth_header("prom", long_password)))).status == 200
        assert (await request(srv, get("/-/healthy", auth_header("prom", long_password)))).status == 200
        assert srv._auth.bcrypt_runs == 1  # the success was cached
        # bcrypt reads 72 bytes: a longer password that starts with the right ones must still fail
        assert (await request(srv, get("/-/healthy", auth_header("prom", long_password + b"x")))).status == 401
        assert srv._auth.bcrypt_runs == 1  # refused without bcrypt
        for _ in range(3):
            assert (await request(srv, get("/-/healthy", auth_header("prom", b"wrong")))).status == 401
        assert (await request(srv, get("/-/healthy", auth_header("nobody", b"wrong")))).status == 401
        assert srv._auth.bcrypt_runs == 3  # one run for the wrong password, then its cached failure
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    assert loop_errors.all() == []
