"""The whole-stack comparison: what a user would run instead of mevwatch, for the same coverage.

Against the same real peers (anvil behind the fault proxy, a PostgreSQL 15 cluster, the engine
stub, one webhook receiver), at the same time:

- mevwatch alone: ``mevwatch run`` with memory, cpu, disk, oomkill, http (the engine's /health),
  rpc (the node) and postgres, each at its default interval, the default rules, posting to the
  webhook (group_wait 30 s, its default);
- the stack: prometheus-node-exporter (default collectors), prometheus-postgres-exporter
  (defaults), prometheus-blackbox-exporter (an HTTP probe of /health, a JSON-RPC POST to the node),
  Prometheus scraping each at the interval of the mevwatch collector it stands for and evaluating
  every --eval-interval (mevwatch's evaluation_interval, 1 s) the rules mevwatch exports
  (`mevwatch rules export`: their cost; they read mevwatch's series, which this stack has not)
  plus the three incident rules over the exporters' series, with the same `for`; Alertmanager
  (group_wait 30 s) posting to the webhook.

Measured: CPU (sum of every process's threads, schedstat) and RSS over --minutes of steady state,
as CPU per hour; then time to page for three incidents, from the fault to the firing alert at
the webhook, by each path: the engine's /health answers 500, the node stops answering, PostgreSQL
stops. Needs root (own PostgreSQL cluster) and the Debian packages of the three exporters,
Prometheus and Alertmanager.

    .venv/bin/python bench/stack.py [--minutes 5] [--eval-interval 1]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from _common import REPO, cpu_ns, free_port, load_average, machine, proc_stats, record
from _stack import Peers, peers

sys.path.insert(0, str(REPO))

from demo import Watcher

from mevwatch.collectors.registry import get_kind
from tests.support.daemon import RunningDaemon
from tests.support.peers import need_binary, start_process, stop_process
from tests.support.rpcproxy import Fault

KINDS = ("memory", "cpu", "filesystems", "directories", "backups", "oomkill", "http", "rpc", "postgres")
INCIDENTS = ("EngineHealthDown", "RpcEndpointDown", "PostgresDown")
RPC_BODY = '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'


def interval(kind: str) -> float:
    import mevwatch.daemon.config  # noqa: F401 - registers every collector kind

    cls = get_kind(kind)
    assert cls is not None, kind
    return float(cls.default_interval)


def mevwatch_config(p: Peers) -> str:
    hook = p.webhook.url.rsplit("/", 1)[0]
    return f"""\
state_dir: {p.tmp / 'state'}
log: {{level: warning, format: json}}
alerts:
  enabled: true
  host: bench
  startup_grace: 0s
  group_by: [alertname]
  receivers:
    - name: hook
      webhook_configs: [{{url: '{hook}/mevwatch', timeout: 2s}}]
  receiver: hook
collectors:
  - memory: {{}}
  - cpu: {{}}
  - filesystems: {{}}
  - directories: {{}}
  - backups: {{}}
  - oomkill: {{}}
  - http:
      targets: [{{name: health, url: '{p.engine.url("/health")}', json_check: 'status == "ok"', timeout: 1s}}]
  - rpc:
      endpoints: [{{name: node0, url: '{p.proxy.url}', timeout: 1s}}]
  - postgres:
      targets: [{{dsn: '{p.pg_dsn}'}}]
"""


@contextlib.contextmanager
def started(argv: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    proc = start_process(argv, port=port, log=log, timeout=30, env=env)
    try:
        yield proc.pid
    finally:
        stop_process(proc)


def the_stack(stack: contextlib.ExitStack, p: Peers, tmp: Path, eval_interval: float) -> dict[str, int]:
    """Start the exporters, Prometheus and Alertmanager; name -> pid."""
    pids: dict[str, int] = {}
    hook = p.webhook.url.rsplit("/", 1)[0]
    ports = {n: free_port() for n in ("node", "postgres", "blackbox", "prometheus", "alertmanager")}
    pids["node_exporter"] = stack.enter_context(started(
        [need_binary("prometheus-node-exporter"), f"--web.listen-address=127.0.0.1:{ports['node']}"],
        ports["node"], tmp / "node.log"))
    pids["postgres_exporter"] = stack.enter_context(started(
        [need_binary("prometheus-postgres-exporter"), f"--web.listen-address=127.0.0.1:{ports['postgres']}"],
        ports["postgres"], tmp / "pg.log", env={"DATA_SOURCE_NAME": p.pg_dsn + "?sslmode=disable"}))
    (tmp / "blackbox.yml").write_text(f"""\
