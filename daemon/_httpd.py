"""A small HTTP/1.1 server on ``asyncio.Protocol`` for the daemon's few fixed routes.

Requests are framed by llhttp (through httptools, as uvicorn does), with the checks h11 makes
on top (one Host, a single space in the request line); keep-alive, HTTP/1.0, HEAD,
pipelining (answered in order), size limits, timeouts and a connection cap without a web
framework: aiohttp.web costs ~11 MiB RSS to import and ~300 us more CPU per new connection.

Limits against clients that never finish a request (docs/security.md):
- every byte a client sends before a request's headers end counts toward ``MAX_HEAD``
  (padding too), answered 431 as Go's net/http does;
- one absolute deadline per request from its first byte (Go's ReadHeaderTimeout), never
  moved by more bytes;
- at the connection cap the oldest connection that has not completed a request is closed to
  make room (then the oldest one waiting between requests), and each source address holds
  at most ``max_incomplete_per_source`` such connections, its oldest closed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httptools
import structlog

__all__ = ["MAX_BODY", "MAX_HEAD", "MAX_HEADERS", "Request", "RequestParser", "Response", "Server"]

log = structlog.get_logger("mevwatch.http")

MAX_HEAD = 8192  # bytes a request head may take, counted from the first byte after the request before it
MAX_HEADERS = 100
MAX_BODY = 64 * 1024
DEFER_ACCEPT_S = 1  # seconds the kernel holds a connection that has sent nothing yet (TCP_DEFER_ACCEPT)
_BODY_SLICE = 65536

_REASONS = {
    100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
    429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(slots=True)
class Request:
    method: str
    path: str  # without the query string
    query: str
    version: str  # "1.0" or "1.1"
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = b""
    peer: str = ""  # the client's address


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, status: int, text: str, *headers: tuple[str, str]) -> Response:
        return cls(status, text.encode(), headers=headers)


App = Callable[[Request], Response | Awaitable[Response]]


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The Date header, formatted once per second (locale-independent)."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        t = time.gmtime(now)
        _date_cache = (now, f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon]} {t.tm_year} "
                            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")
    return _date_cache[1]


def _head(resp: Response, length: int, connection: str | None, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}\r\n"
             f"Content-Type: {resp.content_type}\r\nContent-Length: {length}\r\nDate: {_http_date()}\r\n"]
    lines.extend(f"{k}: {v}\r\n" for k, v in extra)
    lines.extend(f"{k}: {v}\r\n" for k, v in resp.headers)
    if connection is not None:
        lines.append(f"Connection: {connection}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class _Closed:
    """Stands in for llhttp after RequestParser.close(): it parses nothing more."""

    def feed_data(self, data: memoryview) -> None:
        raise httptools.HttpParserError("the parser is closed")


_CLOSED: Any = _Closed()


class RequestParser:
    """Bytes in, requests out: llhttp's framing plus the checks of h11 that llhttp leaves out.

    ``push`` stores what arrived; ``next`` feeds it to llhttp a slice at a time until one request
    is complete, so pipelined requests are parsed as they are answered, never thousands at once.
    Every byte before a request's headers end (leading blank lines too) counts toward MAX_HEAD;
    a head that starts in the same slice as the end of the request before it may reach twice that.
    """

    __slots__ = (
        "_body", "_body_left", "_buf", "_error", "_headers", "_hosts", "_in_head", "_nheaders", "_p", "_pos",
        "_ready", "_url", "continue_wanted", "head_bytes",
    )

    def __init__(self) -> None:
        self._p: Any = httptools.HttpRequestParser(self)
        self._buf: bytes = b""
        self._pos = 0
        self._ready: deque[tuple[Request, bool]] = deque()
        self._error: tuple[int, str] | None = None  # (status, message); no exception kept: no traceback cycle
        self._in_head = True  # between requests or inside a head (not inside a body)
        self.head_bytes = 0  # bytes fed since the last head ended (or the connection began)
        self._url: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._hosts = 0
        self._nheaders = 0
        self._body: list[bytes] = []
        self._body_left = 0
        self.continue_wanted = False  # a complete head asked for "100 Continue" and its body is not here yet

    # --- the caller's side ----------------------------------------------------------------------

    def close(self) -> None:
        """Drop llhttp, which holds this object for its callbacks: the pair is freed at once, not by a
        later cyclic garbage collection (under a flood of short connections that is most of the heap)."""
        self._p = _CLOSED
        self._buf, self._pos = b"", 0
        self._ready.clear()

    def push(self, data: bytes) -> None:
        if self._pos >= len(self._buf):
            self._buf, self._pos = data, 0
        else:  # only while requests wait to be answered; the caller stops reading past a bound
            self._buf, self._pos = self._buf[self._pos:] + data, 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed."""
        return len(self._buf) - self._pos

    @property
    def pending(self) -> bool:
        """Part of a next request arrived (or waits to be parsed)."""
        return self.buffered > 0 or self.head_bytes > 0 or not self._in_head or bool(self._ready)

    def next(self) -> tuple[Request, bool] | None:
        """The next complete request and whether the connection stays open after it; None until
        one is complete; _HttpError for a malformed request or one over a limit (after every
        complete request before it was returned)."""
        while not self._ready:
            if self._error is not None:
                raise _HttpError(*self._error)
            left = len(self._buf) - self._pos
            if left <= 0:
                self._buf, self._pos = b"", 0
                return None
            if self._in_head:
                take = min(left, MAX_HEAD + 1 - self.head_bytes)
            else:
                take = min(left, self._body_left or _BODY_SLICE)
            chunk = memoryview(self._buf)[self._pos:self._pos + take]
            self._pos += take
            was_in_head, before = self._in_head, self.head_bytes
            self._feed(chunk)
            chunk.release()
            if was_in_head and self._in_head and self.head_bytes == before and not self._ready:
                self.head_bytes += take  # no head ended within the slice: every byte of it was head
                if self.head_bytes > MAX_HEAD and self._error is None:
                    self._error = (431, f"request head over {MAX_HEAD} bytes")
        return self._ready.popleft()

    def _feed(self, chunk: memoryview) -> None:
        try:
            self._p.feed_data(chunk)
        except httptools.HttpParserUpgrade:
            # an Upgrade or CONNECT request: answered as a plain request, and the connection closes
            if self._ready:
                req, _ = self._ready.pop()
                self._ready.append((req, False))
            self._buf, self._pos = b"", 0
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._error = (cause.status, str(cause)) if isinstance(cause, _HttpError) else (400, "malformed request")
            self._buf, self._pos = b"", 0
        except httptools.HttpParserError as exc:
            self._error = (400, f"malformed request: {exc}")
            self._buf, self._pos = b"", 0

    # --- llhttp callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = []
        self._headers = {}
        self._hosts = 0
        self._nheaders = 0
        self._body = []

    def on_url(self, part: bytes) -> None:
        self._url.append(part)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._nheaders += 1
        if self._nheaders > MAX_HEADERS:
            raise _HttpError(431, f"more than {MAX_HEADERS} header fields")
        key = name.decode("ascii").lower()  # llhttp admits token characters only
        try:
            text = value.decode("utf-8").strip(" \t")
        except UnicodeDecodeError:
            raise _HttpError(400, "a header value is not valid UTF-8") from None
        if key == "host":
            self._hosts += 1
            if self._hosts > 1:
                raise _HttpError(400, "more than one Host header")  # as h11 and Go's net/http
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        p = self._p
        self._in_head = False
        self.head_bytes = 0
        version = p.get_http_version()
        if version not in ("1.0", "1.1"):
            if version.startswith("0."):
                raise _HttpError(400, "malformed request line")
            raise _HttpError(505, "only HTTP/1.x is supported")
        h = self._headers
        if version == "1.1" and "host" not in h:
            raise _HttpError(400, "missing Host header")
        if "transfer-encoding" in h:
            raise _HttpError(411, "chunked request bodies are not accepted; send Content-Length")
        length = 0
        if "content-length" in h:  # llhttp has checked it is one decimal number
            length = int(h["content-length"])
            if length > MAX_BODY:
                raise _HttpError(413, f"request body over {MAX_BODY} bytes")
        self._body_left = length
        self.continue_wanted = length > 0 and h.get("expect", "").lower() == "100-continue"

    def on_body(self, data: bytes) -> None:
        self._body.append(data)
        self._body_left -= len(data)

    def on_message_complete(self) -> None:
        p = self._p
        target = b"".join(self._url).decode("ascii")  # llhttp admits no byte above 0x7e in a target
        if not target.startswith("/"):
            if target == "*":
                raise _HttpError(400, "malformed request target")
            scheme, sep, rest = target.partition("://")
            if not sep or scheme.lower() not in ("http", "https"):
                raise _HttpError(400, "malformed request target")
            slash = rest.find("/")
            target = rest[slash:] if slash >= 0 else "/"
        path, _, query = target.partition("?")
        req = Request(p.get_method().decode("ascii"), path, query, p.get_http_version(), self._headers,
                      b"".join(self._body))
        self._ready.append((req, p.should_keep_alive()))
        self._in_head = True
        self.head_bytes = 0
        self._body_left = 0
        self.continue_wanted = False


