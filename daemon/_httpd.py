"""A small HTTP/1.1 server on ``asyncio.Protocol`` for the daemon's few fixed routes.

Keep-alive, HTTP/1.0, HEAD, pipelining (answered in order), size limits, header/idle/TLS
handshake timeouts and a connection cap, without a web framework: aiohttp.web costs ~11 MiB
RSS to import and ~300 us more CPU per new connection than this does.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass

import structlog

__all__ = ["MAX_BODY", "MAX_HEAD", "MAX_HEADERS", "Request", "Response", "Server"]

log = structlog.get_logger("mevwatch.http")

MAX_HEAD = 8192  # request line + headers, bytes
MAX_HEADERS = 100
MAX_BODY = 64 * 1024
DEFER_ACCEPT_S = 1  # seconds the kernel holds a connection that has sent nothing yet (TCP_DEFER_ACCEPT)

_REASONS = {
    100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
    503: "Service Unavailable", 505: "HTTP Version Not Supported",
}
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rf"({_TOKEN}) ([^\x00-\x20\x7f]+) HTTP/(\d)\.(\d)")
_HEADER_NAME = re.compile(_TOKEN)
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters other than HTAB
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


def _head(resp: Response, length: int, connection: str | None) -> bytes:
    lines = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}\r\n"
             f"Content-Type: {resp.content_type}\r\nContent-Length: {length}\r\nDate: {_http_date()}\r\n"]
    lines.extend(f"{k}: {v}\r\n" for k, v in resp.headers)
    if connection is not None:
        lines.append(f"Connection: {connection}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def parse_head(head: bytes) -> Request:
    """A request line and headers (without the blank line) -> Request; _HttpError on anything malformed."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise _HttpError(400, "request head is not valid UTF-8") from None
    lines = text.split("\n")
    if len(lines) - 1 > MAX_HEADERS:
        raise _HttpError(431, f"more than {MAX_HEADERS} header fields")
    first = lines[0][:-1] if lines[0].endswith("\r") else lines[0]
    m = _REQUEST_LINE.fullmatch(first)
    if m is None:
        raise _HttpError(400, "malformed request line")
    method, target, major, minor = m.groups()
    if major != "1":
        raise _HttpError(505, "only HTTP/1.x is supported")
    version = "1.0" if minor == "0" else "1.1"
    if not target.startswith("/"):
        scheme, sep, rest = target.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            raise _HttpError(400, "malformed request target")
        slash = rest.find("/")
        target = rest[slash:] if slash >= 0 else "/"
    path, _, query = target.partition("?")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        line = raw[:-1] if raw.endswith("\r") else raw
        name, sep, value = line.partition(":")
        if not sep or _HEADER_NAME.fullmatch(name) is None:  # also rejects obs-fold and "name :"
            raise _HttpError(400, "malformed header field")
        if _BAD_VALUE.search(value) is not None:
            raise _HttpError(400, "control character in a header value")
        name = name.lower()
        value = value.strip(" \t")
        if name in headers:
            if name == "content-length" and headers[name] != value:
                raise _HttpError(400, "conflicting Content-Length")
            if name in ("content-length", "host"):
                continue
            value = f"{headers[name]}, {value}"
        headers[name] = value
    if version == "1.1" and "host" not in headers:
        raise _HttpError(400, "missing Host header")
    return Request(method, path, query, version, headers)


def split_head(buf: bytes) -> tuple[Request, int, bool, bytes] | None:
    """(request, body length, keep-alive, the bytes after the head) once ``buf`` holds a whole
    request head, None while it does not; _HttpError on anything malformed or over a limit."""
    if buf[:1] in (b"\r", b"\n"):  # tolerate blank lines before a request line
        buf = buf.lstrip(b"\r\n")
    crlf, lf = buf.find(b"\r\n\r\n"), buf.find(b"\n\n")
    if lf >= 0 and (crlf < 0 or lf < crlf):
        end, skip = lf, 2
    elif crlf >= 0:
        end, skip = crlf, 4
    else:
        if len(buf) > MAX_HEAD:
            raise _HttpError(431, f"request head over {MAX_HEAD} bytes")
        return None
    if end > MAX_HEAD:
        raise _HttpError(431, f"request head over {MAX_HEAD} bytes")
    req = parse_head(buf[:end])
    h = req.headers
    if "transfer-encoding" in h:
        raise _HttpError(411, "chunked request bodies are not accepted; send Content-Length")
    length = 0
    if "content-length" in h:
        cl = h["content-length"]
        if not cl.isdigit() or not cl.isascii():
            raise _HttpError(400, "malformed Content-Length")
        length = int(cl) if len(cl) < 12 else MAX_BODY + 1
        if length > MAX_BODY:
            raise _HttpError(413, f"request body over {MAX_BODY} bytes")
    tokens = {t.strip().lower() for t in h.get("connection", "").split(",")}
    keep = "keep-alive" in tokens if req.version == "1.0" else "close" not in tokens
    return req, length, keep, buf[end + skip:]


