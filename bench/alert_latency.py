"""Breach-to-webhook latency: mevwatch alone vs Prometheus -> Alertmanager, same breaches, same run.

Three sources: a watched file changed (integrity, inotify: event-driven), a FATAL line appended to
a followed log (logwatch, 100 ms follow interval) and the engine's health endpoint turning 500
(http probe every 1 s: polled). mevwatch posts straight to the webhook;
Prometheus scrapes the same mevwatch /metrics every 1 s, evaluates every 1 s and goes through
Alertmanager (group_wait 0 s) to the same webhook. Usage: python bench/alert_latency.py [--count 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import free_port, load_average, machine, record, start, stop
from aiohttp import web

from mevwatch.aio import wait_for

MEVWATCH = [sys.executable, "-m", "mevwatch"]

RULES_MEVWATCH = """
  rules:
    - {name: IntegrityViolation, metric: mevwatch_integrity_violation, op: "==", threshold: 1, severity: critical,
       summary: "{{ $labels.path }} changed", runbook: integrity-violation}
    - {name: EngineHealthDown, metric: mevwatch_http_up, op: "==", threshold: 0, severity: critical,
       summary: "{{ $labels.target }} down", runbook: engine-down}
    - {name: LogFatal, metric: mevwatch_log_matches_total, matchers: ['pattern="bench_fatal"'], op: ">",
       threshold: 0, severity: critical, summary: "FATAL in {{ $labels.source }}", runbook: strategy-errors}
"""

PROM_RULES = """groups:
  - name: bench
    interval: 1s
    rules:
      - alert: IntegrityViolation
        expr: mevwatch_integrity_violation == 1
      - alert: EngineHealthDown
        expr: mevwatch_http_up == 0
      - alert: LogFatal
        expr: mevwatch_log_matches_total{pattern="bench_fatal"} > 0
"""


class Receiver:
    """The one webhook both paths post to; remembers when each (path, alert, status) first arrived."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str, str, str], float] = {}
        self.event = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        body = await request.json()
        for a in body.get("alerts", []):
            where = a["labels"].get("path") or a["labels"].get("source", "")
            key = (request.path, a["labels"].get("alertname", ""), where, a["status"])
            self.seen.setdefault(key, now)
        self.event.set()
        return web.Response(text="ok")

    async def wait(self, keys: list[tuple[str, str, str, str]], timeout: float = 20.0) -> list[float]:
        end = time.monotonic() + timeout
        while not all(k in self.seen for k in keys):
            if time.monotonic() > end:
                raise TimeoutError(f"not received: {[k for k in keys if k not in self.seen]}")
            self.event.clear()
            with contextlib.suppress(TimeoutError):
                await wait_for(self.event.wait(), 0.2)
        return [self.seen[k] for k in keys]


def tamper(path: str, text: str = "tampered = true\n") -> None:
    """The breach: an appended line, written on the loop thread on purpose (it is tiny and timed)."""
    with open(path, "a") as f:
        f.write(text)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summary(name: str, mw: list[float], prom: list[float], goal_ms: float) -> str:
    m50, m99, p50, p99 = (1000 * pct(mw, 0.5), 1000 * pct(mw, 0.99), 1000 * pct(prom, 0.5), 1000 * pct(prom, 0.99))
    record(f"alert latency p99, {name}", mevwatch=m99, unit="ms", anchor_name="Prometheus+Alertmanager",
           anchor=p99, goal=f"< {goal_ms:g} ms", met=m99 < goal_ms)
    return (f"{name:<24} n={len(mw):<4} mevwatch p50 {m50:7.1f} ms  p99 {m99:7.1f} ms | "
            f"Prometheus+Alertmanager p50 {p50:7.1f} ms  p99 {p99:7.1f} ms | "
            f"ratio p50 {p50 / m50:5.1f}x  p99 {p99 / m99:5.1f}x")


