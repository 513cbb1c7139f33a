"""mevwatch demo: real peers, Prometheus and Alertmanager on loopback ports, then the runbook's incidents
one by one, each alert printed as it reaches the webhook with its time to detect. Usage: make demo
(DEMO_ARGS="--incident config-edit"), or python bench/demo.py --list
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType, TracebackType

import yaml
from _common import REPO, free_port
from _stack import Peers, mevwatch_config, peers

sys.path.insert(0, str(REPO))

from tests.support.daemon import RunningDaemon, sample_value
from tests.support.peers import need_binary, start_process, stop_process
from tests.support.rpcproxy import Fault

MEMCG_ROOT = Path("/sys/fs/cgroup/memory")
HOG_LIMIT = 64 * 2**20
TMPFS_SIZE = "16m"

# Default rules whose `for` outlasts a demo; the same rules, sooner. Everything else keeps its default.
SOONER = {
    "DiskSpaceHigh": "0s",
    "DiskFillingUp": "0s",
    "RpcCircuitBreakerOpen": "0s",
    "NodeDown": "3s",
    "PostgresSlowStatements": "0s",
}

# A process naming itself mev-memhog (so the kernel's OOM line names it), allocating until killed.
HOG = """\
import ctypes, time
ctypes.CDLL(None).prctl(15, b"mev-memhog", 0, 0, 0)
chunks = []
while True:
    chunks.append(bytearray(8 * 2**20))
    time.sleep(0.05)