modules:
  health:
    prober: http
    timeout: 1s
    http: {{valid_status_codes: [200], fail_if_body_not_matches_regexp: ['"status": *"ok"']}}
  rpc:
    prober: http
    timeout: 1s
    http:
      method: POST
      headers: {{Content-Type: application/json}}
      body: '{RPC_BODY}'
      fail_if_body_not_matches_regexp: ['"result"']
""")
    pids["blackbox_exporter"] = stack.enter_context(started(
        [need_binary("prometheus-blackbox-exporter"), f"--config.file={tmp / 'blackbox.yml'}",
         f"--web.listen-address=127.0.0.1:{ports['blackbox']}"], ports["blackbox"], tmp / "blackbox.log"))
    (tmp / "am.yml").write_text(f"""\
route: {{receiver: hook, group_by: [alertname], group_wait: 30s, group_interval: 5m, repeat_interval: 4h}}
receivers:
  - name: hook
    webhook_configs: [{{url: '{hook}/alertmanager'}}]
""")
    pids["alertmanager"] = stack.enter_context(started(
        [need_binary("prometheus-alertmanager"), f"--config.file={tmp / 'am.yml'}", f"--storage.path={tmp / 'am'}",
         f"--web.listen-address=127.0.0.1:{ports['alertmanager']}", "--cluster.listen-address="],
        ports["alertmanager"], tmp / "am.log"))
    exported = tmp / "mevwatch-rules.yml"
    subprocess.run([sys.executable, "-m", "mevwatch", "rules", "export", "-o", str(exported)], check=True,
                   capture_output=True, timeout=60)
    (tmp / "incidents.yml").write_text("""\
groups:
  - name: incidents
    rules:
      - {alert: EngineHealthDown, expr: 'probe_success{job="engine-health"} == 0', for: 30s}
      - {alert: RpcEndpointDown, expr: 'probe_success{job="rpc"} == 0', for: 30s}
      - {alert: PostgresDown, expr: 'pg_up == 0', for: 1m}
""")
    host = f"{min(interval(k) for k in ('memory', 'cpu', 'filesystems', 'oomkill')):g}s"
    bb = f"127.0.0.1:{ports['blackbox']}"
    (tmp / "prometheus.yml").write_text(f"""\
global: {{scrape_interval: {host}, evaluation_interval: {eval_interval:g}s}}
rule_files: ['{exported}', '{tmp / "incidents.yml"}']
alerting:
  alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{ports['alertmanager']}']}}]}}]
scrape_configs:
  - {{job_name: node, static_configs: [{{targets: ['127.0.0.1:{ports['node']}']}}]}}
  - job_name: postgres
    scrape_interval: {interval('postgres'):g}s
    static_configs: [{{targets: ['127.0.0.1:{ports['postgres']}']}}]
  - job_name: engine-health
    scrape_interval: {interval('http'):g}s
    metrics_path: /probe
    params: {{module: [health], target: ['{p.engine.url("/health")}']}}
    static_configs: [{{targets: ['{bb}']}}]
  - job_name: rpc
    scrape_interval: {interval('rpc'):g}s
    metrics_path: /probe
    params: {{module: [rpc], target: ['{p.proxy.url}']}}
    static_configs: [{{targets: ['{bb}']}}]
