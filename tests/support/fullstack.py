"""mevwatch with every collector against real peers, for the dashboard, cardinality and scrape checks.

Peers: anvil (behind ``endpoints`` fault proxies that also answer net_peerCount, which anvil lacks),
a throwaway PostgreSQL cluster with pg_stat_statements (``tables`` tables), an engine stub for the
http collector, temp files for integrity, logwatch and disk; a real Prometheus scraping it every second.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mevwatch.collectors.memory import detect_memory_cgroup
from tests.support.anvil import Anvil, start_anvil
from tests.support.daemon import RunningDaemon
from tests.support.engine import EngineStub
from tests.support.peers import REPO, free_port, need_binary, start_process, stop_process
from tests.support.pgcluster import PgCluster, pg_cluster
from tests.support.rpcproxy import Fault, ThreadedRpcProxy

__all__ = ["FullStack", "Prometheus", "full_stack", "memory_cgroup", "oom_kill", "prometheus_scraping", "wait_until"]

# anvil's second default account: a watched wallet with a balance and a nonce.
WALLET = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
DEV_ACCOUNT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


@dataclass
class FullStack:
    tmp: Path
    anvil: Anvil
    proxies: list[ThreadedRpcProxy]
    engine: EngineStub
    daemon: RunningDaemon
    pg: PgCluster
    database: str
    watched: list[Path]
    logfile: Path
    oom_cgroup: str | None

    def send_transaction(self) -> None:
        self.anvil.rpc("eth_sendTransaction", [{"from": WALLET, "to": DEV_ACCOUNT, "value": "0x1"}])


def _config(tmp: Path, anvil: Anvil, proxies: list[ThreadedRpcProxy], engine: EngineStub, dsn: str,
            watched: list[Path], logfile: Path, oom_cgroup: str | None) -> str:
    rpc_eps = "\n".join(f"        - {{name: node{i}, url: '{p.url}'}}" for i, p in enumerate(proxies))
    files = ", ".join(f"'{p}'" for p in watched)
    bid = tmp / "detection-config.yaml"
    bid.write_text("detection:\n  gas_price_multiplier: 1.1\n")
    (tmp / "backup").mkdir(exist_ok=True)
    (tmp / "backup" / "mev-full-1.tar").write_bytes(b"x" * 4096)
    cgroups = f"[{oom_cgroup}]" if oom_cgroup else "[]"
    return f"""\
state_dir: {tmp / 'state'}
alerts:
  enabled: true
  evaluation_interval: 1s
  startup_grace: 0s
collectors:
  - process: {{interval: 1s}}
  - memory: {{interval: 1s, cgroups: {cgroups}}}
  - oomkill: {{interval: 1s}}
  - cpu: {{interval: 1s}}
  - filesystems:
      interval: 1s
      fill_window: 10s
  - directories:
      interval: 1s
      paths: ['{tmp / 'watched'}']
  - backups:
      interval: 1s
      patterns: ['{tmp / 'backup'}/mev-full-*']
  - services: {{interval: 2s}}
  - logwatch:
      interval: 1s
      sources: [{{name: mev, paths: ['{logfile}']}}, {{name: rotated_away, paths: ['{tmp / "gone.log"}']}}]
      journal: {{enabled: false}}
      start_at: beginning
  - integrity:
      interval: 1s
      files: [{files}]
      auto_baseline: true
      verify_interval: 5s
  - http:
      interval: 1s
      targets:
        - {{name: health, url: '{engine.url("/health")}', json_check: 'status == "ok"', timeout: 1s}}
        - {{name: opportunities, url: '{engine.url("/api/v2/opportunities")}', timeout: 1s}}
  - rpc:
      interval: 1s
      endpoints:
{rpc_eps}
      methods: [eth_blockNumber, eth_chainId]
  - chain:
      interval: 1s
      endpoints:
{rpc_eps}
      reference: {{name: reference, url: '{anvil.url}'}}
      expected_chain_id: 31337
  - mempool:
      interval: 1s
      endpoint: {{name: node0, url: '{anvil.url}'}}
  - mempool_stream:
      interval: 1s
      endpoint: {{name: node0, url: '{anvil.ws_url}'}}
      rate_window: 10s
  - gas:
      interval: 1s
      endpoint: {{name: node0, url: '{anvil.url}'}}
      bid: {{file: '{bid}', key: detection.gas_price_multiplier}}
  - wallet:
      interval: 1s
      endpoint: {{name: node0, url: '{anvil.url}'}}
      addresses: [{{name: executor, address: '{WALLET}'}}]
      allow_to: []
  - postgres:
      interval: 1s
      targets: [{{dsn: '{dsn}'}}]
      top_tables: 50
      slow_statement_threshold: 0s
