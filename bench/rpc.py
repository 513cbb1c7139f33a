"""RPC probe cost: mevwatch's JSON-RPC client vs a bare aiohttp POST vs curl; and 200 endpoints every second.

Part 1 starts anvil and sends ``eth_blockNumber`` one call after another with each client, in interleaved
rounds against the same node, and reports the wall time per call (target: mevwatch within 1.2x of bare
aiohttp). Part 2 runs ``mevwatch run`` with one rpc collector probing 200 endpoints (one stub process
listening on 200 ports) every second; the stub records when each probe arrives, and the bench reports the
p99 of each endpoint's |probe interval - 1 s| (jitter), how long after the tick probes arrive (the
fan-out of 200 requests from one event loop), and the daemon's CPU (targets: jitter p99 < 50 ms, < 0.5 core).

    .venv/bin/python bench/rpc.py [--probes 2000] [--curl-probes 200] [--endpoints 200] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from _common import REPO, free_port, machine, proc_stats, start, stop, wait_port

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


async def serve_stub(ports: list[int], out: Path) -> None:
    """The stub node: answers eth_blockNumber on every port and records each arrival (monotonic clock)."""
    from aiohttp import web

    arrivals: list[tuple[int, float]] = []

    async def handle(request: web.Request) -> web.Response:
        arrivals.append((request.transport.get_extra_info("sockname")[1] if request.transport else 0,
                         time.monotonic()))
        doc = await request.json()
        return web.json_response({"jsonrpc": "2.0", "id": doc.get("id"), "result": "0x10"})

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for port in ports:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop_event.set)
    await stop_event.wait()
    out.write_text(json.dumps(arrivals))  # noqa: ASYNC240 - once, at exit
    await runner.cleanup()


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


async def scale(ports: list[int], seconds: float) -> dict[str, Any]:
    """mevwatch's supervisor running one rpc collector over ``ports``, in this process (the CPU measured)."""
    from mevwatch.collectors import rpc as rpc_collector
    from mevwatch.daemon.config import load_config_text
    from mevwatch.daemon.store import SampleStore
    from mevwatch.daemon.supervisor import Supervisor

    lines = ["collectors:", "  - rpc:", "      interval: 1s", "      timeout: 900ms", "      endpoints:"]
    lines += [f"        - {{name: ep{i:03d}, url: 'http://127.0.0.1:{p}', timeout: 800ms}}"
              for i, p in enumerate(ports)]
    loop = asyncio.get_running_loop()
    # Instrumentation: when each run starts, and when each endpoint's probe call starts (loop clock).
    run_starts: list[float] = []
    sends: dict[str, list[float]] = {}
    original_collect = rpc_collector.RpcCollector.collect
    original_call = rpc_collector.RpcCollector._call

    async def timed_collect(self: Any) -> Any:
        run_starts.append(loop.time())
        return await original_collect(self)

    async def timed_call(self: Any, st: Any, method: str) -> Any:
        sends.setdefault(st.endpoint.name, []).append(loop.time())
        return await original_call(self, st, method)

    rpc_collector.RpcCollector.collect = timed_collect  # type: ignore[method-assign]
    rpc_collector.RpcCollector._call = timed_call  # type: ignore[method-assign]
    store = SampleStore()
    sup = Supervisor(load_config_text("\n".join(lines) + "\n", "bench", {}), store)
    first = loop.time()
    await sup.start()
    try:
        await asyncio.sleep(3.0)  # past the first runs (connections opened) before measuring
        cpu0, t0 = proc_stats(os.getpid()).cpu_seconds, loop.time()
        await asyncio.sleep(seconds)
        cpu1, t1 = proc_stats(os.getpid()).cpu_seconds, loop.time()
        status = sup.status[("rpc", "default")]
        errors = sum(status.errors.values())
    finally:
        await sup.shutdown()
    # Scheduling jitter: each run's start after its slot on the fixed-rate 1 s schedule.
    late_runs = [(s - first) % 1.0 for s in run_starts if t0 <= s <= t1]
    # Per endpoint: how far the probe-to-probe interval strays from 1 s, and the fan-out (probe start after
    # its run's slot: 200 requests leave one event loop one after another).
    window = {name: [t for t in ts if t0 <= t <= t1] for name, ts in sends.items()}
    jitter = [abs((b - a) - 1.0) for ts in window.values() for a, b in itertools.pairwise(ts)]
    fan_out = [(t - first) % 1.0 for ts in window.values() for t in ts]
    return {
        "runs": len(late_runs),
        "probes": sum(len(ts) for ts in window.values()),
        "expected": int(len(ports) * round(t1 - t0)),
        "window": (t0, t1),
        "errors": errors,
        "sched_p99_ms": pct(late_runs, 0.99) * 1000,
        "sched_max_ms": max(late_runs) * 1000,
        "jitter_p50_ms": statistics.median(jitter) * 1000,
        "jitter_p99_ms": pct(jitter, 0.99) * 1000,
        "jitter_max_ms": max(jitter) * 1000,
        "fan_p50_ms": statistics.median(fan_out) * 1000,
        "fan_p99_ms": pct(fan_out, 0.99) * 1000,
        "cpu_cores": (cpu1 - cpu0) / (t1 - t0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", type=int, default=2000)
    ap.add_argument("--curl-probes", type=int, default=200)
    ap.add_argument("--endpoints", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--serve-stub", nargs=2, metavar=("PORTS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_stub:
        asyncio.run(serve_stub([int(p) for p in args.serve_stub[0].split(",")], Path(args.serve_stub[1])))
        return

    print(f"machine: {machine()}")
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

    print(f"\n{args.endpoints} endpoints probed every 1 s for {args.seconds:g} s "
          "(mevwatch supervisor + rpc collector in this process, stub node in another)")
    ports, stub, arrivals_file = start_stub(args.endpoints)
    try:
        r = asyncio.run(scale(ports, args.seconds))
    finally:
        stub.terminate()
        stub.wait(10)
    t0, t1 = r["window"]  # the loop clock is time.monotonic, the stub's clock too
    received = sum(1 for _, t in json.loads(arrivals_file.read_text()) if t0 <= t <= t1)
    print(f"runs {r['runs']}, probes sent {r['probes']}, received by the stub {received} "
          f"(expected {r['expected']}), failed runs {r['errors']}")
    print(f"run start after its 1 s slot: p99 {r['sched_p99_ms']:.1f} ms, max {r['sched_max_ms']:.1f} ms")
    print(f"probe interval jitter per endpoint |interval - 1 s|: p50 {r['jitter_p50_ms']:.1f} ms, "
          f"p99 {r['jitter_p99_ms']:.1f} ms (target < 50), max {r['jitter_max_ms']:.1f} ms")
    print(f"probe start after the slot (fan-out of {args.endpoints}): p50 {r['fan_p50_ms']:.1f} ms, "
          f"p99 {r['fan_p99_ms']:.1f} ms")
    print(f"CPU of the mevwatch process: {r['cpu_cores']:.3f} cores (target < 0.5)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
