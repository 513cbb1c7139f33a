"""RPC probe cost: mevwatch's JSON-RPC client vs a bare aiohttp POST vs curl; and 200 endpoints every second.

Part 1 starts anvil and sends ``eth_blockNumber`` one call after another with each client, in interleaved
rounds against the same node, and reports the wall time per call (target: mevwatch within 1.2x of bare
aiohttp). Part 2 runs ``mevwatch run`` as users run it (HTTP server, alert engine with the default
rules, scraped every 15 s) with one rpc collector probing 200 endpoints (one stub process listening on
200 ports) every second, --runs times; the stub records when each probe arrives, and the bench reports
the p99 of each endpoint's |probe interval - 1 s| (jitter) as the node saw it, the daemon's CPU and its
RSS over the run (goals: < 0.25 core, jitter p99 < 50 ms in every run, RSS flat over a 10-minute run).

    .venv/bin/python bench/rpc.py [--probes 2000] [--curl-probes 200] [--endpoints 200] [--seconds 60] [--runs 3]
    .venv/bin/python bench/rpc.py --skip-overhead --runs 1 --seconds 600     # RSS over 10 minutes
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from _common import (
    REPO,
    cpu_ns,
    free_port,
    load_average,
    machine,
    mevwatch_daemon,
    proc_stats,
    record,
    start,
    stop,
    wait_port,
)

sys.path.insert(0, str(REPO))
from mevwatch.collectors._jsonrpc import Endpoint, JsonRpcClient, parse_quantity

PAYLOAD = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- part 1: per-probe overhead -----------------------------------------------------------------------


def anvil_binary() -> str:
    local = REPO / ".tools" / "node" / "node_modules" / ".bin" / "anvil"
    found = shutil.which("anvil") or (str(local) if local.exists() else None)
    if found is None:
        sys.exit("anvil not found (make test installs it into .tools/node)")
    return found


async def overhead(url: str, probes: int, curl_probes: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"mevwatch": [], "aiohttp": [], "curl": [], "curl_time_total": []}
    client = JsonRpcClient(Endpoint(name="anvil", url=url))
    session = aiohttp.ClientSession()
    body = json.dumps(PAYLOAD)
    curl = shutil.which("curl")

    async def mevwatch_probe() -> None:
        parse_quantity(await client.call("eth_blockNumber"))

    async def bare_probe() -> None:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            int((await resp.json())["result"], 16)

    try:
        for _ in range(200):  # warm both connection pools and the node
            await mevwatch_probe()
            await bare_probe()
        rounds = 10
        for _ in range(rounds):
            for name, probe in (("mevwatch", mevwatch_probe), ("aiohttp", bare_probe)):
                for _ in range(probes // rounds):
                    t0 = time.perf_counter()
                    await probe()
                    times[name].append(time.perf_counter() - t0)
            if curl is not None:
                for _ in range(curl_probes // rounds):
                    t0 = time.perf_counter()
                    out = subprocess.run(  # noqa: ASYNC221 - curl's cost is what is measured here
                        [curl, "-s", "-X", "POST", "-H", "Content-Type: application/json", "-d", body,
                         "-w", "\n%{time_total}", url],
                        capture_output=True, text=True, check=True,
                    ).stdout
                    times["curl"].append(time.perf_counter() - t0)
                    answer, total = out.rsplit("\n", 1)
                    int(json.loads(answer)["result"], 16)
                    times["curl_time_total"].append(float(total))
    finally:
        await client.close()
        await session.close()
    return times


# --- part 2: 200 endpoints every second ---------------------------------------------------------------


_ID = re.compile(rb'"id"\s*:\s*("[^"]*"|-?\d+)')


class _StubNode(asyncio.Protocol):
    """One keep-alive HTTP connection of the stub node: each request is timed when its first bytes
    arrive and answered at once with a canned eth_blockNumber result. No HTTP framework: with one,
    a burst of 200 requests queued ~100 ms in the stub itself and the measured jitter was the stub's."""

    def __init__(self, port: int, arrivals: list[tuple[int, float]]) -> None:
        self.port, self.arrivals, self.buf = port, arrivals, b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.buf:
            self.arrivals.append((self.port, time.monotonic()))
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            m = re.search(rb"content-length:\s*(\d+)", head)
            size = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + size:
                return  # the body is still coming
            body, self.buf = self.buf[end + 4 : end + 4 + size], self.buf[end + 4 + size :]
            rid = _ID.search(body)
            answer = b'{"jsonrpc":"2.0","id":' + (rid.group(1) if rid else b"null") + b',"result":"0x10"}'
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(answer)).encode() + b"\r\n\r\n" + answer)
            if self.buf:
                self.arrivals.append((self.port, time.monotonic()))


