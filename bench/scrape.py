"""Idle CPU at a real scrape interval, and /metrics under 50 scrapers: mevwatch vs prometheus-node-exporter.

Both run on free loopback ports: mevwatch on its embedded default config (or --process-only: the
daemon with its own process collector), node_exporter with its default collectors. Three phases, the
two daemons side by side in each:

1. idle before any load: each scraped every --scrape-interval seconds (15 s, Prometheus' default)
   for --idle seconds; CPU is the sum of the process's threads' time (schedstat), per second;
2. load: 50 concurrent scrapers (wrk, or an aiohttp loop when wrk is missing) on each in turn.
   Not equal work: node_exporter collects on every scrape, mevwatch serves what its collectors
   built at their own intervals; the figures show what a scrape costs each, not who collects faster;
3. idle after the load, as in 1.

Goal: idle CPU of the default config < 0.3 % of a core, before and after load; node_exporter's
figure beside it.
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
import urllib.error
import urllib.request
from pathlib import Path

from _common import cpu_ns, free_port, load_average, machine, mevwatch_daemon, proc_stats, record, start, stop

PROCESS_ONLY = """\
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


def idle(procs: dict[str, tuple[int, int]], seconds: float, scrape_every: float) -> dict[str, float]:
    """CPU (cores) of each process over ``seconds``, each scraped every ``scrape_every`` seconds."""
    before = {n: cpu_ns(pid) for n, (pid, _) in procs.items()}
    t0 = time.monotonic()
    while True:
        for _, port in procs.values():
            _get(port)
        left = t0 + seconds - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(scrape_every, left))
    elapsed = time.monotonic() - t0
    return {n: (cpu_ns(pid) - before[n]) / 1e9 / elapsed for n, (pid, _) in procs.items()}


def wait_ready(port: int, timeout: float = 60.0) -> float:
    """Seconds until mevwatch's /-/ready answers 200 (its first collection round is done)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError("mevwatch not ready")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--idle", type=int, default=120, help="each idle measurement, seconds")
    ap.add_argument("--scrape-interval", type=float, default=15.0, help="scrape period while idle, seconds")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds after start-up before the first idle phase")
    ap.add_argument("--load", type=int, default=15, help="load duration per target, seconds")
    ap.add_argument("--conns", type=int, default=50, help="concurrent scrapers")
    ap.add_argument("--config", help="mevwatch config file (default: the embedded default config)")
    ap.add_argument("--process-only", action="store_true", help="mevwatch with its process collector only")
    args = ap.parse_args()
    node_exporter = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
    what = "process collector only" if args.process_only else (args.config or "embedded default config")
    print(f"machine: {machine()}; load average {load_average()}")
    print(f"mevwatch: {what}; node_exporter: default collectors; idle phases {args.idle}s, "
          f"scraped every {args.scrape_interval:g}s")

    with tempfile.TemporaryDirectory() as tmp:
        config = PROCESS_ONLY if args.process_only else (Path(args.config).read_text() if args.config else None)
        mw, mw_port = mevwatch_daemon(config, tmp)
        ne_port = free_port()
        ne = start([node_exporter, f"--web.listen-address=127.0.0.1:{ne_port}"], ne_port)
        procs = {"mevwatch": (mw.pid, mw_port), "node_exporter": (ne.pid, ne_port)}
        try:
            wait_ready(mw_port)
            time.sleep(args.settle)
            results: dict[str, dict[str, float]] = {n: {} for n in procs}
            for n, cpu in idle(procs, args.idle, args.scrape_interval).items():
                results[n]["idle_before"] = cpu
            print(f"idle before load done, load average {load_average()}")
            for name, (pid, port) in procs.items():
                url = f"http://127.0.0.1:{port}/metrics"
                c0 = cpu_ns(pid)
                p50, p99, rps = load(url, args.load, args.conns)
                results[name].update(p50=p50, p99=p99, rps=rps, load_cpu=(cpu_ns(pid) - c0) / 1e9 / args.load)
            for _, port in procs.values():
                drained(port)
            for n, cpu in idle(procs, args.idle, args.scrape_interval).items():
                results[n]["idle_after"] = cpu
            for n, (pid, port) in procs.items():
                s = proc_stats(pid)
                series = sum(1 for line in _get(port).splitlines() if line and not line.startswith("#"))
                results[n].update(rss=s.rss_bytes, uss=s.uss_bytes, series=series)
        finally:
            stop(mw)
            stop(ne)

    mb = 1024 * 1024
    print(f"load average at the end {load_average()}")
    print(f"{'':15}{'idle before':>12}{'idle after':>11}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'load CPU':>10}"
          f"{'RSS':>9}{'USS':>9}{'series':>8}")
    for n, r in results.items():
        print(f"{n:15}{r['idle_before'] * 100:11.3f}%{r['idle_after'] * 100:10.3f}%{r['p50']:9.2f}{r['p99']:9.2f}"
              f"{r['rps']:9.0f}{r['load_cpu'] * 100:9.1f}%{r['rss'] / mb:7.1f}Mi{r['uss'] / mb:7.1f}Mi"
              f"{int(r['series']):8d}")
    mw_r, ne_r = results["mevwatch"], results["node_exporter"]
    label = "process only" if args.process_only else "default config"
    for phase in ("before", "after"):
        record(f"idle CPU, {label}, scraped every {args.scrape_interval:g}s, {phase} load",
               mevwatch=mw_r[f"idle_{phase}"] * 100, unit="% core", anchor_name="node_exporter",
               anchor=ne_r[f"idle_{phase}"] * 100, goal="< 0.3 %", met=mw_r[f"idle_{phase}"] < 0.003)
    record(f"RSS, {label}", mevwatch=mw_r["rss"] / mb, unit="MiB", anchor_name="node_exporter", anchor=ne_r["rss"] / mb)
    record(f"scrape p99 under {args.conns} scrapers (cached vs collected: not equal work)", mevwatch=mw_r["p99"],
           unit="ms", anchor_name="node_exporter", anchor=ne_r["p99"])
    return 0


def drained(port: int, timeout: float = 60.0) -> None:
    """Wait until a scrape of ``port`` answers again after the load: node_exporter answers 503 while the
    collections wrk's connections started are still running (--web.max-requests), and the idle phase
    after the load measures the process at rest, not that backlog."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _get(port)
            return
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


if __name__ == "__main__":
    sys.exit(main())
