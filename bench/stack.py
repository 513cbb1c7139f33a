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
stops. Each round (--repeat of them) starts the three at once, each after a random delay of up to
its collector's interval, so where the fault falls in the polling interval varies from round to
round; each path's time is split into fault -> first look at the faulty peer (the polling's phase:
mevwatch's collector's first slot after the fault, the stack's first scrape that saw it, from
Prometheus' samples) -> alert active (pending, both /api/v1/alerts' activeAt) -> firing (the
notification's startsAt: Prometheus sends its FiredAt, mevwatch its fired_at) -> at the webhook.
For the repetitions to meet fresh groups on both sides, both group_interval are 10 s (not the
first notification's timing) and Prometheus does not re-send a resolved alert
(--rules.alert.resend-delay 20m: a re-sent resolved alert would open an Alertmanager group ahead
of the next incident's). Needs root (own PostgreSQL cluster) and the
Debian packages of the three exporters, Prometheus and Alertmanager.

    .venv/bin/python bench/stack.py [--minutes 5] [--repeat 3] [--eval-interval 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from _common import REPO, cpu_ns, free_port, load_average, machine, proc_stats, record
from _stack import Peers, peers

sys.path.insert(0, str(REPO))

from demo import Watcher, epoch

from mevwatch.collectors.registry import get_kind
from tests.support.daemon import RunningDaemon
from tests.support.peers import need_binary, start_process, stop_process
from tests.support.rpcproxy import Fault

KINDS = ("memory", "cpu", "filesystems", "directories", "backups", "oomkill", "http", "rpc", "postgres")
INCIDENTS = ("EngineHealthDown", "RpcEndpointDown", "PostgresDown")
POLLED_BY = {"EngineHealthDown": "http", "RpcEndpointDown": "rpc", "PostgresDown": "postgres"}  # its collector
PATHS = ("mevwatch", "alertmanager")
GROUP_INTERVAL = "10s"  # both sides: a resolved incident's group is emptied before the next round
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
  group_interval: {GROUP_INTERVAL}
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


def the_stack(stack: contextlib.ExitStack, p: Peers, tmp: Path, eval_interval: float) -> tuple[dict[str, int], str]:
    """Start the exporters, Prometheus and Alertmanager; name -> pid, and Prometheus' URL."""
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
route: {{receiver: hook, group_by: [alertname], group_wait: 30s, group_interval: {GROUP_INTERVAL}, repeat_interval: 4h}}
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
         f"--web.listen-address=127.0.0.1:{ports['prometheus']}", "--log.level=warn",
         "--rules.alert.resend-delay=20m"],
        ports["prometheus"], tmp / "prometheus.log"))
    return pids, f"http://127.0.0.1:{ports['prometheus']}"


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
    pg = p.pg
    assert pg is not None
    pg.stop()

    def restart() -> None:
        # While it is down, an outgoing connection may take its port as its local one (the port is from the
        # ephemeral range): wait for that connection to end.
        for attempt in range(20):
            try:
                pg.start()
                return
            except RuntimeError:
                if attempt == 19:
                    raise
                time.sleep(3)

    return restart


@dataclass(frozen=True)
class Page:
    """One incident by one path, in seconds from the fault; None where it was not seen."""

    looked: float | None  # the first look at the faulty peer after the fault (the polling's phase)
    active: float | None  # the alert active (pending): the first evaluation that saw the fault
    firing: float | None  # the notification's startsAt
    delivered: float | None  # at the webhook


def active_since(api: str, alertname: str) -> float | None:
    """activeAt (epoch seconds) of the pending or firing alert ``alertname`` in /api/v1/alerts (Prometheus'
    and mevwatch's, the same envelope)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        with urllib.request.urlopen(api + "/api/v1/alerts", timeout=5) as resp:
            alerts = json.loads(resp.read())["data"]["alerts"]
        for a in alerts:
            if a["labels"].get("alertname") == alertname:
                return epoch(str(a["activeAt"]))
    return None


#: the series of the stack's look at each incident's peer (its scrape's timestamp is when the scrape began)
LOOKED_AT = {"EngineHealthDown": 'probe_success{job="engine-health"}', "RpcEndpointDown": 'probe_success{job="rpc"}',
             "PostgresDown": "pg_up"}


def first_failed_scrape(api: str, name: str, wall: float) -> float | None:
    """Epoch seconds of the stack's first scrape after ``wall`` that saw incident ``name`` (its sample 0),
    from Prometheus' raw samples."""
    span = int(3 * interval(POLLED_BY[name]) + time.time() - wall) + 1
    query = urllib.parse.urlencode({"query": f"{LOOKED_AT[name]}[{span}s]"})
    with contextlib.suppress(OSError, ValueError, KeyError):
        with urllib.request.urlopen(f"{api}/api/v1/query?{query}", timeout=5) as resp:
            series = json.loads(resp.read())["data"]["result"]
        return min((float(t) for s in series for t, v in s["values"] if float(t) >= wall and float(v) == 0),
                   default=None)
    return None


def first_slot(kind: str, since: float) -> float:
    """The first slot at or after monotonic time ``since`` of mevwatch's runs of ``kind``: its supervisor
    runs a collector without jitter at k * interval on the loop clock (time.monotonic, the same clock here)."""
    every = interval(kind)
    return math.ceil(since / every) * every


def play(p: Peers, watcher: Watcher, name: str, delay: float, timeout: float,
         apis: dict[str, str]) -> dict[str, Page]:
    """After ``delay``, start incident ``name``, wait for its page by both paths, read when each saw it
    first, undo it and wait for both resolved notifications; path -> Page."""
    time.sleep(delay)
    wall, since = time.time(), time.monotonic()
    undo = incident(p, name)
    actives: dict[str, float | None] = {}
    try:
        deadline = since + timeout
        while time.monotonic() < deadline and not all(watcher.first(name, via, since, {}) for via in PATHS):
            time.sleep(0.2)
        actives = {via: active_since(apis[via], name) for via in PATHS}
        looks = {"mevwatch": first_slot(POLLED_BY[name], since) - since,
                 "alertmanager": first_failed_scrape(apis["alertmanager"], name, wall)}
        if (seen := looks["alertmanager"]) is not None:
            looks["alertmanager"] = seen - wall
    finally:
        undo()
    undone = time.monotonic()
    deadline = undone + timeout
    while time.monotonic() < deadline and not all(
            watcher.first(name, via, undone, {}, status="resolved") for via in PATHS):
        time.sleep(0.2)
    pages = {}
    for via in PATHS:
        got = watcher.first(name, via, since, {})
        act = actives.get(via)
        pages[via] = Page(looks.get(via), act - wall if act is not None else None,
                          got.starts_at - wall if got is not None and got.starts_at is not None else None,
                          got.at - since if got is not None else None)
    return pages


def _s(v: float | None) -> str:
    return f"{v:.1f}" if v is not None else "-"


def _stage(pages: list[Page], stage: Callable[[Page], float | None]) -> str:
    values = [v for v in map(stage, pages) if v is not None]
    if not values:
        return "-"
    return "/".join(f"{v:.1f}" for v in (min(values), statistics.median(values), max(values)))


STAGES: dict[str, Callable[[Page], float | None]] = {
    "fault->look": lambda g: g.looked,
    "look->active": lambda g: g.active - g.looked if g.active is not None and g.looked is not None else None,
    "fault->active": lambda g: g.active,
    "active->firing": lambda g: g.firing - g.active if g.firing is not None and g.active is not None else None,
    "firing->webhook": lambda g: g.delivered - g.firing if g.delivered is not None and g.firing is not None
    else None,
    "fault->webhook": lambda g: g.delivered,
    # without the polling's phase, which is where each path's grid happens to fall (zero on average)
    "look->webhook": lambda g: g.delivered - g.looked if g.delivered is not None and g.looked is not None else None,
}


def print_round(k: int, r: dict[str, dict[str, Page]]) -> None:
    for name, by in r.items():
        cells = ["/".join(_s(v) for v in (g.looked, g.active, g.firing, g.delivered)) for g in (by[v] for v in PATHS)]
        print(f"{k:<6}{name:18}{cells[0]:>26}{cells[1]:>26}", flush=True)


def report(rounds: list[dict[str, dict[str, Page]]]) -> None:
    print("\ntime to page, per round (s from the fault): first look / active / firing / at the webhook")
    print(f"{'round':6}{'incident':18}{'mevwatch':>26}{'stack':>26}")
    for i, r in enumerate(rounds, 1):
        print_round(i, r)
    print(f"\nmin/median/max of {len(rounds)} rounds, s")
    print(f"{'incident':18}{'stage':17}{'mevwatch':>20}{'stack':>20}")
    for name in INCIDENTS:
        for stage, f in STAGES.items():
            cells = [_stage([r[name][via] for r in rounds], f) for via in PATHS]
            print(f"{name:18}{stage:17}{cells[0]:>20}{cells[1]:>20}")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="steady-state window (0: time to page only)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of the three incidents")
    ap.add_argument("--eval-interval", type=float, default=1.0, help="Prometheus' evaluation interval, seconds")
    ap.add_argument("--timeout", type=float, default=240.0, help="longest wait for a page, seconds")
    args = ap.parse_args()
    print(f"machine: {machine()}; load average {load_average()}")
    print("intervals: " + ", ".join(f"{k} {interval(k):g}s" for k in KINDS))
    usage: dict[str, tuple[float, float]] = {}
    rounds: list[dict[str, dict[str, Page]]] = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        p = stack.enter_context(peers(own_postgres=True, watched_files=0))
        daemon = stack.enter_context(RunningDaemon(p.tmp, mevwatch_config(p)))
        assert daemon.proc is not None
        started_stack, prometheus_url = the_stack(stack, p, tmp, args.eval_interval)
        pids = {"mevwatch": daemon.proc.pid, **started_stack}
        apis = {"mevwatch": daemon.url, "alertmanager": prometheus_url}
        watcher = stack.enter_context(Watcher(p).running())
        time.sleep(60)  # first scrapes, first runs, caches and TSDB head settled
        if args.minutes > 0:
            print(f"steady state for {args.minutes:g} min, load average {load_average()}")
            usage = steady(pids, args.minutes * 60)
            print(f"load average after {load_average()}")
        rng = random.Random()
        for k in range(args.repeat):
            delays = {name: rng.uniform(0.0, interval(POLLED_BY[name])) for name in INCIDENTS}
            print(f"round {k + 1}/{args.repeat}, load average {load_average()}; faults after "
                  + ", ".join(f"{name} {d:.1f} s" for name, d in delays.items()), flush=True)
            watcher.mark()
            with ThreadPoolExecutor(len(INCIDENTS)) as pool:
                futures = {name: pool.submit(play, p, watcher, name, delays[name], args.timeout, apis)
                           for name in INCIDENTS}
                rounds.append({name: f.result() for name, f in futures.items()})
            print_round(k + 1, rounds[-1])
            time.sleep(35)  # Alertmanager drops emptied groups every 30 s: the next round meets new ones
        print(f"load average at the end {load_average()}")

    mib = 2**20
    if usage:
        stack_names = [n for n in usage if n != "mevwatch"]
        print(f"\n{'':20}{'CPU s/hour':>12}{'RSS MiB':>10}")
        for n, (cpu, rss) in usage.items():
            print(f"{n:20}{cpu:12.1f}{rss / mib:10.1f}")
        total_cpu = sum(usage[n][0] for n in stack_names)
        total_rss = sum(usage[n][1] for n in stack_names)
        print(f"{'stack total':20}{total_cpu:12.1f}{total_rss / mib:10.1f}")
        mw_cpu, mw_rss = usage["mevwatch"]
        record("whole stack: CPU per hour", mevwatch=mw_cpu, unit="s", anchor_name="exporters+Prometheus+AM",
               anchor=total_cpu, goal="<= the stack", met=mw_cpu <= total_cpu)
        record("whole stack: RSS", mevwatch=mw_rss / mib, unit="MiB", anchor_name="exporters+Prometheus+AM",
               anchor=total_rss / mib, goal="<= the stack", met=mw_rss <= total_rss)
    report(rounds)
    for name in INCIDENTS:
        mw = [d for r in rounds if (d := r[name]["mevwatch"].delivered) is not None]
        st = [d for r in rounds if (d := r[name]["alertmanager"].delivered) is not None]
        if rounds and len(mw) == len(st) == len(rounds):
            mw_med, st_med = statistics.median(mw), statistics.median(st)
            record(f"whole stack: time to page, {name} (median of {len(rounds)})", mevwatch=mw_med, unit="s",
                   anchor_name="stack", anchor=st_med, goal="<= the stack", met=mw_med <= st_med)
    return 0


if __name__ == "__main__":
    sys.exit(main())
