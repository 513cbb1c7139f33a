"""Soak: mevwatch with every collector at 1 s intervals against real peers for --minutes (default 30);
RSS, open fds, threads and scrape latency over time as a table and a PNG. Usage: python bench/soak.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from _common import REPO, machine, proc_stats
from _stack import Peers, mevwatch_config, peers

sys.path.insert(0, str(REPO))

from tests.support.daemon import RunningDaemon, parse_metrics

# targets of the issue: RSS growth after warm-up under 5%, no fd growth
RSS_GROWTH_MAX = 0.05

ALERTS = """\
  enabled: true
  host: soak
  evaluation_interval: 1s
  startup_grace: 0s
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  receivers:
    - name: hook
      webhook_configs: [{{url: '{url}', timeout: 2s}}]
  receiver: hook
"""

# Runs `mevwatch run` with tracemalloc on; SIGUSR2 dumps a snapshot to $SOAK_TRACE.<n>.
TRACED = """\
import os, runpy, signal, sys, tracemalloc
tracemalloc.start(int(os.environ.get("SOAK_TRACE_FRAMES", "10")))
n = [0]
def dump(*_):
    n[0] += 1
    tracemalloc.take_snapshot().dump(f"{os.environ['SOAK_TRACE']}.{n[0]}")
signal.signal(signal.SIGUSR2, dump)
sys.argv = ["mevwatch", *sys.argv[1:]]
runpy.run_module("mevwatch", run_name="__main__")
"""


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since start
    rss: int
    fds: int
    threads: int
    scrape: float  # seconds for GET /metrics
    series: int
    cpu: float  # CPU seconds so far


def sample(pid: int, url: str, t0: float) -> Sample:
    start = time.perf_counter()
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        body = resp.read()
    scrape = time.perf_counter() - start
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
    stats = proc_stats(pid)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return Sample(time.monotonic() - t0, stats.rss_bytes, fds, threads, scrape, series, stats.cpu_seconds)


class Load:
    """What a live host does to the collectors: transactions, log lines, config edits, a flapping engine."""

    def __init__(self, p: Peers, config: Path) -> None:
        self.p = p
        self.config = config
        self.tick = 0

    def step(self) -> None:
        """Called every 5 s."""
        self.tick += 1
        p = self.p
        p.send_transaction()
        with p.logfile.open("a") as f:
            f.write(f"INFO block {self.tick} scanned\nERROR Execution failed: reverted ({self.tick})\n")
        if self.tick % 24 == 0:  # every 2 min: an edit (IntegrityViolation), accepted 10 s later
            target = p.watched[(self.tick // 24) % len(p.watched)]
            with target.open("a") as f:
                f.write(f"# edited at tick {self.tick}\n")
        if self.tick % 24 == 2:
            subprocess.run([sys.executable, "-m", "mevwatch", "integrity", "accept", "-c", str(self.config)],
                           capture_output=True, timeout=30, check=False)
        if self.tick % 36 == 0:  # every 3 min the engine answers 500 for 15 s
            p.engine.set("/health", status=500)
        if self.tick % 36 == 3:
            p.engine.set("/health", status=200)
        if self.tick % 12 == 0:
            p.psql("SELECT count(*) FROM t00 JOIN t01 USING (id)")


def median_rss(samples: list[Sample], lo: float, hi: float) -> float:
    return statistics.median(s.rss for s in samples if lo <= s.t <= hi)


def table(samples: list[Sample], step: float) -> list[str]:
    rows = [f"{'min':>5} {'RSS MiB':>8} {'fds':>4} {'thr':>4} {'scrape p50 ms':>13} {'max ms':>7} "
            f"{'series':>6} {'CPU %':>6}"]
    edge = 0.0
    prev_cpu, prev_t = samples[0].cpu, samples[0].t
    while edge < samples[-1].t:
        chunk = [s for s in samples if edge <= s.t < edge + step]
        edge += step
        if not chunk:
            continue
        last = chunk[-1]
        cpu = 100 * (last.cpu - prev_cpu) / max(1e-9, last.t - prev_t)
        prev_cpu, prev_t = last.cpu, last.t
        lat = [s.scrape * 1000 for s in chunk]
        rows.append(f"{last.t / 60:5.1f} {last.rss / 2**20:8.1f} {last.fds:4d} {last.threads:4d} "
                    f"{statistics.median(lat):13.1f} {max(lat):7.1f} {last.series:6d} {cpu:6.1f}")
    return rows


def plot(samples: list[Sample], warmup: float, png: Path) -> None:
    import matplotlib  # pyright: ignore[reportMissingImports]  # the optional bench extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pyright: ignore[reportMissingImports]

    minutes = [s.t / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    series: list[tuple[str, list[float]]] = [
        ("RSS (MiB)", [s.rss / 2**20 for s in samples]),
        ("open fds", [float(s.fds) for s in samples]),
        ("threads", [float(s.threads) for s in samples]),
        ("scrape latency (ms)", [s.scrape * 1000 for s in samples]),
    ]
    for ax, (label, values) in zip(axes, series, strict=True):
        ax.plot(minutes, values, linewidth=0.8)
        ax.axvline(warmup / 60, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if label != "scrape latency (ms)":
            lo, hi = min(values), max(values)
            ax.set_ylim(max(0.0, lo - 0.1 * (hi - lo + 1)), hi + 0.1 * (hi - lo + 1))
    axes[-1].set_xlabel("minutes (dashed: end of warm-up)")
    fig.suptitle("mevwatch soak: every collector at 1 s intervals")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the run")
    ap.add_argument("--warmup", type=float, default=2.0, help="minutes before RSS growth is measured")
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--png", type=Path, default=Path("soak.png"), help="where to write the plot")
    ap.add_argument("--local-postgres", action="store_true",
                    help="use the server at 127.0.0.1:5432 instead of a throwaway cluster (no root needed)")
    ap.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment of the daemon, e.g. MALLOC_ARENA_MAX=2 (repeatable)")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="run the daemon under tracemalloc and print the top allocation growth after warm-up")
    args = ap.parse_args()
    if args.warmup >= args.minutes:
        ap.error("--warmup must be shorter than --minutes")

    print(f"machine: {machine()}", flush=True)
    print(f"soak: {args.minutes:g} min, warm-up {args.warmup:g} min, a sample every {args.every:g} s"
          + (f", daemon env {' '.join(args.daemon_env)}" if args.daemon_env else ""), flush=True)
    own_pg = not args.local_postgres and os.geteuid() == 0
    with peers(own_postgres=own_pg) as p:
        webhook_alerts = ALERTS.format(url=p.webhook.url)
        text = mevwatch_config(p, alerts=webhook_alerts)
        daemon = RunningDaemon(p.tmp, text, env=dict(kv.split("=", 1) for kv in args.daemon_env))
        trace = p.tmp / "trace"
        if args.tracemalloc:
            daemon.argv = [sys.executable, "-c", TRACED, *daemon.argv[3:]]
            daemon.env["SOAK_TRACE"] = str(trace)
        with daemon:
            assert daemon.proc is not None
            pid = daemon.proc.pid
            load = Load(p, daemon.config)
            samples: list[Sample] = []
            t0 = time.monotonic()
            end = t0 + args.minutes * 60
            next_load = t0
            traced_warm = False
            while time.monotonic() < end:
                if daemon.proc.poll() is not None:
                    print(daemon.log.read_text(errors="replace")[-3000:])
                    raise SystemExit("mevwatch exited during the soak")
                samples.append(sample(pid, daemon.url, t0))
                if args.tracemalloc and not traced_warm and samples[-1].t >= args.warmup * 60:
                    os.kill(pid, 10 + 2)  # SIGUSR2
                    traced_warm = True
                if time.monotonic() >= next_load:
                    load.step()
                    next_load += 5.0
                if len(samples) % max(1, int(60 / args.every)) == 0:
                    s = samples[-1]
                    print(f"  {s.t / 60:5.1f} min  RSS {s.rss / 2**20:6.1f} MiB  fds {s.fds}  threads {s.threads}  "
                          f"scrape {s.scrape * 1000:.1f} ms", flush=True)
                time.sleep(max(0.0, args.every - (time.monotonic() - t0 - samples[-1].t)))
            if args.tracemalloc:
                os.kill(pid, 12)
                time.sleep(3)
            alerts_received = len(p.webhook.delivered())
            scrape = parse_metrics(daemon.get())
            failing = sorted(dict(lbl).get("collector", "?") + "/" + dict(lbl).get("instance", "?")
                             for (name, lbl), v in scrape.items() if name == "mevwatch_collector_success" and v == 0)
            log_lines = daemon.log.read_text(errors="replace").count("\n")

        print()
        step = max(1.0, args.minutes / 30) * 60
        print("\n".join(table(samples, step)))
        warm = args.warmup * 60
        after = [s for s in samples if s.t >= warm]
        rss_warm = median_rss(samples, warm - 30, warm + 30)
        rss_end = median_rss(samples, samples[-1].t - 60, samples[-1].t)
        growth = (rss_end - rss_warm) / rss_warm
        # fds come and go with connections and probes: a leak raises the typical count, so the
        # median of the last third after warm-up is compared with that of the first third
        third = max(1, len(after) // 3)
        fds_warm = int(statistics.median(s.fds for s in after[:third]))
        fds_end = int(statistics.median(s.fds for s in after[-third:]))
        fds_peak = max(s.fds for s in after)
        thr_warm, thr_max = max(s.threads for s in after[:third]), max(s.threads for s in after[-third:])
        lat = sorted(s.scrape * 1000 for s in after)
        cpu = (samples[-1].cpu - after[0].cpu) / (samples[-1].t - after[0].t)
        print()
        print(f"RSS after warm-up {rss_warm / 2**20:.1f} MiB, at the end {rss_end / 2**20:.1f} MiB "
              f"(median of the last minute): growth {100 * growth:+.2f}% (target < {100 * RSS_GROWTH_MAX:.0f}%)")
        print(f"open fds (median): first third after warm-up {fds_warm}, last third {fds_end}, peak {fds_peak}; "
              f"peak threads {thr_warm} -> {thr_max}")
        p50, p99 = lat[len(lat) // 2], lat[int(0.99 * (len(lat) - 1))]
        print(f"scrape latency after warm-up: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {lat[-1]:.1f} ms; "
              f"CPU {100 * cpu:.1f}% of one core; series {samples[-1].series}")
        print(f"alerts delivered to the webhook: {alerts_received}; daemon log lines (warning and up): {log_lines}")
        print(f"collectors failing at the end: {', '.join(failing) or 'none'}")
        plot(samples, warm, args.png)
        print(f"plot: {args.png.resolve()}")
        if args.tracemalloc:
            print_trace_diff(trace)
        ok = growth < RSS_GROWTH_MAX and fds_end <= fds_warm
        print("PASS" if ok else "FAIL: RSS or fds grew")
        return 0 if ok else 1


def print_trace_diff(trace: Path) -> None:
    import tracemalloc

    first, last = Path(f"{trace}.1"), Path(f"{trace}.2")
    if not (first.exists() and last.exists()):
        print("tracemalloc: snapshots missing")
        return
    a = tracemalloc.Snapshot.load(str(first))
    b = tracemalloc.Snapshot.load(str(last))
    print("tracemalloc: top growth between the end of warm-up and the end")
    for stat in b.compare_to(a, "traceback")[:10]:
        print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
        for line in stat.traceback.format()[-8:]:
            print("    " + line)


if __name__ == "__main__":
    sys.exit(main())