"""


@contextlib.contextmanager
def full_stack(tmp: Path, *, watched_files: int = 20, endpoints: int = 5, tables: int = 50,
               oom_cgroup: str | None = None) -> Iterator[FullStack]:
    """The daemon with every shipped collector on, each against a real peer, 1 s intervals."""
    anvil = start_anvil("--block-time", "1")
    proxies: list[ThreadedRpcProxy] = []
    try:
        for _ in range(endpoints):
            proxy = ThreadedRpcProxy(anvil.url).__enter__()
            proxies.append(proxy)
            proxy.set("net_peerCount", Fault(result="0x19"))
        with pg_cluster({"shared_preload_libraries": "pg_stat_statements"}) as pg, EngineStub() as engine:
            database = "mev"
            pg.psql(f"CREATE DATABASE {database}")
            ddl = "".join(f"CREATE TABLE t{i:02d} (id int primary key, v text); "
                          f"INSERT INTO t{i:02d} SELECT g, 'x' FROM generate_series(1, 20) g; "
                          for i in range(tables))
            pg.psql("CREATE EXTENSION pg_stat_statements; " + ddl + "ANALYZE;", database)
            watched_dir = tmp / "watched"
            watched_dir.mkdir()
            watched = []
            for i in range(watched_files):
                p = watched_dir / f"config-{i:02d}.yaml"
                p.write_text(f"setting: {i}\n")
                watched.append(p)
            logfile = tmp / "mev.log"
            logfile.write_text("INFO started\nERROR Execution failed: reverted\nWARN slow block\n")
            text = _config(tmp, anvil, proxies, engine, pg.dsn(database), watched, logfile, oom_cgroup)
            with RunningDaemon(tmp, text) as daemon:
                yield FullStack(tmp, anvil, proxies, engine, daemon, pg, database, watched, logfile, oom_cgroup)
    finally:
        for proxy in proxies:
            proxy.__exit__()
        anvil.stop()


@contextlib.contextmanager
def memory_cgroup(limit: int = 64 << 20) -> Iterator[str | None]:
    """A memory cgroup limited to ``limit`` bytes (name relative to the hierarchy root), or None without root."""
    layout = detect_memory_cgroup(Path("/sys"))
    if os.geteuid() != 0 or layout is None:
        yield None
        return
    name = f"mevwatch-e2e-{secrets.token_hex(4)}"
    path = layout.root / name
    try:
        path.mkdir()
    except OSError:  # read-only cgroupfs in a container
        yield None
        return
    try:
        if layout.version == 1:
            (path / "memory.limit_in_bytes").write_text(str(limit))
            if (path / "memory.memsw.limit_in_bytes").exists():  # no escape into swap
                (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
        else:
            (path / "memory.max").write_text(str(limit))
            if (path / "memory.swap.max").exists():
                (path / "memory.swap.max").write_text("0")
        yield name
    finally:
        remove_cgroup(path)


def remove_cgroup(path: Path, timeout: float = 5.0) -> None:
    """rmdir a cgroup once its last (killed) task is torn down, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while path.exists():
        try:
            path.rmdir()
        except OSError:  # its last task is still being torn down
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# Names itself, waits until it is in the cgroup, then allocates 8 MiB at a time; gives up at 512 MiB,
# so a limit that did not apply can never eat the host's memory.
_HOG = """
import ctypes, sys
ctypes.CDLL(None).prctl(15, b"mevwatch-hog", 0, 0, 0)
sys.stdin.readline()
chunks = []
while len(chunks) < 64:
    chunks.append(b"\\x01" * (8 << 20))
sys.exit(3)
"""


def oom_kill(cgroup: str) -> int:
    """Run a memory hog in ``cgroup`` until the kernel OOM-kills it; returns its exit code (-9 when killed)."""
    layout = detect_memory_cgroup(Path("/sys"))
    assert layout is not None
    proc = subprocess.Popen([sys.executable, "-c", _HOG], stdin=subprocess.PIPE)
    try:
        (layout.root / cgroup / "cgroup.procs").write_text(str(proc.pid))
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@dataclass
class Prometheus:
    port: int
    proc: subprocess.Popen[bytes]

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422: the query's error is in the body
            raise AssertionError(f"query {expr!r}: HTTP {exc.code}: {exc.read()[:500]!r}") from None
        if doc.get("status") != "success":
            raise AssertionError(f"query {expr!r}: {doc}")
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result


@contextlib.contextmanager
def prometheus_scraping(tmp: Path, target_ports: list[int], rules: Path | None = None) -> Iterator[Prometheus]:
    """/usr/bin/prometheus scraping mevwatch on ``target_ports`` every second into a temp TSDB."""
    binary = need_binary("prometheus")
    port = free_port()
    cfg = tmp / "prometheus.yml"
    # the shipped scrape job's relabelling (deploy/prometheus/prometheus.yml), one host per target
    shipped = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]
    cfg.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)] if rules else [],
        "scrape_configs": [{
            "job_name": "mevwatch",
            "static_configs": [{"targets": [f"127.0.0.1:{p}"], "labels": {"host": f"mev-host-{i}"}}
                               for i, p in enumerate(target_ports, start=1)],
            "metric_relabel_configs": shipped["metric_relabel_configs"],
        }],
    }))
    data = tmp / "prometheus-data"
    proc = start_process([binary, f"--config.file={cfg}", f"--storage.tsdb.path={data}",
                          f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                         port=port, log=tmp / "prometheus.log", timeout=20.0)
    try:
        # it listens before its TSDB is open, and answers queries 503 until /-/ready says 200
        wait_until("Prometheus ready", lambda: _http_ok(f"http://127.0.0.1:{port}/-/ready"), 30.0)
        yield Prometheus(port, proc)
    finally:
        stop_process(proc)
        shutil.rmtree(data, ignore_errors=True)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"{what} not seen within {timeout:.0f}s")