def response_bytes(req: Request, resp: Response, keep: bool) -> bytes:
    connection = None if keep and req.version == "1.1" else ("keep-alive" if keep else "close")
    head = _head(resp, len(resp.body), connection)
    return head if req.method == "HEAD" else head + resp.body


def call_app(app: App, req: Request) -> Response | Awaitable[Response]:
    """``app(req)``; a handler that raises is a 500 and a log line, never an exception out of the server."""
    try:
        return app(req)
    except Exception:
        log.exception("http_handler_failed", method=req.method, path=req.path)
        return Response.text(500, "Internal Server Error\n")


class _Connection(asyncio.Protocol):
    """One client connection: parse, dispatch in order, write, time out."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.pending: tuple[Request, int, bool] | None = None  # a parsed head waiting for its body
        self.task: asyncio.Task[None] | None = None  # an async handler in flight
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
        conns = self.server.connections
        if len(conns) >= self.server.max_connections:
            self.server.rejected += 1
            self._fail(503, "too many open connections")
            return
        conns.add(self)
        self._arm(self.server.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.deadline = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.buf = b""  # an async handler in flight finishes (a reload is not abandoned); its answer is dropped
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.buf = self.buf + data if self.buf else data
        if self.idle:
            self.idle = False
            self._arm(self.server.header_timeout)
        if self.task is None and not self.write_paused:
            self._process()
        elif len(self.buf) > MAX_HEAD + MAX_BODY and self.transport is not None and not self.read_paused:
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
        """Answer every complete request in the buffer, in order, until one needs to wait."""
        while not self.closing and self.task is None and not self.write_paused:
            try:
                item = self._next_request()
            except _HttpError as exc:
                self._fail(exc.status, str(exc))
                return
            if item is None:
                break
            req, keep = item
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
        if self.buf or self.pending is not None:
            self._arm(self.server.header_timeout)
        else:
            self.idle = True
            self._arm(self.server.idle_timeout)

    def _next_request(self) -> tuple[Request, bool] | None:
        if self.pending is None:
            head = split_head(self.buf)
            if head is None:
                return None
            req, length, keep, self.buf = head
            if length and len(self.buf) < length and req.headers.get("expect", "").lower() == "100-continue":
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.pending = (req, length, keep)
        req, length, keep = self.pending
        if len(self.buf) < length:
            return None
        self.pending = None
        if length:
            req.body, self.buf = self.buf[:length], self.buf[length:]
        self.deadline = None  # no timeout while the handler runs
        return req, keep

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

    def _respond(self, req: Request, resp: Response, keep: bool) -> None:
        self._write(response_bytes(req, resp, keep))
        if not keep:
            self._close()

    def _fail(self, status: int, message: str) -> None:
        """An error that ends the connection: answer, then close."""
        self.pending = None
        self.buf = b""
        self._write(_head(Response(status), len(message) + 1, "close") + message.encode() + b"\n")
        self._close()

    def _write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def _close(self) -> None:
        """Close after the write buffer drains; half-close first so unread client bytes cannot reset the answer."""
        self.closing = True
        self.buf = b""
        t = self.transport
        if t is None or t.is_closing():
            return
        if t.can_write_eof():
            t.write_eof()
            self.unsent = t.get_write_buffer_size()
            self._arm(self.server.linger_timeout)  # wait for the client's FIN, not forever
        else:
            t.close()

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
        t = self.transport
        if deadline is None or t is None:
            return
        if self.loop.time() < deadline:
            self.timer = self.loop.call_at(deadline, self._on_timer)
            return
        self.deadline = None
        if self.closing and 0 < t.get_write_buffer_size() < self.unsent:
            self.unsent = t.get_write_buffer_size()  # a slow reader still taking the last answer
            self._arm(self.server.linger_timeout)
        elif self.closing or self.write_paused:
            t.abort()
        elif self.idle or (not self.buf and self.pending is None):
            self.closing = True
            t.close()  # nothing of a request arrived: nothing to answer
        else:
            self._fail(408, "request not received in time")


class Server:
    """Listens and dispatches each request to ``app``; ``app`` returns a Response or an awaitable of one.

    Without TLS the server accepts on its own sockets: a new connection whose first read holds a
    whole request that asks to close (how a scraper without keep-alive asks) is answered and
    closed right in the accept callback, without a transport, a protocol or a timer, which halves
    the CPU such a connection costs. Everything else (keep-alive, a partial head, a body, an answer
    larger than the socket takes at once) goes on as an asyncio connection with its timeouts.
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
        linger_timeout: float = 2.0,
    ) -> None:
        self.app = app
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.tls_handshake_timeout = tls_handshake_timeout
        self.max_connections = max_connections
        self.linger_timeout = linger_timeout
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # async handlers and adoptions in flight
        self.rejected = 0  # connections answered 503 over max_connections
        self.answered_at_accept = 0  # connections answered and closed in the accept callback
        self._server: asyncio.Server | None = None
        self._socks: list[socket.socket] = []

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        if ssl_context is not None:
            self._server = await self.loop.create_server(
                lambda: _Connection(self), host, port, ssl=ssl_context, reuse_address=True, backlog=128,
                ssl_handshake_timeout=self.tls_handshake_timeout,
            )
            return
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
        if self._socks:
            return int(self._socks[0].getsockname()[1])
        assert self._server is not None
        assert self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    def _on_accept(self, listener: socket.socket) -> None:
        for _ in range(32):  # a burst of connections: some per wake-up, the rest on the next
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENOBUFS...: the connection waits in the backlog
                log.warning("http_accept_failed", error=exc.strerror or str(exc))
                return
            sock.setblocking(False)
            try:
                self._first_read(sock)
            except Exception:
                log.exception("http_accept_failed")
                sock.close()

    def _first_read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(MAX_HEAD + MAX_BODY)
        except (BlockingIOError, InterruptedError):
            data = b""
        except OSError:
            sock.close()  # reset before a byte arrived: nothing to answer
            return
        if data and len(self.connections) < self.max_connections:
            try:
                head = split_head(data)
            except _HttpError:
                head = None  # the connection answers the error with the same words as always
            if head is not None:
                req, length, keep, rest = head
                if not keep and not length and not rest:
                    result = call_app(self.app, req)
                    if not isinstance(result, Response):
                        self._adopt(sock, awaiting=(req, result))
                        return
                    out = response_bytes(req, result, keep=False)
                    try:
                        sent = sock.send(out)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    except OSError:
                        sock.close()  # the client went away: nothing left to answer
                        return
                    if sent < len(out):
                        self._adopt(sock, unsent=out[sent:])
                        return
                    self.answered_at_accept += 1
                    sock.close()  # the whole request was read: closing cannot reset the answer
                    return
        self._adopt(sock, data=data)

    def _adopt(
        self, sock: socket.socket, data: bytes = b"", unsent: bytes = b"",
        awaiting: tuple[Request, Awaitable[Response]] | None = None,
    ) -> None:
        """Hand a socket to an asyncio connection: with bytes read, an answer to finish, or a handler to await."""

        async def adopt() -> None:
            try:
                _, conn = await self.loop.connect_accepted_socket(lambda: _Connection(self), sock)
            except OSError:
                sock.close()
                return
            if conn.closing:  # over max_connections: it answered 503
                if awaiting is not None and isinstance(awaiting[1], Coroutine):
                    awaiting[1].close()
                return
            if unsent:
                conn._write(unsent)
                conn._close()
            elif awaiting is not None:
                conn.deadline = None
                conn._wait_for(awaiting[0], awaiting[1], False)
            elif data:
                conn.data_received(data)

        task = self.loop.create_task(adopt())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        for sock in self._socks:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self._socks = []
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
