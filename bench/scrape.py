"""/metrics under load and at idle: mevwatch vs prometheus-node-exporter, in one run.

Both run on free loopback ports. 50 concurrent scrapers (wrk, or an aiohttp loop when wrk
is missing) hit each in turn; then both idle for --idle seconds. Prints latency p50/p99,
CPU and RSS of each process, and the ratios. Targets: mevwatch p99 <= node_exporter's,
idle CPU < 0.5 % of a core, RSS < 45 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, free_port, machine, proc_stats, start, stop

DEFAULT_CONFIG = """\
collectors:
  - process: {}
"""


def wrk_latency(url: str, seconds: int, conns: int) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, requests/s) from wrk --latency."""
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, timeout=seconds + 30, check=True).stdout

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            raise RuntimeError(f"no {p}% in wrk output:\n{out}")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return pct("50"), pct("99"), rps


async def _aiohttp_load(url: str, seconds: int, conns: int) -> tuple[float, float, float]:
    import aiohttp

    lat: list[float] = []
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession() as s:
        async def worker() -> None:
            while time.monotonic() < end:
                t0 = time.perf_counter()
                async with s.get(url) as r:
                    await r.read()
                lat.append((time.perf_counter() - t0) * 1000)
        await asyncio.gather(*(worker() for _ in range(conns)))
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99)], len(lat) / seconds


def load(url: str, seconds: int, conns: int) -> tuple[float, float, float]:
    if shutil.which("wrk"):
        return wrk_latency(url, seconds, conns)
    return asyncio.run(_aiohttp_load(url, seconds, conns))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=int, default=60, help="idle measurement, seconds")
    ap.add_argument("--load", type=int, default=15, help="load duration per target, seconds")
    ap.add_argument("--conns", type=int, default=50, help="concurrent scrapers")
    ap.add_argument("--config", help="mevwatch config (default: process collector only)")
    ap.add_argument("--default-config", action="store_true", help="run mevwatch on its embedded default config")
    args = ap.parse_args()
    node_exporter = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(args.config) if args.config else Path(tmp) / "mevwatch.yaml"
        if not args.config:
            cfg.write_text(DEFAULT_CONFIG)
        mw_port, ne_port = free_port(), free_port()
        mw_argv = [str(REPO / ".venv/bin/mevwatch"), "run", "--web.listen-address", f"127.0.0.1:{mw_port}"]
        if not args.default_config:
            mw_argv += ["--config", str(cfg)]
        mw = start(mw_argv, mw_port, env={"STATE_DIRECTORY": f"{tmp}/state"})
        ne = start([node_exporter, f"--web.listen-address=127.0.0.1:{ne_port}"], ne_port)
        try:
            time.sleep(3)  # first collection round
            print(f"machine: {machine()}")
            results = {}
            for name, port, proc in (("mevwatch", mw_port, mw), ("node_exporter", ne_port, ne)):
                url = f"http://127.0.0.1:{port}/metrics"
                before = proc_stats(proc.pid)
                p50, p99, rps = load(url, args.load, args.conns)
                after = proc_stats(proc.pid)
                results[name] = {"p50": p50, "p99": p99, "rps": rps,
                                 "load_cpu": (after.cpu_seconds - before.cpu_seconds) / args.load,
                                 "load_rss": after.rss_bytes}
            idle0 = {n: proc_stats(p.pid) for n, p in (("mevwatch", mw), ("node_exporter", ne))}
            time.sleep(args.idle)
            for n, p in (("mevwatch", mw), ("node_exporter", ne)):
                s = proc_stats(p.pid)
                results[n]["idle_cpu"] = (s.cpu_seconds - idle0[n].cpu_seconds) / args.idle
                results[n]["idle_rss"] = s.rss_bytes
                results[n]["idle_uss"] = s.uss_bytes
            series = {n: sum(1 for line in _get(port).splitlines() if line and not line.startswith("#"))
                      for n, port in (("mevwatch", mw_port), ("node_exporter", ne_port))}
        finally:
            stop(mw)
            stop(ne)

    mb = 1024 * 1024
    print(f"{args.conns} concurrent scrapers for {args.load}s each, then {args.idle}s idle")
    print(f"{'':15}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'load CPU':>10}{'idle CPU':>10}{'idle RSS':>10}"
          f"{'idle USS':>10}{'series':>8}")
    for n, r in results.items():
        print(f"{n:15}{r['p50']:9.2f}{r['p99']:9.2f}{r['rps']:9.0f}{r['load_cpu'] * 100:9.1f}%"
              f"{r['idle_cpu'] * 100:9.2f}%{r['idle_rss'] / mb:8.1f}Mi{r['idle_uss'] / mb:8.1f}Mi{series[n]:8d}")
    mw_r, ne_r = results["mevwatch"], results["node_exporter"]
    print(f"ratio mevwatch/node_exporter: p99 {mw_r['p99'] / ne_r['p99']:.2f}x, p50 {mw_r['p50'] / ne_r['p50']:.2f}x, "
          f"req/s {mw_r['rps'] / ne_r['rps']:.2f}x, idle RSS {mw_r['idle_rss'] / ne_r['idle_rss']:.2f}x")
    ok = mw_r["p99"] <= ne_r["p99"] and mw_r["idle_cpu"] < 0.005 and mw_r["idle_rss"] < 45 * mb
    print("targets (p99 <= node_exporter, idle CPU < 0.5%, RSS < 45 MiB):", "met" if ok else "NOT met")
    return 0


def _get(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


if __name__ == "__main__":
    sys.exit(main())
