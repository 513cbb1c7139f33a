"""Which parser frames the daemon's HTTP requests: parse cost per request and scrape latency, in one run.

Parse cost of one Prometheus scrape request (and of ten pipelined ones) with:
- mevwatch's RequestParser (llhttp through httptools, with the checks h11 makes on top),
- httptools alone (llhttp, callbacks collecting the same fields),
- h11 (pure Python),
- the hand-written regex parser mevwatch used before, taken from git history when available.
Then the scrape latency (p50/p99) of a running mevwatch on one keep-alive connection and on a new
connection per request, which is what the parse cost is part of.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h11
import httptools
from _common import REPO, load_average, machine, mevwatch_daemon, record, stop

from mevwatch.daemon._httpd import RequestParser

SCRAPE = (b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9717\r\nUser-Agent: Prometheus/2.53.0\r\n"
          b"Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n"
          b"Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n")
#: the last commit with the hand-written parser (daemon/_httpd.py split_head)
HAND_PARSER_COMMIT = "56ee54f"


def per_call_us(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(5):  # the best of five: the machine is shared
        began = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - began) / n * 1e6)
    return best


def ours(data: bytes) -> int:
    p = RequestParser()
    p.push(data)
    n = 0
    while p.next() is not None:
        n += 1
    p.close()
    return n


class _Fields:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.done += 1


def llhttp(data: bytes) -> int:
    f = _Fields()
    httptools.HttpRequestParser(f).feed_data(data)
    return f.done


def h11_parse(data: bytes) -> int:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    n = 0
    while True:
        event = conn.next_event()
        if isinstance(event, h11.EndOfMessage):
            n += 1
            conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
        elif not isinstance(event, (h11.Request, h11.Data)):
            return n


def hand_parser() -> Callable[[bytes], int] | None:
    """split_head of the regex parser mevwatch had before llhttp, from git history (None outside a clone)."""
    try:
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{HAND_PARSER_COMMIT}:daemon/_httpd.py"],
                                capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(tempfile.mkdtemp()) / "hand_httpd.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("hand_httpd", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["hand_httpd"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    split_head = module.split_head

    def parse(data: bytes) -> int:
        n = 0
        while data and (head := split_head(data)) is not None:
            data = head[3]
            n += 1
        return n

    return parse


def scrape_latency(port: int, requests: int, keep_alive: bool) -> tuple[float, float]:
    """(p50 ms, p99 ms) of /metrics."""
    times = []
    sock = None
    for _ in range(requests):
        began = time.perf_counter()
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(SCRAPE if keep_alive else SCRAPE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        head, _, body = buf.partition(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += sock.recv(65536)
        times.append((time.perf_counter() - began) * 1000)
        if not keep_alive:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="parses per measurement")
    ap.add_argument("--requests", type=int, default=2000, help="scrapes per latency measurement")
    args = ap.parse_args()
    print(f"machine: {machine()}; load average {load_average()}")
    parsers: dict[str, Callable[[bytes], int]] = {"mevwatch (llhttp + checks)": ours, "httptools (llhttp)": llhttp,
                                                  "h11": h11_parse}
    hand = hand_parser()
    if hand is not None:
        parsers[f"hand-written regex ({HAND_PARSER_COMMIT})"] = hand
    one: dict[str, float] = {}
    for name, parse in parsers.items():
        assert parse(SCRAPE) == 1, name
        assert parse(SCRAPE * 10) == 10, name
        one[name] = per_call_us(lambda p=parse: p(SCRAPE), args.n)  # type: ignore[misc]
        ten = per_call_us(lambda p=parse: p(SCRAPE * 10), args.n // 10)  # type: ignore[misc]
        print(f"{name:34} {one[name]:6.2f} us per request, {ten / 10:6.2f} us each of 10 pipelined")
    record("parse one scrape request", mevwatch=one["mevwatch (llhttp + checks)"], unit="us",
           anchor_name="h11", anchor=one["h11"], goal="<= h11", met=one["mevwatch (llhttp + checks)"] <= one["h11"])
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = mevwatch_daemon("collectors:\n  - process: {}\n", tmp)
        try:
            scrape_latency(port, 50, True)  # warm
            for keep in (True, False):
                p50, p99 = scrape_latency(port, args.requests, keep)
                kind = "keep-alive" if keep else "new connection"
                print(f"/metrics over a {kind}: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
                record(f"/metrics p99, {kind}", mevwatch=p99, unit="ms")
        finally:
            stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
