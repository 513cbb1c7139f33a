"""Fleet capacity: series per host with the default config, and what each host costs one Prometheus.

1. mevwatch runs on the embedded default config (every default collector, the default rules); its /metrics
   is read twice, 3 s apart: the samples of one scrape are the series one host adds to Prometheus.
2. A simulated fleet: one loopback server answers every target with those two scrapes in turn (so values
   change as on a live host), and a real Prometheus scrapes N such targets (distinct `host` labels, the
   shipped relabelling) every --interval seconds, for N in --hosts. Its CPU (schedstat) over a window and
   its resident memory once the head holds every series give the cost per host; the figures at
   several N show whether it grows linearly, which is what the extrapolation in docs/fleet.md assumes.
Usage: python bench/fleet_capacity.py [--hosts 10,40,80] [--interval 1] [--window 20]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml
from _common import REPO, cpu_ns, free_port, load_average, machine, mevwatch_daemon, proc_stats, record, start, stop
from aiohttp import web


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return bytes(resp.read())


def _samples(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def _query(port: int, expr: str) -> float:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    result = json.loads(_get(url))["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def _own_metric(port: int, name: str) -> float:
    """A sample of Prometheus' own /metrics (it does not scrape itself here)."""
    for line in _get(f"http://127.0.0.1:{port}/metrics").decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def capture(tmp: Path) -> tuple[bytes, bytes]:
    """Two scrapes of mevwatch on its default config, 3 s apart, after its first collection round."""
    proc, port = mevwatch_daemon(None, tmp / "host")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2).status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        time.sleep(3)
        first = _get(f"http://127.0.0.1:{port}/metrics")
        time.sleep(3)
        return first, _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        stop(proc)


async def serve(bodies: tuple[bytes, bytes], port: int) -> web.AppRunner:
    turns = itertools.cycle(bodies)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=next(turns), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def prometheus_config(hosts: int, target: str, interval: float) -> str:
    shipped = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = shipped["scrape_configs"][0]
    return yaml.safe_dump({
        "global": {"scrape_interval": f"{interval:g}s", "evaluation_interval": "1m"},
        "scrape_configs": [{
            "job_name": "mevwatch", "scrape_timeout": f"{interval:g}s",
            "static_configs": [{"targets": [target], "labels": {"host": f"sim-{i:04d}"}} for i in range(hosts)],
            "metric_relabel_configs": job["metric_relabel_configs"],
        }],
    })


async def measure(tmp: Path, hosts: int, target: str, interval: float, window: float,
                  series_per_host: int) -> dict[str, float]:
    port = free_port()
    (tmp / f"p{hosts}.yml").write_text(prometheus_config(hosts, target, interval))
    data = tmp / f"p{hosts}-data"
    proc = start([shutil.which("prometheus") or "prometheus", f"--config.file={tmp / f'p{hosts}.yml'}",
                  f"--storage.tsdb.path={data}", f"--web.listen-address=127.0.0.1:{port}", "--log.level=error"],
                 port)
    try:
        expected = hosts * series_per_host
        deadline = time.monotonic() + 60
        head = 0.0
        while time.monotonic() < deadline:  # every target scraped: the head holds every series
            await asyncio.sleep(1)
            try:
                head = await asyncio.to_thread(_own_metric, port, "prometheus_tsdb_head_series")
            except OSError:
                continue
            if head >= expected * 0.98:
                break
        await asyncio.sleep(2 * interval)
        scrapes0 = await asyncio.to_thread(_query, port, 'count(up{job="mevwatch"} == 1)')
        cpu0, t0 = cpu_ns(proc.pid), time.monotonic()
        await asyncio.sleep(window)
        cpu1, t1 = cpu_ns(proc.pid), time.monotonic()
        rss = proc_stats(proc.pid).rss_bytes
        samples = await asyncio.to_thread(_query, port, "sum(scrape_samples_post_metric_relabeling)")
        return {"hosts": hosts, "targets_up": scrapes0, "head_series": head, "samples_per_scrape_round": samples,
                "cpu_cores": (cpu1 - cpu0) / 1e9 / (t1 - t0), "rss_bytes": float(rss)}
    finally:
        stop(proc)
        shutil.rmtree(data, ignore_errors=True)


async def main(host_counts: list[int], interval: float, window: float) -> int:
    print(f"machine: {machine()}; load {load_average()}")
    with tempfile.TemporaryDirectory(prefix="mevwatch-fleet-") as d:
        tmp = Path(d)
        bodies = capture(tmp)
        per_host = [_samples(b.decode()) for b in bodies]
        series = max(per_host)
        print(f"series per host (default config, two scrapes): {per_host}; /metrics {len(bodies[0]):,} bytes")
        record("series per host, default config", mevwatch=series, unit="series")
        port = free_port()
        runner = await serve(bodies, port)
        try:
            rows = [await measure(tmp, n, f"127.0.0.1:{port}", interval, window, series) for n in host_counts]
        finally:
            await runner.cleanup()
    print(f"{'hosts':>6} {'up':>4} {'head series':>12} {'samples/round':>14} {'CPU cores':>10} {'RSS MiB':>9}")
    for r in rows:
        print(f"{r['hosts']:>6.0f} {r['targets_up']:>4.0f} {r['head_series']:>12,.0f} "
              f"{r['samples_per_scrape_round']:>14,.0f} {r['cpu_cores']:>10.3f} {r['rss_bytes'] / 2**20:>9.0f}")
    lo, hi = rows[0], rows[-1]
    dh = hi["hosts"] - lo["hosts"]
    cpu_per_host = (hi["cpu_cores"] - lo["cpu_cores"]) / dh  # at this interval
    cpu_per_scrape = cpu_per_host * interval
    rss_per_host = (hi["rss_bytes"] - lo["rss_bytes"]) / dh
    print(f"marginal cost per host: {cpu_per_scrape * 1000:.2f} ms CPU per scrape "
          f"({cpu_per_scrape / 15 * 1000:.3f} ms/s at the shipped 15 s interval), "
          f"{rss_per_host / 2**20:.2f} MiB resident ({rss_per_host / series:.0f} B per series)")
    record("Prometheus CPU per host scrape", mevwatch=cpu_per_scrape * 1000, unit="ms")
    record("Prometheus memory per host", mevwatch=rss_per_host / 2**20, unit="MiB")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", default="10,40,80", help="simulated fleet sizes, comma separated")
    ap.add_argument("--interval", type=float, default=1.0, help="scrape interval of the simulation, seconds")
    ap.add_argument("--window", type=float, default=20.0, help="CPU measuring window per fleet size, seconds")
    args = ap.parse_args()
    sys.exit(asyncio.run(main([int(x) for x in args.hosts.split(",")], args.interval, args.window)))
