"""Real peers for every mevwatch collector (anvil behind the fault proxy, PostgreSQL, an engine stub,
a webhook receiver, temp files) and a config pointing each collector at them; used by demo and soak.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import REPO

sys.path.insert(0, str(REPO))

from tests.support.anvil import Anvil, start_anvil
from tests.support.engine import EngineStub
from tests.support.pgcluster import PgCluster, local_psql, scratch_database
from tests.support.rpcproxy import Fault, ThreadedRpcProxy
from tests.support.webhook import WebhookReceiver

__all__ = ["WALLET", "Peers", "mevwatch_config", "peers"]

# anvil's second default account: a watched wallet with a balance, sending now and then.
WALLET = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
DEV_ACCOUNT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
TABLES = 20


@dataclass
class Peers:
    tmp: Path
    anvil: Anvil
    proxy: ThreadedRpcProxy  # every JSON-RPC collector talks to anvil through it
    engine: EngineStub
    webhook: WebhookReceiver
    pg: PgCluster | None  # None: a scratch database on the machine's server at 127.0.0.1:5432
    pg_dsn: str
    watched: list[Path]
    logfile: Path
    bid_file: Path
    backup_dir: Path

    def psql(self, sql: str) -> str:
        if self.pg is not None:
            return self.pg.psql(sql, db="mev")
        return local_psql(sql, self.pg_dsn.rsplit("/", 1)[1])

    def send_transaction(self) -> None:
        self.anvil.rpc("eth_sendTransaction", [{"from": WALLET, "to": DEV_ACCOUNT, "value": "0x1"}])

    def rpc_via_proxy(self, method: str) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": []}).encode()
        req = urllib.request.Request(self.proxy.url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read()).get("result")


def _prepare_database(run: Any) -> None:
    ddl = "".join(f"CREATE TABLE IF NOT EXISTS t{i:02d} (id int primary key, v text); "
                  f"INSERT INTO t{i:02d} SELECT g, 'x' FROM generate_series(1, 50) g ON CONFLICT DO NOTHING; "
                  for i in range(TABLES))
    run(ddl + "ANALYZE;")


@contextlib.contextmanager
def peers(own_postgres: bool = True, watched_files: int = 5) -> Iterator[Peers]:
    """Start every peer; all are stopped and the temp dir removed on exit, whatever happens inside.

    own_postgres: a throwaway cluster with pg_stat_statements preloaded (needs root), else a
    scratch database on the machine's server.
    """
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="mevwatch-stack-"))
        stack.callback(_rmtree, tmp)
        os.chmod(tmp, 0o755)
        anvil = start_anvil("--block-time", "1")
        stack.callback(anvil.log.unlink, missing_ok=True)
        stack.callback(anvil.stop)
        proxy = stack.enter_context(ThreadedRpcProxy(anvil.url))
        # anvil has no peers; a healthy-looking count keeps PeersLow quiet unless an incident says otherwise
        proxy.set("net_peerCount", Fault(result="0x19"))
        engine = stack.enter_context(EngineStub())
        webhook = WebhookReceiver().start()
        stack.callback(webhook.stop)
        pg: PgCluster | None = None
        if own_postgres:
            cluster = pg = PgCluster({"shared_preload_libraries": "pg_stat_statements"})
            stack.callback(cluster.remove)
            cluster.start()
            cluster.psql("CREATE DATABASE mev")
            cluster.psql("CREATE EXTENSION pg_stat_statements", db="mev")
            _prepare_database(lambda sql: cluster.psql(sql, db="mev"))
            dsn = cluster.dsn("mev")
        else:
            database = stack.enter_context(scratch_database("mevwatch_stack"))
            _prepare_database(lambda sql: local_psql(sql, database))
            dsn = f"postgresql://postgres@127.0.0.1:5432/{database}"
        watched_dir = tmp / "etc-mev"
        watched_dir.mkdir()
        watched = []
        for i in range(watched_files):
            p = watched_dir / f"config-{i:02d}.yaml"
            p.write_text(f"setting: {i}\n")
            watched.append(p)
        logfile = tmp / "mev.log"
        logfile.write_text("INFO detection started\n")
        bid = tmp / "detection-config.yaml"
        bid.write_text("detection:\n  gas_price_multiplier: 1.1\n")
        backup = tmp / "backup"
        backup.mkdir()
        (backup / "mev-full-1.tar").write_bytes(b"x" * 4096)
        yield Peers(tmp, anvil, proxy, engine, webhook, pg, dsn, watched, logfile, bid, backup)


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def mevwatch_config(p: Peers, *, interval: str = "1s", alerts: str = "", disk_only: Path | None = None,
                    cgroup: str | None = None, rpc_timeout: str = "1s") -> str:
    """Every collector on, each against its peer; ``alerts`` is the YAML of the `alerts:` mapping's body.

    disk_only: the disk collector reports this mount point alone (the demo's tmpfs).
    """
    files = ", ".join(f"'{f}'" for f in p.watched)
    exclude = f"'^(?!{disk_only}$)'" if disk_only else "'^/(dev|proc|sys|run/credentials/.+)($|/)'"
    watch_dir = disk_only if disk_only else p.tmp
    cgroups = f"['{cgroup}']" if cgroup else "[]"
    # a run must outlast one endpoint timeout, or a hung node fails the run instead of the probe, and stay
    # under twice the interval (1s here), past which its samples are stale and the config is rejected
    rpc_run_timeout = "1900ms"
    ep = f"{{name: node0, url: '{p.proxy.url}', timeout: {rpc_timeout}, connect_timeout: {rpc_timeout}}}"
    return f"""\
state_dir: {p.tmp / 'state'}
log: {{level: warning, format: json}}
alerts:
{alerts or '  enabled: false'}
collectors:
  - process: {{interval: {interval}}}
  - memory: {{interval: {interval}, units: [], cgroups: {cgroups}, top_processes: 5}}
  - oomkill: {{interval: {interval}}}
  - cpu: {{interval: {interval}}}
  - filesystems:
      interval: {interval}
      mount_points_exclude: {exclude}
      fill_window: 30s
  - directories:
      interval: {interval}
      paths: ['{watch_dir}']
  - backups:
      interval: {interval}
      patterns: ['{p.backup_dir}/mev-full-*']
  - services:
      interval: {interval}
      backend: process
      units: [{{name: anvil, comm: anvil}}, {{name: postgresql, comm: postgres}}]
  - logwatch:
      interval: {interval}
      sources: [{{name: mev, paths: ['{p.logfile}']}}]
      journal: {{enabled: false}}
      start_at: beginning
  - integrity:
      interval: {interval}
      files: [{files}]
      auto_baseline: true
      verify_interval: 10s
  - http:
      interval: {interval}
      targets:
        - {{name: health, url: '{p.engine.url("/health")}', json_check: 'status == "ok"', timeout: 1s}}
        - {{name: opportunities, url: '{p.engine.url("/api/v2/opportunities")}', timeout: 1s}}
  - rpc:
      interval: {interval}
      timeout: {rpc_run_timeout}
      endpoints: [{ep}]
      methods: [eth_blockNumber, eth_chainId]
      failure_threshold: 3
      recovery_time: 30s
  - chain:
      interval: {interval}
      timeout: {rpc_run_timeout}
      endpoints: [{ep}]
      reference: {{name: reference, url: '{p.anvil.url}'}}
      expected_chain_id: 31337
  - mempool:
      interval: {interval}
      timeout: {rpc_run_timeout}
      endpoint: {ep}
  - mempool_stream:
      interval: {interval}
      endpoint: {{name: node0, url: '{p.proxy.ws_url}'}}
      rate_window: 10s
  - gas:
      interval: {interval}
      timeout: {rpc_run_timeout}
      endpoint: {ep}
      bid: {{file: '{p.bid_file}', key: detection.gas_price_multiplier}}
  - wallet:
      interval: {interval}
      timeout: {rpc_run_timeout}
      endpoint: {ep}
      addresses: [{{name: executor, address: '{WALLET}'}}]
      allow_to: null
  - postgres:
      interval: {interval}
      targets: [{{dsn: '{p.pg_dsn}'}}]
      top_tables: 50
      slow_statement_threshold: 500ms
"""
