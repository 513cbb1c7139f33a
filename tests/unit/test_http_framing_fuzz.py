"""Differential fuzzing of request framing: whatever mevwatch's parser accepts, h11 and llhttp accept
too, with the same requests (method, target, body) in the same order. Malformed heads (duplicate Host,
a stray CR, non-ASCII targets, obs-fold), Content-Length / Transfer-Encoding games and pipelining,
plus seeded random byte mutations; the count is bounded (about a second)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import h11
import httptools
import pytest

from mevwatch.daemon._httpd import RequestParser, _HttpError

Framed = tuple[str, str, bytes]  # method, target, body


@dataclass
class Result:
    requests: list[Framed]
    error: bool  # stopped on a malformed request


def ours(data: bytes) -> Result:
    parser = RequestParser()
    parser.push(data)
    out: list[Framed] = []
    try:
        while (item := parser.next()) is not None:
            req, keep = item
            out.append((req.method, req.path + (f"?{req.query}" if req.query else ""), req.body))
            if not keep:
                break
    except _HttpError:
        return Result(out, True)
    finally:
        parser.close()
    return Result(out, False)


class _Collect:
    """llhttp's callbacks: each request's method, target and body."""

    def __init__(self) -> None:
        self.parser: httptools.HttpRequestParser | None = None
        self.url = b""
        self.body = b""
        self.done: list[Framed] = []

    def on_message_begin(self) -> None:
        self.url, self.body = b"", b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.parser is not None
        self.done.append((self.parser.get_method().decode(), self.url.decode("latin-1"), self.body))


def llhttp(data: bytes) -> Result:
    cb = _Collect()
    cb.parser = p = httptools.HttpRequestParser(cb)
    error = False
    try:
        p.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        error = True
    return Result(cb.done, error)


def h11_frames(data: bytes, tolerant: bool = False) -> Result:
    """h11's requests; ``tolerant``: each request read as RFC 9112 lets a server read it, where h11 is
    stricter: blank lines before a request line are ignored (2.2) and its separators may be runs of
    spaces (3)."""

    def connection(rest: bytes) -> h11.Connection:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(rfc_tolerant(rest) if tolerant else rest)
        conn.receive_data(b"")  # the end of the stream: a partial request is an error, not "need data"
        return conn

    conn = connection(data)
    out: list[Framed] = []
    method, target, body = "", "", b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                method, target, body = event.method.decode(), event.target.decode("latin-1"), b""
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                out.append((method, target, body))
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
                if tolerant:
                    conn = connection(conn.trailing_data[0])
            else:  # NEED_DATA, PAUSED, ConnectionClosed
                break
    except (h11.RemoteProtocolError, h11.LocalProtocolError):
        return Result(out, True)
    return Result(out, False)


def rfc_tolerant(data: bytes) -> bytes:
    """Blank lines before the request line dropped, and runs of spaces in it made one."""
    data = data.lstrip(b"\r\n")
    line, sep, rest = data.partition(b"\r\n")
    return re.sub(rb" +", b" ", line.strip(b" ")) + sep + rest


# --- inputs -----------------------------------------------------------------------------------------

BASE = [
    b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n",
    b"GET /-/healthy?x=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"POST /-/reload HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody",
    b"GET / HTTP/1.0\r\n\r\n",
    b"HEAD /metrics HTTP/1.1\r\nHost: t\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
]

CASES = [  # the shapes the issue names, each also followed by a pipelined request
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # duplicate Host
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n",  # a stray CR before the blank line
    b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",  # a stray CR inside the head
    "GET /é HTTP/1.1\r\nHost: a\r\n\r\n".encode(),  # a non-ASCII target
    b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  3 \r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length\r\n : 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",  # bare LF
    b"GET / HTTP/1.1\r\nHost: a\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHo\x00st: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\n: empty\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.10\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
]

ALPHABET = [b"\r", b"\n", b" ", b"\t", b":", b"\x00", b"\x80", b"\xff", b"a", b"0", b"/", b",", b"\r\n"]


def mutations(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        first = bytearray(rng.choice(BASE) if rng.random() < 0.7 else rng.choice(CASES))
        for _ in range(rng.choice((0, 0, 1, 1, 1, 2, 3))):
            pos = rng.randrange(len(first) + 1)
            op = rng.random()
            if op < 0.4:
                first[pos:pos] = rng.choice(ALPHABET)
            elif op < 0.7 and pos < len(first):
                del first[pos]
            elif pos < len(first):
                first[pos:pos + 1] = rng.choice(ALPHABET)
        tail = b"".join(rng.choice(BASE) for _ in range(rng.randint(0, 2)))  # pipelined after it
        out.append(bytes(first) + tail)
    return out


INPUTS = [c + tail for c in CASES for tail in (b"", BASE[0])] + mutations(seed=14, count=3000)


def test_the_fuzz_inputs_reach_both_outcomes() -> None:
    results = [ours(data) for data in INPUTS]
    assert sum(r.error for r in results) > 1000  # malformed requests are reached...
    assert sum(len(r.requests) > 1 for r in results) > 300  # ...and pipelined ones accepted


@pytest.mark.parametrize("chunk", range(6))
def test_what_mevwatch_accepts_h11_and_llhttp_frame_the_same(chunk: int) -> None:
    for data in INPUTS[chunk::6]:
        got = ours(data)
        if not got.requests:
            continue
        n = len(got.requests)
        ref = llhttp(data)
        assert ref.requests[:n] == got.requests, data
        h = h11_frames(data)
        if h.requests[:n] != got.requests:
            h = h11_frames(data, tolerant=True)
        assert h.requests[:n] == got.requests, data


@pytest.mark.parametrize("data", [*CASES[:6], CASES[7], CASES[9]],
                         ids=["dup-host", "cr-before-blank", "stray-cr", "non-ascii", "del", "obs-fold",
                              "cl-and-te", "two-cl"])
def test_the_named_shapes_are_refused(data: bytes) -> None:
    assert ours(data) == Result([], True)