"""


class Stop(BaseException):
    """SIGTERM or SIGHUP: leave through the same cleanup as Ctrl-C (a BaseException, like KeyboardInterrupt,
    so no `except Exception` on the way swallows it)."""


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


# --- what arrives at the webhook ----------------------------------------------------------------


@dataclass
class Arrival:
    via: str  # "mevwatch" (its webhook sink) or "alertmanager" (mevwatch -> Alertmanager -> webhook)
    alertname: str
    status: str
    labels: dict[str, str]
    summary: str
    at: float  # time.monotonic() on arrival
    starts_at: float | None = None  # the payload's startsAt (epoch seconds): when the alert began firing


def epoch(rfc3339: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 time as Alertmanager (nanoseconds, any offset) and mevwatch
    write it; None when absent or Go's zero time."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", rfc3339)
    if m is None or rfc3339.startswith("0001-"):
        return None
    offset = "+00:00" if m[3] == "Z" else m[3]
    return datetime.fromisoformat(m[1] + offset).timestamp() + float("0." + (m[2] or "0"))


@dataclass
class Watcher:
    """Prints every new alert state reaching the webhook, from both paths, as it arrives."""

    peers: Peers
    arrivals: list[Arrival] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    _seen: dict[tuple[str, str], str] = field(default_factory=dict)  # (path, labels) -> last status
    _done: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self) -> float:
        """An incident starts now: detection times are measured from here."""
        self.t0 = time.monotonic()
        return self.t0

    def poll(self) -> None:
        requests = self.peers.webhook.delivered()
        with self._lock:
            for req in requests[self._done:]:
                via = "alertmanager" if req.path.startswith("/alertmanager") else "mevwatch"
                for a in req.json().get("alerts", []):
                    labels = {k: str(v) for k, v in a.get("labels", {}).items()}
                    # a new state of the alert; firing again after resolved is a new one (a repeated incident)
                    key = (via, json.dumps(sorted(labels.items())))
                    status = a.get("status", "")
                    if self._seen.get(key) == status:
                        continue
                    self._seen[key] = status
                    arrival = Arrival(via, labels.get("alertname", "?"), a.get("status", "?"), labels,
                                      a.get("annotations", {}).get("summary", ""), req.at,
                                      epoch(str(a.get("startsAt", ""))))
                    self.arrivals.append(arrival)
                    self._print(arrival)
            self._done = len(requests)

    def _print(self, a: Arrival) -> None:
        extra = {k: v for k, v in a.labels.items() if k not in ("alertname", "severity", "host", "instance")}
        detail = " ".join(f"{k}={v}" for k, v in sorted(extra.items()))
        path = "mevwatch -> webhook" if a.via == "mevwatch" else "mevwatch -> Alertmanager -> webhook"
        log(f"  {a.status.upper():8} {a.alertname} [{a.labels.get('severity', '')}] {detail}")
        log(f"           +{a.at - self.t0:6.2f}s via {path}: {a.summary}")

    def first(self, alertname: str, via: str, since: float, labels: dict[str, str],
              status: str = "firing") -> Arrival | None:
        with self._lock:
            return next((a for a in self.arrivals if a.alertname == alertname and a.via == via
                         and a.status == status and a.at >= since
                         and all(a.labels.get(k) == v for k, v in labels.items())), None)

    def run(self) -> None:
        while not self._stop.wait(0.1):
            self.poll()

    @contextlib.contextmanager
    def running(self) -> Iterator[Watcher]:
        thread = threading.Thread(target=self.run, name="demo-watcher", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(5)


# --- the demo's world ---------------------------------------------------------------------------


@dataclass
class World:
    peers: Peers
    daemon: RunningDaemon
    prometheus_port: int
    alertmanager_port: int
    disk: Path | None  # the tmpfs the disk incident fills (root only)
    cgroup: str | None  # memory cgroup of the OOM incident, below the hierarchy root (root only)

    def prometheus(self, expr: str) -> str:
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as resp:
            result = json.loads(resp.read())["data"]["result"]
        return ", ".join(r["value"][1] for r in result) or "no data"


@dataclass(frozen=True)
class Incident:
    name: str
    runbook: str  # section of the troubleshooting guide
    alerts: tuple[str, ...]  # what should arrive, by both paths
    promql: str  # what Prometheus sees of it: an expression with data only during the incident
    start: Callable[[World], Callable[[], None]]  # starts the incident; returns its undo
    root: bool = False
    why_skipped: Callable[[World], str | None] = lambda _: None
    labels: dict[str, str] = field(default_factory=dict)  # the expected alerts carry these ({disk}: the tmpfs)
    timeout: float = 60.0


def oom(w: World) -> Callable[[], None]:
    assert w.cgroup is not None
    procs = MEMCG_ROOT / w.cgroup.strip("/") / "cgroup.procs"
    log(f"  a process allocating 8 MiB every 50 ms in memory cgroup {w.cgroup} (limit 64 MiB)")
    hog = subprocess.Popen(
        ["sh", "-c", f'echo $$ > {procs} && exec "$0" -c "$1"', sys.executable, HOG],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )

    def undo() -> None:
        if hog.poll() is None:
            hog.kill()
        hog.wait(10)
        log(f"  the hog ended with {hog.returncode} (-9: killed by the OOM killer)")

    return undo


def disk(w: World) -> Callable[[], None]:
    assert w.disk is not None
    big = w.disk / "blocks.dat"
    log(f"  writing to {w.disk} (tmpfs, {TMPFS_SIZE}) at 1 MiB every 200 ms until it is full")

    stop = threading.Event()

    def fill() -> None:
        try:
            with big.open("wb") as f:
                while not stop.wait(0.2):
                    f.write(b"\0" * 2**20)
                    f.flush()
        except OSError as exc:
            # what the engine's log would say; logwatch counts it (NoSpaceLeftLogged)
            with w.peers.logfile.open("a") as lf:
                lf.write(f"ERROR write {big}: {exc.strerror}: No space left on device\n")

    thread = threading.Thread(target=fill, name="disk-filler", daemon=True)
    thread.start()

    def undo() -> None:
        stop.set()
        thread.join(10)
        big.unlink(missing_ok=True)

    return undo


def config_edit(w: World) -> Callable[[], None]:
    target = w.peers.watched[0]
    log(f"  appending a line to {target} (watched by the integrity collector)")
    with target.open("a") as f:
        f.write("detection: {min_profit_wei: 0}\n")

    def undo() -> None:
        subprocess.run([sys.executable, "-m", "mevwatch", "integrity", "accept", "-c", str(w.daemon.config)],
                       capture_output=True, timeout=30, check=True)
        log("  edit accepted into the baseline (mevwatch integrity accept)")

    return undo


def node_hang(w: World) -> Callable[[], None]:
    log("  the fault proxy in front of anvil stops answering every JSON-RPC call")
    w.peers.proxy.set("*", Fault(hang=True))

    def undo() -> None:
        w.peers.proxy.clear("*")
        log("  the proxy answers again (the breaker closes after its 30 s recovery time)")

    return undo


def slow_query(w: World) -> Callable[[], None]:
    log("  SELECT pg_sleep(1.2) in the demo cluster (slow_statement_threshold 500ms)")
    w.peers.psql("SELECT pg_sleep(1.2)")

    def undo() -> None:
        w.peers.psql("SELECT pg_stat_statements_reset()")

    return undo


def _need_pg_stat_statements(w: World) -> str | None:
    return None if w.peers.pg is not None else "needs the demo's own cluster with pg_stat_statements (root)"


INCIDENTS = (
    Incident("oom", "High Memory Usage Leading to OOM Kills", ("OomKill",),
             'mevwatch_oom_kills_total{{comm="mev-memhog"}}', oom, root=True, labels={"comm": "mev-memhog"}),
    Incident("disk", "Disk Space Exhaustion", ("DiskSpaceHigh", "NoSpaceLeftLogged"),
             'mevwatch_filesystem_used_ratio{{mountpoint="{disk}"}} > 0.85', disk, root=True),
    Incident("config-edit", "Security Incidents (file integrity)", ("IntegrityViolation",),
             "mevwatch_integrity_violation == 1", config_edit),
    Incident("node-hang", "RPC Endpoint Timeouts / Node Disconnections", ("RpcCircuitBreakerOpen", "NodeDown"),
             'mevwatch_rpc_circuit_breaker_state{{state="open"}} == 1', node_hang),
    Incident("slow-query", "Database Query Performance Degradation", ("PostgresSlowStatements",),
             "mevwatch_postgres_slow_statements > 0", slow_query, why_skipped=_need_pg_stat_statements),
)


def play(w: World, watcher: Watcher, incident: Incident) -> list[tuple[str, str, float | None]]:
    """Start the incident, wait for each expected alert by both paths, undo it; (alert, via, seconds)."""
    log(f"== incident {incident.name}: {incident.runbook}")
    since = watcher.mark()
    undo = incident.start(w)
    results: list[tuple[str, str, float | None]] = []
    try:
        deadline = since + incident.timeout
        wanted = [(a, via) for a in incident.alerts for via in ("mevwatch", "alertmanager")]
        # the kernel log and the root filesystem are shared: only this incident's alerts count
        labels = {k: v.format(disk=w.disk, cgroup=w.cgroup) for k, v in incident.labels.items()}
        while time.monotonic() < deadline and not all(watcher.first(a, via, since, labels) for a, via in wanted):
            time.sleep(0.2)
        for a, via in wanted:
            got = watcher.first(a, via, since, labels)
            results.append((a, via, got.at - since if got else None))
            if got is None:
                log(f"  NOT SEEN within {incident.timeout:.0f}s: {a} via {via}")
        with contextlib.suppress(OSError, KeyError, ValueError):
            seen = "no data"
            expr = incident.promql.format(disk=w.disk, cgroup=w.cgroup)
            for _ in range(20):  # its next 1 s scrape
                seen = w.prometheus(expr)
                if seen != "no data":
                    break
                time.sleep(0.25)
            log(f"  Prometheus sees {expr}: {seen}")
    finally:
        undo()
    return results


# --- setup and teardown -------------------------------------------------------------------------


def _sooner_rules(disk: Path | None) -> str:
    defaults = yaml.safe_load((REPO / "alerts" / "default_rules.yaml").read_text())["rules"]
    rules = [{**r, "for": SOONER[r["name"]]} for r in defaults if r["name"] in SOONER]
    # sooner disk rules only for the demo's tmpfs: the machine's own disks keep the real rules
    rules = [r for r in rules if disk is not None or not r["metric"].startswith("mevwatch_filesystem_")]
    for r in rules:
        if disk is not None and r["metric"].startswith("mevwatch_filesystem_"):
            r["matchers"] = [f'mountpoint="{disk}"']
    return "\n".join("    - " + json.dumps(r) for r in rules)


def alerts_config(hook_url: str, alertmanager_port: int, disk: Path | None) -> str:
    return f"""\
  enabled: true
  host: demo
  evaluation_interval: 1s
  startup_grace: 0s
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  receivers:
    - name: demo
      webhook_configs: [{{url: '{hook_url.rsplit('/', 1)[0]}/mevwatch', timeout: 2s}}]
      alertmanager_configs: [{{urls: ['http://127.0.0.1:{alertmanager_port}'], resend_delay: 5s, timeout: 2s}}]
  receiver: demo
  rules:
{_sooner_rules(disk)}
"""


@contextlib.contextmanager
def tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "mevwatch-demo", str(path)],
                   check=True, capture_output=True, timeout=10)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=10).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)
        log(f"unmounted {path}")


@contextlib.contextmanager
def memory_cgroup(name: str) -> Iterator[str]:
    path = MEMCG_ROOT / name
    path.mkdir()
    try:
        (path / "memory.limit_in_bytes").write_text(str(HOG_LIMIT))
        with contextlib.suppress(OSError):  # only with swap accounting: no escape into swap
            (path / "memory.memsw.limit_in_bytes").write_text(str(HOG_LIMIT))
        yield "/" + name
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        log(f"removed memory cgroup {path}" if not path.exists() else f"could not remove {path}")


@contextlib.contextmanager
def prometheus(tmp: Path, target_port: int) -> Iterator[int]:
    port = free_port()
    cfg = tmp / "prometheus.yml"
    cfg.write_text(f"""\
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: mevwatch
    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]