def response_bytes(
    req: Request, resp: Response, keep: bool, extra: tuple[tuple[str, str], ...] = ()
) -> bytes:
    connection = None if keep and req.version == "1.1" else ("keep-alive" if keep else "close")
    head = _head(resp, len(resp.body), connection, extra)
    return head if req.method == "HEAD" else head + resp.body


def call_app(app: App, req: Request) -> Response | Awaitable[Response]:
    """``app(req)``; a handler that raises is a 500 and a log line, never an exception out of the server."""
    try:
        return app(req)
    except Exception:
        log.exception("http_handler_failed", method=req.method, path=req.path)
        return Response.text(500, "Internal Server Error\n")


class _Connection(asyncio.Protocol):
    """One client connection: parse, dispatch in order, write, time out.

    It is registered with the server when accepted (a TLS handshake in flight counts), and
    holds one deadline: the request's, from its first byte; the idle one between requests.
    """

    def __init__(self, server: Server, sock: socket.socket, peer: str) -> None:
        self.server = server
        self.loop = server.loop
        self.sock = sock
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.adopting: asyncio.Task[None] | None = None  # the handshake / hand-over until connection_made
        self.parser = RequestParser()
        self.task: asyncio.Task[None] | None = None  # an async handler in flight
        self.served = 0  # requests answered
        self.write_paused = False
        self.read_paused = False
        self.closing = False
        self.idle = False
        self.timer: asyncio.TimerHandle | None = None
        self.deadline: float | None = None
        self.unsent = 0  # bytes of the last answer still queued when the linger timer last looked

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.adopting = None
        if self.closing:  # evicted while the handshake ran
            transport.abort()
            return
        check = self.server.peer_check
        if check is not None:
            sslobj = transport.get_extra_info("ssl_object")
            if sslobj is None or not check(sslobj):
                self.closing = True
                transport.abort()
                return
        if self.deadline is None:
            self._arm(self.server.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._forget(self)
        self.closing = True
        self.deadline = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.parser.close()  # drop what was buffered; an async handler in flight finishes
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.parser.push(data)
        if self.idle:
            self.idle = False
            self._arm(self.server.header_timeout)  # a new request began: its one deadline
        if self.task is None and not self.write_paused:
            self._process()
        elif self.parser.buffered > MAX_HEAD + MAX_BODY and self.transport is not None and not self.read_paused:
            self.read_paused = True  # pipelined requests pile up while a response is pending
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return False  # close our side too; a half-closed client gets no answer to a partial request

    def pause_writing(self) -> None:
        self.write_paused = True
        self._arm(self.server.idle_timeout)  # a client that stops reading is dropped like an idle one

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.task is None and not self.closing:
            self._process()

    # --- requests -------------------------------------------------------------------------------

    def _process(self) -> None:
        """Answer every complete request received, in order, until one needs to wait."""
        answered = False
        while not self.closing and self.task is None and not self.write_paused:
            try:
                item = self.parser.next()
            except _HttpError as exc:
                self._fail(exc.status, str(exc))
                return
            if item is None:
                if self.parser.continue_wanted:
                    self.parser.continue_wanted = False
                    self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
                break
            req, keep = item
            req.peer = self.peer
            answered = True
            self.deadline = None  # no timeout while the handler runs
            self._request_done()
            result = call_app(self.server.app, req)
            if isinstance(result, Response):
                self._respond(req, result, keep)
            else:
                self._wait_for(req, result, keep)
                return
        if self.closing or self.task is not None or self.write_paused:
            return
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()
        if answered:
            self._after_answer()

    def _after_answer(self) -> None:
        if self.parser.pending:
            self._arm(self.server.header_timeout)  # the next request already began
        else:
            self.idle = True
            self._arm(self.server.idle_timeout)

    def _request_done(self) -> None:
        self.served += 1
        if self.served == 1:
            self.server._completed(self)

    def _wait_for(self, req: Request, result: Awaitable[Response], keep: bool) -> None:
        self.task = task = self.loop.create_task(self._await(req, result, keep))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _await(self, req: Request, result: Awaitable[Response], keep: bool) -> None:
        try:
            resp = await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("http_handler_failed", method=req.method, path=req.path)
            resp = Response.text(500, "Internal Server Error\n")
        self.task = None
        if self.closing:
            return
        self._respond(req, resp, keep)
        if not self.closing:
            self._process()
            if not self.closing and self.task is None and not self.write_paused and self.deadline is None:
                self._after_answer()

    def _respond(self, req: Request, resp: Response, keep: bool) -> None:
        self._write(response_bytes(req, resp, keep, self.server.extra_headers))
        if not keep:
            self._close()

    def _fail(self, status: int, message: str) -> None:
        """An error that ends the connection: answer, then close."""
        self.parser.close()
        self._write(_head(Response(status), len(message) + 1, "close", self.server.extra_headers)
                    + message.encode() + b"\n")
        self._close()

    def _write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def _close(self) -> None:
        """Close after the write buffer drains; half-close first so unread client bytes cannot reset the answer."""
        self.closing = True
        self.parser.close()
        t = self.transport
        if t is None or t.is_closing():
            return
        if t.can_write_eof():
            t.write_eof()
            self.unsent = t.get_write_buffer_size()
            self._arm(self.server.linger_timeout)  # wait for the client's FIN, not forever
        else:
            t.close()

    def evict(self) -> None:
        """Make room for a newer connection: close at once, nothing answered."""
        self.closing = True
        self.server._forget(self)
        if self.transport is not None:
            self.transport.abort()
        elif self.adopting is not None:
            self.adopting.cancel()  # a TLS handshake in flight

    @property
    def waiting(self) -> bool:
        """Between requests or inside one that has not arrived whole: nothing in flight for it."""
        return self.task is None and not self.closing and not self.write_paused

    # --- timeouts -------------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        deadline = self.loop.time() + seconds
        self.deadline = deadline
        timer = self.timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        # one timer per connection, moved only forward lazily: re-arming is an assignment
        self.timer = None
        deadline = self.deadline
        if deadline is None:
            return
        if self.loop.time() < deadline:
            self.timer = self.loop.call_at(deadline, self._on_timer)
            return
        self.deadline = None
        t = self.transport
        if t is None:
            self.evict()  # still being handed over: nothing arrived to answer
            return
        if self.closing and 0 < t.get_write_buffer_size() < self.unsent:
            self.unsent = t.get_write_buffer_size()  # a slow reader still taking the last answer
            self._arm(self.server.linger_timeout)
        elif self.closing or self.write_paused:
            t.abort()
        elif self.idle or not self.parser.pending:
            self.closing = True
            t.close()  # nothing of a request arrived: nothing to answer
        else:
            self._fail(408, "request not received in time")


class Server:
    """Listens and dispatches each request to ``app``; ``app`` returns a Response or an awaitable of one.

    The server accepts on its own sockets. Without TLS, a new connection whose first read holds
    a whole request that asks to close (how a scraper without keep-alive asks) is answered and
    closed right in the accept callback, without a transport, a protocol or a timer, which halves
    the CPU such a connection costs. Everything else goes on as an asyncio connection (with TLS
    when ``ssl_context`` is set, read anew for each connection so a reload applies at once).
    """

    loop: asyncio.AbstractEventLoop

    def __init__(
        self,
        app: App,
        *,
        header_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        tls_handshake_timeout: float = 10.0,
        max_connections: int = 512,
        max_incomplete_per_source: int = 64,
        linger_timeout: float = 2.0,
    ) -> None:
        self.app = app
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.tls_handshake_timeout = tls_handshake_timeout
        self.max_connections = max_connections
        self.max_incomplete_per_source = max_incomplete_per_source
        self.linger_timeout = linger_timeout
        self.ssl_context: ssl.SSLContext | None = None
        self.peer_check: Callable[[ssl.SSLObject], bool] | None = None  # e.g. the client's SANs
        self.extra_headers: tuple[tuple[str, str], ...] = ()  # on every answer (web config headers)
        # every registered connection, oldest first (a dict keeps the order)
        self.connections: dict[_Connection, None] = {}
        self.incomplete: dict[str, int] = {}  # per source address: connections without a completed request
        self.tasks: set[asyncio.Task[None]] = set()  # async handlers and adoptions in flight
        self.rejected = 0  # connections answered 503 (the cap reached, nothing to evict)
        self.evicted = 0  # connections closed to make room for a newer one
        self.answered_at_accept = 0  # connections answered and closed in the accept callback
        self._socks: list[socket.socket] = []

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.ssl_context = ssl_context
        infos = await self.loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen = set()
        try:
            for family, kind, proto, _, addr in infos:
                if (family, addr) in seen:
                    continue
                seen.add((family, addr))
                sock = socket.socket(family, kind, proto)
                self._socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(128)
                if hasattr(socket, "TCP_DEFER_ACCEPT"):
                    # Linux hands a connection to accept() once its first bytes arrived (after at most
                    # DEFER_ACCEPT_S without any), as nginx's "deferred": the request is then there for
                    # the accept callback to answer, not one more loop wake-up later.
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_S)
                sock.setblocking(False)
        except OSError:
            for sock in self._socks:
                sock.close()
            self._socks = []
            raise
        for sock in self._socks:
            self.loop.add_reader(sock.fileno(), self._on_accept, sock)

    @property
    def port(self) -> int:
        return int(self._socks[0].getsockname()[1])

    def _on_accept(self, listener: socket.socket) -> None:
        for _ in range(32):  # a burst of connections: some per wake-up, the rest on the next
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENOBUFS...: the connection waits in the backlog
                log.warning("http_accept_failed", error=exc.strerror or str(exc))
                return
            sock.setblocking(False)
            try:
                peer = str(addr[0])
                if self.ssl_context is not None:
                    self._adopt(sock, peer)
                else:
                    self._first_read(sock, peer)
            except Exception:
                log.exception("http_accept_failed")
                sock.close()

    def _first_read(self, sock: socket.socket, peer: str) -> None:
        try:
            data = sock.recv(MAX_HEAD + MAX_BODY)
        except (BlockingIOError, InterruptedError):
            data = b""
        except OSError:
            sock.close()  # reset before a byte arrived: nothing to answer
            return
        parser = RequestParser()
        if data:
            parser.push(data)
            try:
                item = parser.next()
            except _HttpError:
                item = None  # the connection answers the error with the same words as always
            if item is not None and not item[1] and not parser.pending:
                req, _ = item
                req.peer = peer
                result = call_app(self.app, req)
                parser.close()
                if not isinstance(result, Response):
                    self._adopt(sock, peer, awaiting=(req, result))
                    return
                out = response_bytes(req, result, False, self.extra_headers)
                try:
                    sent = sock.send(out)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    sock.close()  # the client went away: nothing left to answer
                    return
                if sent < len(out):
                    self._adopt(sock, peer, unsent=out[sent:])
                    return
                self.answered_at_accept += 1
                sock.close()  # the whole request was read: closing cannot reset the answer
                return
            parser.close()
            parser = RequestParser()  # the connection parses from the start again
            parser.push(data)
        self._adopt(sock, peer, parser=parser)

    # --- the connection table -------------------------------------------------------------------

    def _register(self, conn: _Connection) -> bool:
        """Make room for ``conn`` if needed and add it; False when nothing could be closed for it."""
        if self.incomplete.get(conn.peer, 0) >= self.max_incomplete_per_source:
            victim = next((c for c in self.connections if c.peer == conn.peer and c.served == 0 and c.waiting), None)
            if victim is not None:
                self.evicted += 1
                victim.evict()
        if len(self.connections) >= self.max_connections:
            victim = next((c for c in self.connections if c.served == 0 and c.waiting), None)
            if victim is None:
                victim = next((c for c in self.connections if c.waiting), None)
            if victim is None:
                self.rejected += 1
                return False
            self.evicted += 1
            victim.evict()
        self.connections[conn] = None
        self.incomplete[conn.peer] = self.incomplete.get(conn.peer, 0) + 1
        return True

    def _completed(self, conn: _Connection) -> None:
        if conn in self.connections:
            self._uncount(conn.peer)

    def _forget(self, conn: _Connection) -> None:
        if self.connections.pop(conn, 0) is None and conn.served == 0:
            self._uncount(conn.peer)

    def _uncount(self, peer: str) -> None:
        n = self.incomplete.get(peer, 0) - 1
        if n > 0:
            self.incomplete[peer] = n
        else:
            self.incomplete.pop(peer, None)

    def _adopt(
        self, sock: socket.socket, peer: str, parser: RequestParser | None = None, unsent: bytes = b"",
        awaiting: tuple[Request, Awaitable[Response]] | None = None,
    ) -> None:
        """Hand a socket to an asyncio connection: with bytes read, an answer to finish, or a handler to await."""
        conn = _Connection(self, sock, peer)
        if parser is not None:
            conn.parser = parser
        if unsent or awaiting is not None:
            conn.served = 1  # its request is complete: it never counts as incomplete
        if not self._register(conn):
            conn.parser.close()
            if awaiting is not None and isinstance(awaiting[1], Coroutine):
                awaiting[1].close()
            self._refuse(sock)
            return
        if conn.served:
            self._uncount(peer)
        conn._arm(self.header_timeout)  # from accept: a TLS handshake counts toward the first request
        ctx = self.ssl_context

        async def adopt() -> None:
            try:
                if ctx is not None:
                    await self.loop.connect_accepted_socket(
                        lambda: conn, sock, ssl=ctx, ssl_handshake_timeout=self.tls_handshake_timeout)
                else:
                    await self.loop.connect_accepted_socket(lambda: conn, sock)
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError, asyncio.CancelledError):
                self._forget(conn)
                if conn.timer is not None:
                    conn.timer.cancel()
                conn.parser.close()
                sock.close()
                return
            if conn.closing:
                return
            if unsent:
                conn._write(unsent)
                conn._close()
            elif awaiting is not None:
                conn.deadline = None
                conn._wait_for(awaiting[0], awaiting[1], False)
            elif conn.parser.buffered:
                conn._process()

        task = self.loop.create_task(adopt())
        conn.adopting = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _refuse(self, sock: socket.socket) -> None:
        """503 to a connection the cap has no room for (plain only; a TLS client is closed unanswered)."""
        if self.ssl_context is None:
            msg = b"too many open connections\n"
            with contextlib.suppress(OSError):
                sock.send(_head(Response(503), len(msg), "close") + msg)
        sock.close()

    async def stop(self) -> None:
        for sock in self._socks:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self._socks = []
        for conn in list(self.connections):
            conn.evict()
        for task in list(self.tasks):
            task.cancel()