async def main(count: int, polled_count: int) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="mevwatch-alert-bench-"))
    watched = tmp / "watched"
    watched.mkdir()
    logs = tmp / "logs"
    logs.mkdir()
    for i in range(count):
        (watched / f"f{i:03d}.conf").write_text(f"setting = {i}\n")
        (logs / f"app{i:03d}.log").write_text("started\n")
    log_files = ", ".join(f'"{logs / f"app{i:03d}.log"}"' for i in range(count))

    receiver = Receiver()
    engine_ok = [True]

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, status=200 if engine_ok[0] else 500)

    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    hook_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()

    mw_port, prom_port, am_port = free_port(), free_port(), free_port()
    cfg = tmp / "mevwatch.yaml"
    cfg.write_text(f"""state_dir: {tmp / 'state'}
log: {{level: warning}}
collectors:
  - integrity:
      interval: 1s
      directories: [{{path: {watched}}}]
      debounce: 30ms
  - http:
      interval: 1s
      targets: [{{name: engine, url: "http://127.0.0.1:{hook_port}/health", timeout: 500ms}}]
  - logwatch:
      interval: 100ms
      sources: []
      journal: {{enabled: false}}
      builtin_patterns: []
      patterns: [{{name: bench_fatal, regex: FATAL, files: [{log_files}]}}]
alerts:
  default_rules: false
  group_by: [alertname, path, source]
  group_wait: 0s
  group_interval: 1s
  receivers:
    - name: hook
      webhook_configs: [{{url: "http://127.0.0.1:{hook_port}/mevwatch"}}]
  receiver: hook
{RULES_MEVWATCH}""")
    await asyncio.to_thread(subprocess.run, [*MEVWATCH, "integrity", "baseline", "-c", str(cfg)], check=True,
                            capture_output=True)
    (tmp / "rules.yml").write_text(PROM_RULES)
    (tmp / "prometheus.yml").write_text(f"""global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{tmp / 'rules.yml'}]
alerting:
  alertmanagers: [{{static_configs: [{{targets: ["127.0.0.1:{am_port}"]}}]}}]
scrape_configs:
  - job_name: mevwatch
    static_configs: [{{targets: ["127.0.0.1:{mw_port}"]}}]
""")
    (tmp / "alertmanager.yml").write_text(f"""route:
  receiver: hook
  group_by: [alertname, path, source]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 4h
receivers:
  - name: hook
    webhook_configs: [{{url: "http://127.0.0.1:{hook_port}/am", send_resolved: true}}]
""")
    procs = [
        start([*MEVWATCH, "run", "-c", str(cfg), "--web.listen-address", f"127.0.0.1:{mw_port}"], mw_port),
        start(["prometheus-alertmanager", f"--config.file={tmp / 'alertmanager.yml'}",
               f"--storage.path={tmp / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
               "--cluster.listen-address="], am_port),
        start(["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'prom'}",
               f"--web.listen-address=127.0.0.1:{prom_port}"], prom_port),
    ]
    try:
        await asyncio.sleep(4)  # first scrapes and evaluations
        print(f"machine: {machine()}; load average {load_average()}")
        results: list[str] = []

        mw, prom = [], []
        for i in range(count):
            await asyncio.sleep(random.uniform(0.1, 1.0))  # spread breaches over the scrape/eval phase
            path = str(watched / f"f{i:03d}.conf")
            t0 = time.monotonic()
            tamper(path)
            a, b = await receiver.wait([("/mevwatch", "IntegrityViolation", path, "firing"),
                                        ("/am", "IntegrityViolation", path, "firing")])
            mw.append(a - t0)
            prom.append(b - t0)
        results.append(summary("file change (inotify)", mw, prom, 250))
        print(results[-1], flush=True)

        mw, prom = [], []
        for i in range(count):
            await asyncio.sleep(random.uniform(0.1, 1.0))
            path = str(logs / f"app{i:03d}.log")
            t0 = time.monotonic()
            tamper(path, "2026-11-25 FATAL strategy crashed\n")
            a, b = await receiver.wait([("/mevwatch", "LogFatal", path, "firing"),
                                        ("/am", "LogFatal", path, "firing")])
            mw.append(a - t0)
            prom.append(b - t0)
        results.append(summary("log line (100ms follow)", mw, prom, 250))
        print(results[-1], flush=True)

        mw, prom = [], []
        for i in range(polled_count):
            await asyncio.sleep(random.uniform(0.1, 1.0))
            t0 = time.monotonic()
            engine_ok[0] = False
            a, b = await receiver.wait([("/mevwatch", "EngineHealthDown", "", "firing"),
                                        ("/am", "EngineHealthDown", "", "firing")])
            mw.append(a - t0)
            prom.append(b - t0)
            engine_ok[0] = True
            await receiver.wait([("/mevwatch", "EngineHealthDown", "", "resolved"),
                                 ("/am", "EngineHealthDown", "", "resolved")], timeout=30)
            for k in [k for k in receiver.seen if k[1] == "EngineHealthDown"]:
                del receiver.seen[k]
            if i % 10 == 9:
                print(f"  polled {i + 1}/{polled_count}", flush=True)
        results.append(summary("health 500 (1s poll)", mw, prom, 1100))
        print(results[-1], flush=True)
        return 0
    finally:
        for p in reversed(procs):
            stop(p)
        await runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100, help="file-change and log-line breaches (each)")
    ap.add_argument("--polled-count", type=int, default=100, help="health-endpoint breaches")
    args = ap.parse_args()
    sys.exit(asyncio.run(main(args.count, args.polled_count)))