""")
    proc = start_process([need_binary("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'prom'}",
                          f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                         port=port, log=tmp / "prometheus.log", timeout=30)
    try:
        yield port
    finally:
        stop_process(proc)


@contextlib.contextmanager
def alertmanager(tmp: Path, hook_url: str) -> Iterator[int]:
    port = free_port()
    cfg = tmp / "alertmanager.yml"
    cfg.write_text(f"""\
route: {{receiver: hook, group_by: [alertname], group_wait: 0s, group_interval: 1s, repeat_interval: 4h}}
receivers:
  - name: hook
    webhook_configs: [{{url: '{hook_url.rsplit('/', 1)[0]}/alertmanager', send_resolved: true}}]
""")
    proc = start_process([need_binary("prometheus-alertmanager"), f"--config.file={cfg}",
                          f"--storage.path={tmp / 'am'}", f"--web.listen-address=127.0.0.1:{port}",
                          "--cluster.listen-address=", "--log.level=warn"],
                         port=port, log=tmp / "alertmanager.log", timeout=30)
    try:
        yield port
    finally:
        stop_process(proc)


@contextlib.contextmanager
def traffic(p: Peers) -> Iterator[None]:
    """A transaction every 2 s straight to anvil, as a live host has: the mempool stream never goes silent."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(2.0):
            with contextlib.suppress(Exception):
                p.send_transaction()

    thread = threading.Thread(target=run, name="demo-traffic", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def wait_ready(daemon: RunningDaemon, world: World, timeout: float = 30.0) -> None:
    """Until every collector has succeeded once (its first run proves its peer answers) and Prometheus scraped."""
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while time.monotonic() < deadline:
        text = daemon.get()
        pending = [k for k in ("process", "memory", "filesystems", "integrity", "rpc", "chain", "postgres", "logwatch")
                   if sample_value(text, "mevwatch_collector_success", collector=k) != 1]
        with contextlib.suppress(OSError, KeyError, ValueError):
            if world.prometheus('up{job="mevwatch"}') != "1":
                pending.append("Prometheus scrape")
        if not pending:
            return
        time.sleep(0.5)
    log(f"warning: collectors not yet succeeding after {timeout:.0f}s: {', '.join(pending)}")


class Cleanup(contextlib.ExitStack):
    """Unwinds with Ctrl-C and SIGTERM held off, so a second one cannot leave a mount or a process behind."""

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        held = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            return bool(super().__exit__(exc_type, exc, tb))
        finally:
            for s, handler in held.items():
                signal.signal(s, handler)


def demo(selected: list[Incident], root: bool) -> int:
    with Cleanup() as stack:
        log("starting anvil, the fault proxy, PostgreSQL, the engine stub and the webhook receiver ...")
        p = stack.enter_context(peers(own_postgres=root))
        log(f"  anvil {p.anvil.url} behind the proxy {p.proxy.url}; PostgreSQL {p.pg_dsn}; webhook {p.webhook.url}")
        disk_mount = cgroup = None
        if root and any(i.name == "disk" for i in selected):
            disk_mount = stack.enter_context(tmpfs(p.tmp / "disk"))
            log(f"  tmpfs of {TMPFS_SIZE} at {disk_mount}")
        if root and any(i.name == "oom" for i in selected):
            cgroup = stack.enter_context(memory_cgroup(f"mevwatch-demo-{os.getpid()}"))
            log(f"  memory cgroup {MEMCG_ROOT}{cgroup} limited to {HOG_LIMIT // 2**20} MiB")
        am_port = stack.enter_context(alertmanager(p.tmp, p.webhook.url))
        alerts = alerts_config(p.webhook.url, am_port, disk_mount)
        text = mevwatch_config(p, alerts=alerts, disk_only=disk_mount, cgroup=cgroup)
        daemon = stack.enter_context(RunningDaemon(p.tmp, text))
        prom_port = stack.enter_context(prometheus(p.tmp, daemon.port))
        log(f"  mevwatch {daemon.url}/metrics; Alertmanager http://127.0.0.1:{am_port}; "
            f"Prometheus http://127.0.0.1:{prom_port}")
        stack.enter_context(traffic(p))
        world = World(p, daemon, prom_port, am_port, disk_mount, cgroup)
        watcher = stack.enter_context(Watcher(p).running())
        wait_ready(daemon, world)
        log("mevwatch is up; alerts already firing before the incidents are printed above")

        results: list[tuple[str, str, str, float | None]] = []
        for incident in selected:
            if incident.root and not root:
                log(f"== incident {incident.name}: SKIPPED, needs root (run make demo as root)")
                continue
            reason = incident.why_skipped(world)
            if reason:
                log(f"== incident {incident.name}: SKIPPED, {reason}")
                continue
            results += [(incident.name, a, via, t) for a, via, t in play(world, watcher, incident)]
            time.sleep(2)  # resolutions of this incident print before the next one starts

        log("== time to detect (from the start of each incident to the webhook)")
        for name, alert, via, t in results:
            shown = f"{t:6.2f} s" if t is not None else "  NOT SEEN"
            log(f"  {name:<12} {alert:<24} {via:<13} {shown}")
        made = [str(p.tmp)] + [str(disk_mount)] * bool(disk_mount) + [f"{MEMCG_ROOT}{cgroup}"] * bool(cgroup)
        missed = [r for r in results if r[3] is None]
        log("cleaning up ...")
    left = [m for m in made if Path(m).exists()]
    log(f"done: every process stopped; removed {', '.join(made)}" + (f"; STILL THERE: {left}" if left else ""))
    return 1 if missed else 0


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--incident", action="append", choices=[i.name for i in INCIDENTS], metavar="NAME",
                    help="play only this incident (repeatable; default: all, in order)")
    ap.add_argument("--list", action="store_true", help="list the incidents and exit")
    ap.add_argument("--no-root", action="store_true",
                    help="play as an unprivileged user would even as root: no tmpfs, cgroup or own PostgreSQL")
    args = ap.parse_args(argv)
    if args.list:
        for i in INCIDENTS:
            print(f"{i.name:<12} {i.runbook}; alerts {', '.join(i.alerts)}" + (" (needs root)" if i.root else ""))
        return 0
    selected = [i for i in INCIDENTS if not args.incident or i.name in args.incident]
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        return demo(selected, root=os.geteuid() == 0 and not args.no_root)
    except (KeyboardInterrupt, Stop) as exc:
        log(f"interrupted ({type(exc).__name__} {exc}); everything was stopped and removed")
        return 130
    except BaseException as exc:  # pytest's skip for a missing peer is a BaseException
        if type(exc).__name__ in ("Skipped", "Failed"):
            log(f"a peer is missing: {exc}")
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
