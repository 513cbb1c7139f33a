"""CPU per hour and per collection: mevwatch's memory, filesystems and cpu collectors vs node_exporter, in one run.

At Prometheus' default scrape interval (15 s) by default: what a host pays over an hour, idle
work between scrapes included (mevwatch's heartbeat and alert engine, node_exporter's runtime).

1. Daemons: mevwatch with only memory, filesystems and cpu (interval = the scrape period) and
   prometheus-node-exporter with only meminfo, filesystem, cpufreq, loadavg and stat, each on a
   free loopback port, both scraped --scrapes times at the same period, after WARMUP_SCRAPES that
   are not measured. CPU per collection is each process's time on CPU over the run (the sum of its
   threads' /proc/PID/task/*/schedstat, in ns) divided by the scrapes (node_exporter collects on
   every scrape; mevwatch runs these collectors once per interval on its own schedule, and a
   scrape serves the last values). Wall time per collection is the sum of the per-collector
   durations each exports.
2. In-process: each mevwatch collector's collect() called --calls times here, CPU (all threads)
   and wall per call, to show where mevwatch's time goes.

Goal: mevwatch's CPU per hour at most node_exporter's, at the same 15 s interval.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from _common import REPO, cpu_ns, free_port, load_average, machine, proc_stats, record, start, stop

NE_FLAGS = [
    "--collector.disable-defaults", "--collector.meminfo", "--collector.filesystem", "--collector.cpufreq",
    "--collector.loadavg", "--collector.stat",
]
# The parts of mevwatch's collectors that node_exporter's set also computes: no per-unit cgroups,
# no top-N process scan (the directories and backups kinds have no node_exporter equivalent and are not run).
EQUIVALENT: dict[str, dict[str, Any]] = {
    "memory": {"units": [], "cgroups": [], "top_processes": 0},
    "filesystems": {},
    "cpu": {},
}
DEFAULTS: dict[str, dict[str, Any]] = {"memory": {}, "filesystems": {}, "cpu": {}}
WARMUP_SCRAPES = 6


_kept: dict[int, http.client.HTTPConnection] = {}


def _get(port: int, keep_alive: bool = False) -> tuple[str, float]:
    """One scrape: a new connection each time (urllib), or one kept open per daemon, as Prometheus does."""
    t0 = time.perf_counter()
    if keep_alive:
        conn = _kept.get(port)
        if conn is None:
            conn = _kept[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    else:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            body = r.read().decode()
    return body, time.perf_counter() - t0


def _sum(text: str, metric: str, label: str, values: set[str]) -> float:
    total = 0.0
    rx = re.compile(rf'^{metric}\{{([^}}]*)\}} (\S+)$', re.M)
    for m in rx.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get(label) in values:
            total += float(m.group(2))
    return total


def _series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def daemons(
    scrapes: int, period: float, options: dict[str, dict[str, Any]], alerts: bool = True, keep_alive: bool = False,
) -> dict[str, dict[str, float]]:
    node_exporter = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
    kinds = set(options)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "mevwatch.yaml"
        entries = [{k: {"interval": f"{int(period * 1000)}ms", **v}} for k, v in options.items()]
        doc: dict[str, Any] = {"collectors": entries}
        if not alerts:
            doc["alerts"] = {"enabled": False}
        cfg.write_text(yaml.safe_dump(doc))
        mw_port, ne_port = free_port(), free_port()
        mw = start([str(REPO / ".venv/bin/mevwatch"), "run", "--config", str(cfg),
                    "--web.listen-address", f"127.0.0.1:{mw_port}"], mw_port, env={"STATE_DIRECTORY": f"{tmp}/state"})
        ne = start([node_exporter, f"--web.listen-address=127.0.0.1:{ne_port}", *NE_FLAGS], ne_port)
        try:
            time.sleep(max(2.0, 3 * period))  # start-up and first collections are not measured
            for _ in range(WARMUP_SCRAPES):  # nor the first scrapes (imports, caches)
                for port in (mw_port, ne_port):
                    _get(port, keep_alive)
                time.sleep(period)
            res: dict[str, dict[str, float]] = {
                n: {"wall": 0.0, "latency": 0.0} for n in ("mevwatch", "node_exporter")
            }
            before = {"mevwatch": cpu_ns(mw.pid), "node_exporter": cpu_ns(ne.pid)}
            t_start = time.monotonic()
            for i in range(scrapes):
                for name, port in (("mevwatch", mw_port), ("node_exporter", ne_port)):
                    text, latency = _get(port, keep_alive)
                    res[name]["latency"] += latency
                    if name == "mevwatch":
                        res[name]["wall"] += _sum(text, "mevwatch_collector_duration_seconds", "collector", kinds)
                    else:
                        res[name]["wall"] += _sum(text, "node_scrape_collector_duration_seconds", "collector",
                                                  {"meminfo", "filesystem", "cpufreq", "loadavg", "stat"})
                    res[name]["series"] = _series(text)
                delay = t_start + (i + 1) * period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            elapsed = time.monotonic() - t_start
            after = {"mevwatch": cpu_ns(mw.pid), "node_exporter": cpu_ns(ne.pid)}
            rss = {"mevwatch": proc_stats(mw.pid).rss_bytes, "node_exporter": proc_stats(ne.pid).rss_bytes}
        finally:
            for conn in _kept.values():
                conn.close()
            _kept.clear()
            stop(mw)
            stop(ne)
    for name, r in res.items():
        r["cpu"] = (after[name] - before[name]) / 1e9 / scrapes
        r["cpu_hour"] = (after[name] - before[name]) / 1e9 * 3600 / elapsed
        r["wall"] /= scrapes
        r["latency"] /= scrapes
        r["rss"] = rss[name]
        r["collections"] = elapsed / period if name == "mevwatch" else scrapes
    return res


async def _in_process(calls: int, options: dict[str, dict[str, Any]]) -> dict[str, tuple[float, float]]:
    sys.path.insert(0, str(REPO))
    from mevwatch.blocking import BlockingPool
    from mevwatch.collectors.base import CollectorContext
    from mevwatch.collectors.registry import get_kind

    pool = BlockingPool(4)
    out = {}
    for kind, body in options.items():
        cls = get_kind(kind)
        assert cls is not None, kind
        opts = cls.Options.model_validate(body)
        coll: Any = cls(CollectorContext(kind, "bench", 15.0, 10.0, pool=pool), opts)
        for _ in range(3):  # warm-up: first-run deltas, imports, caches
            await coll.collect()
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(calls):
            await coll.collect()
        out[kind] = ((time.process_time() - c0) / calls, (time.perf_counter() - w0) / calls)
    pool.shutdown()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--scrapes", type=int, default=20, help="scrapes of each daemon")
    ap.add_argument("--period", type=float, default=15.0, help="seconds between scrapes (= mevwatch interval)")
    ap.add_argument("--calls", type=int, default=300, help="in-process collect() calls per collector")
    ap.add_argument("--defaults", action="store_true",
                    help="mevwatch collectors with default options (top-N processes, dir walks) instead of "
                         "the node_exporter-equivalent subset")
    ap.add_argument("--no-alerts", action="store_true",
                    help="run mevwatch without its alert engine (which evaluates the rules on every snapshot)")
    ap.add_argument("--keep-alive", action="store_true",
                    help="scrape over one kept-open connection per daemon, as Prometheus does, instead of a new "
                         "connection per scrape")
    args = ap.parse_args()
    options = DEFAULTS if args.defaults else EQUIVALENT
    print(f"machine: {machine()}; load average {load_average()}")
    print(f"mevwatch options: {'defaults' if args.defaults else 'node_exporter-equivalent'}: "
          + ", ".join(f"{k} {v}" for k, v in options.items()))
    print(f"mevwatch alert engine: {'off' if args.no_alerts else 'on (default rules)'}")
    print(f"scrapes: {'one kept-open connection per daemon' if args.keep_alive else 'a new connection each'}")
    res = daemons(args.scrapes, args.period, options, alerts=not args.no_alerts, keep_alive=args.keep_alive)
    ms = 1000.0
    print(f"\n1. daemons, {args.scrapes} scrapes each every {args.period}s, same run")
    print(f"load average at the end {load_average()}")
    print(f"{'':15}{'CPU s/hour':>11}{'CPU ms/coll':>12}{'wall ms/coll':>13}{'scrape ms':>10}{'RSS MiB':>9}"
          f"{'series':>8}")
    for n, r in res.items():
        print(f"{n:15}{r['cpu_hour']:11.2f}{r['cpu'] * ms:12.2f}{r['wall'] * ms:13.2f}{r['latency'] * ms:10.2f}"
              f"{r['rss'] / 2**20:9.1f}{int(r['series']):8d}")
    mw, ne = res["mevwatch"], res["node_exporter"]
    ratio = mw["cpu_hour"] / ne["cpu_hour"] if ne["cpu_hour"] else float("inf")
    print(f"ratio mevwatch/node_exporter CPU per hour: {ratio:.2f}x "
          f"(wall per collection {mw['wall'] / ne['wall'] if ne['wall'] else float('inf'):.2f}x)")
    record(f"host collectors CPU per hour, scraped every {args.period:g}s"
           + (" (mevwatch default options)" if args.defaults else ""),
           mevwatch=mw["cpu_hour"], unit="s", anchor_name="node_exporter", anchor=ne["cpu_hour"],
           goal="<= node_exporter", met=ratio <= 1.0)

    per = asyncio.run(_in_process(args.calls, options))
    print(f"\n2. in-process collect(), {args.calls} calls each")
    print(f"{'collector':15}{'CPU ms/call':>12}{'wall ms/call':>13}")
    for kind, (cpu, wall) in per.items():
        print(f"{kind:15}{cpu * ms:12.3f}{wall * ms:13.3f}")
    print(f"{'sum':15}{sum(c for c, _ in per.values()) * ms:12.3f}{sum(w for _, w in per.values()) * ms:13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
