"""RPC probe cost: mevwatch's JSON-RPC client vs a bare aiohttp POST vs curl; and 200 endpoints every second.

Part 1 starts anvil and sends ``eth_blockNumber`` one call after another with each client, in interleaved
rounds against the same node, and reports the wall time per call (target: mevwatch within 1.2x of bare
aiohttp). Part 2 runs ``mevwatch run`` with one rpc collector probing 200 endpoints (one stub process
listening on 200 ports) every second; the stub records when each probe arrives, and the bench reports the
p99 of (arrival - its one-second tick) and the daemon's CPU (targets: p99 < 50 ms, < 0.5 core).

    .venv/bin/python bench/rpc.py [--probes 2000] [--curl-probes 200] [--endpoints 200] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


def scale(endpoints: int, seconds: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-rpc-"))
    ports = distinct_free_ports(endpoints)
    arrivals_file = tmp / "arrivals.json"
    stub = subprocess.Popen(
        [sys.executable, __file__, "--serve-stub", ",".join(map(str, ports)), str(arrivals_file)],
        stdout=subprocess.DEVNULL, stderr=(tmp / "stub.log").open("wb"),
    )
    for port in ports:
        wait_port(port)
    lines = ["collectors:", "  - rpc:", "      interval: 1s", "      timeout: 900ms", "      endpoints:"]
    lines += [f"        - {{name: ep{i:03d}, url: 'http://127.0.0.1:{p}', timeout: 800ms}}"
              for i, p in enumerate(ports)]
    config = tmp / "mevwatch.yaml"
    config.write_text("\n".join(lines) + "\n")
    web_port = free_port()
    daemon = start(
        [sys.executable, "-m", "mevwatch", "run", "--config", str(config),
         "--web.listen-address", f"127.0.0.1:{web_port}"],
        port=web_port, env={"STATE_DIRECTORY": str(tmp / "state")},
    )
    try:
        time.sleep(3.0)  # past start-up (imports, first run) before measuring
        cpu0, t0 = proc_stats(daemon.pid).cpu_seconds, time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = proc_stats(daemon.pid).cpu_seconds, time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        errors = sum(1 for line in text.splitlines() if line.startswith("mevwatch_rpc_errors_total{"))
    finally:
        stop(daemon)
        stub.terminate()
        stub.wait(10)
    arrivals = [t for _, t in json.loads(arrivals_file.read_text()) if t0 <= t <= t1]
    # The collector's ticks are one second apart from its first run; its phase is the earliest arrival
    # modulo one second within the first tick of the window.
    phase = min(arrivals[: endpoints * 2])
    lateness = [((t - phase) % 1.0) for t in arrivals]
    lateness = [x if x < 0.5 else x - 1.0 for x in lateness]  # an arrival before its tick reads as negative
    ticks = len({round(t - phase) for t in arrivals})
    return {
        "probes": len(arrivals),
        "expected": int(endpoints * (t1 - t0)),
        "ticks": ticks,
        "p50_ms": statistics.median(lateness) * 1000,
        "p99_ms": pct(lateness, 0.99) * 1000,
        "max_ms": max(lateness) * 1000,
        "cpu_cores": (cpu1 - cpu0) / (t1 - t0),
        "error_series": errors,
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

    print(f"\n{args.endpoints} endpoints probed every 1 s for {args.seconds:g} s by `mevwatch run` (one rpc collector)")
    r = scale(args.endpoints, args.seconds)
    print(f"probes received {r['probes']} of {r['expected']} expected over {r['ticks']} ticks; "
          f"error series {r['error_series']}")
    print(f"lateness vs tick: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms (target < 50), "
          f"max {r['max_ms']:.1f} ms")
    print(f"daemon CPU: {r['cpu_cores']:.3f} cores (target < 0.5)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