""")
    pids["prometheus"] = stack.enter_context(started(
        [need_binary("prometheus"), f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'prom'}",
         f"--web.listen-address=127.0.0.1:{ports['prometheus']}", "--log.level=warn"],
        ports["prometheus"], tmp / "prometheus.log"))
    return pids


def steady(pids: dict[str, int], seconds: float) -> dict[str, tuple[float, float]]:
    """name -> (CPU seconds per hour, RSS bytes at the end) over ``seconds``."""
    before = {n: cpu_ns(pid) for n, pid in pids.items()}
    time.sleep(seconds)
    return {n: ((cpu_ns(pid) - before[n]) / 1e9 * 3600 / seconds, float(proc_stats(pid).rss_bytes))
            for n, pid in pids.items()}


def incident(p: Peers, name: str) -> Callable[[], None]:
    """Start the fault behind alert ``name``; returns its undo."""
    if name == "EngineHealthDown":
        p.engine.set("/health", status=500)
        return lambda: p.engine.set("/health", status=200)
    if name == "RpcEndpointDown":
        p.proxy.set("*", Fault(hang=True))
        return lambda: p.proxy.clear("*")
    assert name == "PostgresDown"
    assert p.pg is not None
    p.pg.stop()
    return p.pg.start


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="steady-state window")
    ap.add_argument("--eval-interval", type=float, default=1.0, help="Prometheus' evaluation interval, seconds")
    ap.add_argument("--timeout", type=float, default=240.0, help="longest wait for a page, seconds")
    args = ap.parse_args()
    print(f"machine: {machine()}; load average {load_average()}")
    print("intervals: " + ", ".join(f"{k} {interval(k):g}s" for k in KINDS))
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        p = stack.enter_context(peers(own_postgres=True, watched_files=0))
        daemon = stack.enter_context(RunningDaemon(p.tmp, mevwatch_config(p)))
        assert daemon.proc is not None
        pids = {"mevwatch": daemon.proc.pid, **the_stack(stack, p, tmp, args.eval_interval)}
        watcher = stack.enter_context(Watcher(p).running())
        time.sleep(60)  # first scrapes, first runs, caches and TSDB head settled
        print(f"steady state for {args.minutes:g} min, load average {load_average()}")
        usage = steady(pids, args.minutes * 60)
        print(f"load average after {load_average()}")
        pages: dict[str, dict[str, float | None]] = {}
        for name in INCIDENTS:
            since = watcher.mark()
            undo = incident(p, name)
            try:
                deadline = since + args.timeout
                while time.monotonic() < deadline and not all(
                        watcher.first(name, via, since, {}) for via in ("mevwatch", "alertmanager")):
                    time.sleep(0.2)
            finally:
                undo()
            pages[name] = {}
            for via in ("mevwatch", "alertmanager"):
                got = watcher.first(name, via, since, {})
                pages[name][via] = got.at - since if got else None
            time.sleep(45)  # recovered on both sides before the next incident

    mib = 2**20
    stack_names = [n for n in usage if n != "mevwatch"]
    print(f"\n{'':20}{'CPU s/hour':>12}{'RSS MiB':>10}")
    for n, (cpu, rss) in usage.items():
        print(f"{n:20}{cpu:12.1f}{rss / mib:10.1f}")
    total_cpu = sum(usage[n][0] for n in stack_names)
    total_rss = sum(usage[n][1] for n in stack_names)
    print(f"{'stack total':20}{total_cpu:12.1f}{total_rss / mib:10.1f}")
    print(f"\n{'time to page':20}{'mevwatch':>10}{'stack':>10}")
    for name, t in pages.items():
        shown = {via: f"{v:.1f} s" if v is not None else "not seen" for via, v in t.items()}
        print(f"{name:20}{shown['mevwatch']:>10}{shown['alertmanager']:>10}")
    mw_cpu, mw_rss = usage["mevwatch"]
    record("whole stack: CPU per hour", mevwatch=mw_cpu, unit="s", anchor_name="exporters+Prometheus+AM",
           anchor=total_cpu, goal="<= the stack", met=mw_cpu <= total_cpu)
    record("whole stack: RSS", mevwatch=mw_rss / mib, unit="MiB", anchor_name="exporters+Prometheus+AM",
           anchor=total_rss / mib, goal="<= the stack", met=mw_rss <= total_rss)
    for name, t in pages.items():
        mw, st = t["mevwatch"], t["alertmanager"]
        if mw is not None and st is not None:
            record(f"whole stack: time to page, {name}", mevwatch=mw, unit="s", anchor_name="stack", anchor=st,
                   goal="<= the stack", met=mw <= st)
    return 0


if __name__ == "__main__":
    sys.exit(main())