async def serve_stub(ports: list[int], out: Path) -> None:
    """The stub node: answers eth_blockNumber on every port and records each arrival (monotonic clock)."""
    arrivals: list[tuple[int, float]] = []
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(lambda p=port: _StubNode(p, arrivals), "127.0.0.1", port)  # type: ignore[misc]
               for port in ports]
    stop_event = asyncio.Event()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop_event.set)
    await stop_event.wait()
    out.write_text(json.dumps(arrivals))  # noqa: ASYNC240 - once, at exit
    for server in servers:
        server.close()


def distinct_free_ports(n: int) -> list[int]:
    """n free ports, all different: each socket stays bound until every port is picked."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def start_stub(endpoints: int) -> tuple[list[int], subprocess.Popen[bytes], Path]:
    """The stub node in its own process, listening on ``endpoints`` ports; it writes arrivals on SIGTERM."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-rpc-"))
    ports = distinct_free_ports(endpoints)
    arrivals_file = tmp / "arrivals.json"
    stub = subprocess.Popen(
        [sys.executable, __file__, "--serve-stub", ",".join(map(str, ports)), str(arrivals_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for port in ports:
        wait_port(port)
    return ports, stub, arrivals_file


def scale(ports: list[int], seconds: float, arrivals_file: Path) -> dict[str, Any]:
    """``mevwatch run`` (HTTP server, alert engine with the default rules) with one rpc collector over
    ``ports`` at 1 s, scraped every 15 s as Prometheus would; CPU and RSS of the daemon process, the
    probe times as the stub node saw them."""
    lines = ["collectors:", "  - rpc:", "      interval: 1s", "      timeout: 900ms", "      endpoints:"]
    lines += [f"        - {{name: ep{i:03d}, url: 'http://127.0.0.1:{p}', timeout: 800ms}}"
              for i, p in enumerate(ports)]
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = mevwatch_daemon("\n".join(lines) + "\n", tmp)
        try:
            time.sleep(5.0)  # past the first runs (connections opened) before measuring
            t0, cpu0 = time.monotonic(), cpu_ns(proc.pid)
            rss: list[tuple[float, int]] = []
            next_scrape = t0
            while (now := time.monotonic()) < t0 + seconds:
                if now >= next_scrape:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                        r.read()
                    rss.append((now - t0, proc_stats(proc.pid).rss_bytes))
                    next_scrape += 15.0
                time.sleep(min(1.0, max(t0 + seconds - now, 0.0)))
            t1, cpu1 = time.monotonic(), cpu_ns(proc.pid)
            rss.append((t1 - t0, proc_stats(proc.pid).rss_bytes))
        finally:
            stop(proc)
    return {"window": (t0, t1), "cpu_cores": (cpu1 - cpu0) / 1e9 / (t1 - t0), "rss": rss}


def jitter(arrivals: list[tuple[int, float]], window: tuple[float, float], endpoints: int) -> dict[str, float]:
    """Per endpoint, how far the interval between two probes strays from 1 s, as the node saw it."""
    t0, t1 = window
    by_port: dict[int, list[float]] = {}
    for port, t in arrivals:
        if t0 <= t <= t1:
            by_port.setdefault(port, []).append(t)
    gaps = [abs((b - a) - 1.0) for ts in by_port.values() for a, b in itertools.pairwise(sorted(ts))]
    received = sum(len(ts) for ts in by_port.values())
    return {"received": received, "expected": endpoints * round(t1 - t0), "p50_ms": statistics.median(gaps) * 1e3,
            "p99_ms": pct(gaps, 0.99) * 1e3, "max_ms": max(gaps) * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", type=int, default=2000)
    ap.add_argument("--curl-probes", type=int, default=200)
    ap.add_argument("--endpoints", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60.0, help="each run of part 2 (600: the RSS flatness run)")
    ap.add_argument("--runs", type=int, default=3, help="runs of part 2")
    ap.add_argument("--skip-overhead", action="store_true", help="part 2 only")
    ap.add_argument("--growth", default="", help="endpoint counts for the growth table, one 30 s run each (10,50,200)")
    ap.add_argument("--serve-stub", nargs=2, metavar=("PORTS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_stub:
        asyncio.run(serve_stub([int(p) for p in args.serve_stub[0].split(",")], Path(args.serve_stub[1])))
        return

    print(f"machine: {machine()}; load average {load_average()}")
    if not args.skip_overhead:
        overhead_part(args)
    scale_part(args)
    if args.growth:
        growth_part([int(n) for n in args.growth.split(",")])


def overhead_part(args: argparse.Namespace) -> None:
    port = free_port()
    anvil = start([anvil_binary(), "--host", "127.0.0.1", "--port", str(port)], port=port)
    try:
        times = asyncio.run(overhead(f"http://127.0.0.1:{port}", args.probes, args.curl_probes))
    finally:
        stop(anvil)
    print(f"\nper-probe wall time, eth_blockNumber against anvil ({args.probes} calls each, interleaved rounds)")
    print(f"{'client':<26}{'mean ms':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for name, label in (("mevwatch", "mevwatch JsonRpcClient"), ("aiohttp", "bare aiohttp POST"),
                        ("curl", "curl (process per call)"), ("curl_time_total", "curl %{time_total}")):
        v = times[name]
        if v:
            print(f"{label:<26}{statistics.fmean(v) * 1000:>9.3f}{pct(v, 0.5) * 1000:>9.3f}{pct(v, 0.99) * 1000:>9.3f}")
    ratio_mean = statistics.fmean(times["mevwatch"]) / statistics.fmean(times["aiohttp"])
    ratio_p50 = pct(times["mevwatch"], 0.5) / pct(times["aiohttp"], 0.5)
    print(f"mevwatch / bare aiohttp: mean {ratio_mean:.2f}x, p50 {ratio_p50:.2f}x (target <= 1.2x)")
    record("rpc probe wall time p50 vs a bare aiohttp POST", mevwatch=pct(times["mevwatch"], 0.5) * 1e3, unit="ms",
           anchor_name="aiohttp", anchor=pct(times["aiohttp"], 0.5) * 1e3, goal="<= 1.2x", met=ratio_p50 <= 1.2)


def growth_part(counts: list[int]) -> None:
    """The daemon's CPU and RSS against the number of endpoints probed every second."""
    print("\ngrowth: one 30 s run per endpoint count")
    for n in counts:
        ports, stub, arrivals_file = start_stub(n)
        try:
            r = scale(ports, 30.0, arrivals_file)
        finally:
            stub.terminate()
            stub.wait(10)
        j = jitter([(p, t) for p, t in json.loads(arrivals_file.read_text())], r["window"], n)
        shutil.rmtree(arrivals_file.parent, ignore_errors=True)
        print(f"{n:>5} endpoints: CPU {r['cpu_cores']:.3f} cores, RSS {r['rss'][-1][1] / 2**20:.1f} MiB, jitter p99 "
              f"{j['p99_ms']:.1f} ms, probes {j['received']}/{j['expected']}; load average {load_average()}")
        record(f"rpc daemon CPU, {n} endpoints at 1 s", mevwatch=r["cpu_cores"], unit="cores")


def scale_part(args: argparse.Namespace) -> None:

    print(f"\n{args.endpoints} endpoints probed every 1 s for {args.seconds:g} s, {args.runs} runs: `mevwatch run` "
          "(HTTP server, alert engine) with one rpc collector, scraped every 15 s; stub node in another process")
    runs = []
    for i in range(args.runs):
        ports, stub, arrivals_file = start_stub(args.endpoints)
        try:
            r = scale(ports, args.seconds, arrivals_file)
        finally:
            stub.terminate()
            stub.wait(10)
        j = jitter([(p, t) for p, t in json.loads(arrivals_file.read_text())], r["window"], args.endpoints)
        shutil.rmtree(arrivals_file.parent, ignore_errors=True)
        first = next((b for t, b in r["rss"] if t >= 60.0), r["rss"][0][1])
        last = r["rss"][-1][1]
        runs.append({**r, **j, "rss_first": first, "rss_last": last})
        print(f"run {i + 1}: load average {load_average()}; probes received {j['received']} (expected "
              f"{j['expected']}); jitter |interval - 1 s| p50 {j['p50_ms']:.1f} ms, p99 {j['p99_ms']:.1f} ms, "
              f"max {j['max_ms']:.1f} ms; CPU {r['cpu_cores']:.3f} cores; RSS {first / 2**20:.1f} MiB at "
              f"{'1 min' if r['rss'][-1][0] >= 60 else 'start'} -> {last / 2**20:.1f} MiB at the end")
        if args.seconds >= 300:
            print("  RSS every 15 s (s: MiB): " + ", ".join(f"{t:.0f}: {b / 2**20:.1f}" for t, b in r["rss"]))
    worst = max(r["p99_ms"] for r in runs)
    record(f"rpc {args.endpoints} endpoints at 1 s: CPU of the daemon (median of {args.runs})",
           mevwatch=statistics.median(r["cpu_cores"] for r in runs), unit="cores", goal="< 0.25 core",
           met=statistics.median(r["cpu_cores"] for r in runs) < 0.25)
    record(f"rpc {args.endpoints} endpoints at 1 s: worst probe jitter p99 of {args.runs} runs", mevwatch=worst,
           unit="ms", goal="< 50 ms in every run", met=worst < 50)
    if args.seconds >= 300:
        growth = max((r["rss_last"] - r["rss_first"]) / r["rss_first"] for r in runs) * 100
        record(f"rpc {args.endpoints} endpoints: RSS growth from 1 min to {args.seconds / 60:g} min", mevwatch=growth,
               unit="%", goal="flat (< 5 %)", met=growth < 5)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
