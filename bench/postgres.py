"""mevwatch's postgres collector vs prometheus-postgres-exporter on one database, over HTTP on both sides.

Starts a throwaway PostgreSQL 15 cluster (pg_stat_statements preloaded, planning time tracked) per
--tables count, fills a database with a bloated 100,000-row table and that many small ones, and points
three daemons at it, each as its own pg_monitor role:

- mevwatch: ``mevwatch run`` (HTTP server, alert engine with the default rules) with the postgres
  collector alone at --interval; its /metrics is scraped once per interval, as Prometheus would;
- the exporter at its defaults (no extra queries): what a user gets out of the box;
- the exporter with the per-table queries of its shipped example queries.yaml and upstream's
  stat_statements query (--extend.query-path): the nearest to mevwatch's coverage (per-table dead
  tuples, vacuum ages, the slowest statements), scraped once per interval too.

The Debian exporter (0.11) has no built-in stat_statements or per-table collectors, hence the query
file. Each daemon is measured in its own window of --runs collections, the three windows interleaved
--repeat times (min/median/max printed). Per collection: wall time (mevwatch: the duration it exports
for the run; exporter: the scrape, which is when it queries), CPU of the process (mevwatch's includes
its HTTP server, alert engine and the scrapes), and the server's plan+exec time of the role's own
statements (pg_stat_statements). The exporter measures database sizes on every scrape; mevwatch on its
own cadence, every database_size_interval (at its defaults, once per SIZE_RATIO collections: the default
database_size_interval over the default interval). Its server time per collection is its per-run
statements in the window plus its database-size statement's time per call over that ratio: the daemon
here measures the sizes every 10 collections, so that each window times at least one call (at the
defaults' ratio most windows of 10 would hold none, and their median would say nothing of the sizes).
Goals: server time at most the exporter's at its defaults, and flat (within 2x) from the smallest to the
largest --tables count.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from _common import (
    REPO,
    cpu_ns,
    free_port,
    load_average,
    machine,
    mevwatch_daemon,
    record,
    spread,
    start,
    stop,
)

sys.path.insert(0, str(REPO))

from prometheus_client.parser import text_string_to_metric_families

from mevwatch.collectors.postgres import PostgresCollector, PostgresOptions
from tests.support.pgcluster import PgCluster

EXPORTER = "/usr/bin/prometheus-postgres-exporter"
EXAMPLE_QUERIES = Path("/usr/share/doc/prometheus-postgres-exporter/examples/queries.yaml")
PASSWORD = "bench-only"
ROLES = {"mevwatch": "mevwatch_bench", "exporter (defaults)": "exporter_defaults",
         "exporter (per-table queries)": "exporter_tables"}
# upstream postgres_exporter's stat_statements collector query for PostgreSQL 13-16
STAT_STATEMENTS = {
    "pg_stat_statements": {
        "query": (
            "SELECT pg_get_userbyid(userid) as user, pg_database.datname, pg_stat_statements.queryid, "
            "pg_stat_statements.calls as calls_total, pg_stat_statements.total_exec_time / 1000.0 as seconds_total, "
            "pg_stat_statements.rows as rows_total, pg_stat_statements.blk_read_time / 1000.0 as "
            "block_read_seconds_total, pg_stat_statements.blk_write_time / 1000.0 as block_write_seconds_total "
            "FROM pg_stat_statements JOIN pg_database ON pg_database.oid = pg_stat_statements.dbid "
            "WHERE total_exec_time > (SELECT percentile_cont(0.1) WITHIN GROUP (ORDER BY total_exec_time) "
            "FROM pg_stat_statements) ORDER BY seconds_total DESC LIMIT 100"
        ),
        "metrics": [
            {"user": {"usage": "LABEL", "description": "user"}},
            {"datname": {"usage": "LABEL", "description": "database"}},
            {"queryid": {"usage": "LABEL", "description": "query id"}},
            {"calls_total": {"usage": "COUNTER", "description": "Number of times executed"}},
            {"seconds_total": {"usage": "COUNTER", "description": "Total time spent in the statement"}},
            {"rows_total": {"usage": "COUNTER", "description": "Rows retrieved or affected"}},
            {"block_read_seconds_total": {"usage": "COUNTER", "description": "Time reading blocks"}},
            {"block_write_seconds_total": {"usage": "COUNTER", "description": "Time writing blocks"}},
        ],
    }
}

# runbook concept -> (exporter family regex, mevwatch family regex); None: not exposed at all
CONCEPTS: list[tuple[str, str | None, str | None]] = [
    ("server up", r"^pg_up$", r"_up$"),
    ("server version", r"^pg_static$", r"_version_info$"),
    ("connections by database and state", r"^pg_stat_activity_count$", r"_postgres_connections$"),
    ("connections / max_connections ratio", None, r"_connections_used_ratio$"),
    ("max_connections", r"^pg_settings_max_connections$", r"_max_connections$"),
    ("oldest transaction age", r"^pg_stat_activity_max_tx_duration$", r"_oldest_transaction_age_seconds$"),
    ("idle-in-transaction age (idle time)", None, r"_oldest_idle_in_transaction_age_seconds$"),
    ("waiting locks", None, r"_locks_waiting$"),
    ("locks by mode", r"^pg_locks_count$", None),
    ("xid wraparound age per database", None, r"_database_xid_age$"),
    ("cache hit ratio", None, r"_database_cache_hit_ratio$"),
    ("blocks hit/read counters", r"^pg_stat_database_blks_hit$", None),
    ("database size", r"^pg_database_size_bytes$", r"_database_size_bytes$"),
    ("dead tuples per table", r"^pg_stat_user_tables_n_dead_tup$", r"_table_dead_tuples$"),
    ("dead tuple ratio per table", None, r"_table_dead_tuple_ratio$"),
    ("total table size", None, r"_table_size_bytes$"),
    ("last (auto)vacuum/analyze", r"^pg_stat_user_tables_last_autovacuum$", r"_table_last_(vacuum|analyze)_age"),
    ("table bloat", None, r"_table_bloat_bytes$"),
    ("index bloat", None, r"_index_bloat_bytes$"),
    ("statements over a mean-time threshold", None, r"_slow_statements$"),
    ("per-statement time and calls", r"^pg_stat_statements_seconds", r"_statement_mean_seconds$"),
    ("replication lag / slots", r"^pg_replication", None),
    ("bgwriter / checkpoints", r"^pg_stat_bgwriter", None),
    ("extension / privilege status", None, r"_extension_available$"),
]


def exporter_queries(path: Path) -> None:
    example = yaml.safe_load(EXAMPLE_QUERIES.read_text()) if EXAMPLE_QUERIES.exists() else {}
    chosen = {k: v for k, v in example.items() if k in ("pg_stat_user_tables", "pg_statio_user_tables")}
    path.write_text(yaml.safe_dump({**chosen, **STAT_STATEMENTS}, sort_keys=False))


def prepare(cluster: PgCluster, tables: int) -> None:
    roles = ";".join(f"CREATE ROLE {r} LOGIN PASSWORD '{PASSWORD}' IN ROLE pg_monitor, pg_read_all_data"
                     for r in ROLES.values())
    # the same grants for all: pg_monitor, and pg_read_all_data so pg_stats shows column widths
    cluster.psql(f"CREATE EXTENSION pg_stat_statements; {roles}")
    cluster.psql("CREATE DATABASE mev_db")
    cluster.psql(
        "CREATE EXTENSION pg_stat_statements; CREATE EXTENSION pgstattuple;"
        "CREATE TABLE mev_opportunities (id bigint PRIMARY KEY, chain text, profit numeric, detected_at timestamptz)"
        " WITH (autovacuum_enabled = false);"
        "INSERT INTO mev_opportunities SELECT g, 'eth', g * 0.001, now() - g * interval '1s'"
        " FROM generate_series(1, 100000) g;"
        "CREATE INDEX ON mev_opportunities (detected_at);"
        "ANALYZE mev_opportunities;"
        "DELETE FROM mev_opportunities WHERE id % 10 < 6",
        db="mev_db",
    )
    cluster.psql(
        f"DO $$ BEGIN FOR i IN 1..{tables} LOOP"
        " EXECUTE format('CREATE TABLE small_%s (id int PRIMARY KEY, v text)', i);"
        " EXECUTE format('INSERT INTO small_%s SELECT g, md5(g::text) FROM generate_series(1, 20) g', i);"
        " IF i % 500 = 0 THEN COMMIT; END IF; END LOOP; END $$",
        db="mev_db",
    )
    cluster.psql("ANALYZE", db="mev_db")
    for _ in range(3):
        cluster.psql("SELECT pg_sleep(0.12)", db="mev_db")
    for i in range(20):
        cluster.psql(f"SELECT count(*) FROM small_{i % tables + 1}", db="mev_db")


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return str(resp.read().decode())


def server_time(cluster: PgCluster, role: str) -> tuple[float, int]:
    """(plan+exec milliseconds, calls) of the role's statements since the last reset."""
    out = cluster.psql(
        "SELECT coalesce(sum(total_exec_time + total_plan_time), 0), coalesce(sum(calls), 0)"
        f" FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = '{role}'"
    )
    ms, calls = out.split("|")
    return float(ms), int(calls)


def mevwatch_collections(cluster: PgCluster) -> int:
    """Collections mevwatch ran since the last reset: each starts with one SERVER query."""
    out = cluster.psql(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
        f" WHERE r.rolname = '{ROLES['mevwatch']}' AND s.query LIKE '%current_setting(''server_version'')%'"
    )
    return int(out)


def top_queries(cluster: PgCluster, role: str, n: int = 5) -> list[str]:
    out = cluster.psql(
        "SELECT round((total_plan_time / calls)::numeric, 2), round((total_exec_time / calls)::numeric, 2), calls,"
        " left(regexp_replace(query, '\\s+', ' ', 'g'), 70)"
        f" FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = '{role}'"
        f" ORDER BY total_exec_time + total_plan_time DESC LIMIT {n}"
    )
    return [" ".join(f"{c:>7}" if i < 3 else c for i, c in enumerate(line.split("|", 3))) for line in out.splitlines()]


def families_of(text: str, prefix: str) -> dict[str, int]:
    """Family name -> series count of an exposition, for names starting with ``prefix``."""
    out: dict[str, int] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name.startswith(prefix):
            out[fam.name] = len(fam.samples)
    return out


heaviest: dict[str, list[str]] = {}  # role -> its heaviest statements in its last window
# collections per database-size measurement at mevwatch's defaults
SIZE_RATIO = PostgresOptions.model_fields["database_size_interval"].default / PostgresCollector.default_interval
# the daemon measures sizes every SIZES_EVERY collections here, so that each window times a call
SIZES_EVERY = 10


def sizes_time(cluster: PgCluster, role: str) -> tuple[float, int]:
    """(plan+exec milliseconds, calls) of the role's database-size statements since the last reset."""
    out = cluster.psql(
        "SELECT coalesce(sum(total_exec_time + total_plan_time), 0), coalesce(sum(calls), 0)"
        f" FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = '{role}'"
        " AND s.query LIKE '%pg_database_size(%'"
    )
    ms, calls = out.split("|")
    return float(ms), int(calls)
_DURATION = re.compile(r'^mevwatch_collector_duration_seconds\{[^}]*collector="postgres"[^}]*\} (\S+)$', re.M)
_LAST_OK = re.compile(
    r'^mevwatch_collector_last_success_timestamp_seconds\{[^}]*collector="postgres"[^}]*\} (\S+)$', re.M)


def mevwatch_window(cluster: PgCluster, pid: int, url: str, runs: int, interval: float) -> dict[str, Any]:
    """``runs`` collections of the running daemon, its /metrics scraped once per interval."""
    cluster.psql("SELECT pg_stat_statements_reset()")
    cpu0 = cpu_ns(pid)
    walls: dict[float, float] = {}
    text = ""
    deadline = time.monotonic() + runs * interval * 3 + 30
    while len(walls) < runs and time.monotonic() < deadline:
        time.sleep(interval)
        text = scrape(url)
        last, dur = _LAST_OK.search(text), _DURATION.search(text)
        if last and dur:
            walls.setdefault(float(last.group(1)), float(dur.group(1)))
    cpu = (cpu_ns(pid) - cpu0) / 1e9
    n = mevwatch_collections(cluster)
    ms, calls = server_time(cluster, ROLES["mevwatch"])
    sizes_ms, sizes_calls = sizes_time(cluster, ROLES["mevwatch"])
    heaviest[ROLES["mevwatch"]] = top_queries(cluster, ROLES["mevwatch"])
    # server_ms is set by amortize() once every window of this table count has run
    return {"wall_ms": 1e3 * sum(walls.values()) / max(len(walls), 1), "cpu_ms": 1e3 * cpu / max(n, 1),
            "per_run_ms": (ms - sizes_ms) / max(n, 1), "sizes_ms": sizes_ms, "sizes_calls": sizes_calls,
            "as_run_ms": ms / max(n, 1), "queries": calls / max(n, 1), "text": text, "collections": n}


def amortize(windows: list[dict[str, Any]]) -> None:
    """mevwatch's server time per collection at its defaults: the window's per-run statements, plus its
    database-size statement's time per call (the window's, else the mean over the windows) over SIZE_RATIO."""
    calls = sum(w["sizes_calls"] for w in windows)
    mean = sum(w["sizes_ms"] for w in windows) / calls if calls else 0.0
    for w in windows:
        per_call = w["sizes_ms"] / w["sizes_calls"] if w["sizes_calls"] else mean
        w["sizes_per_call_ms"] = per_call
        w["server_ms"] = w["per_run_ms"] + per_call / SIZE_RATIO


def exporter_window(cluster: PgCluster, pid: int, url: str, role: str, runs: int, interval: float
                    ) -> dict[str, Any]:
    cluster.psql("SELECT pg_stat_statements_reset()")
    cpu0 = cpu_ns(pid)
    walls = []
    text = ""
    for _ in range(runs):
        t0 = time.perf_counter()
        text = scrape(url)
        walls.append(time.perf_counter() - t0)
        time.sleep(max(interval - walls[-1], 0.0))
    cpu = (cpu_ns(pid) - cpu0) / 1e9
    ms, calls = server_time(cluster, role)
    heaviest[role] = top_queries(cluster, role)
    return {"wall_ms": 1e3 * sum(walls) / runs, "cpu_ms": 1e3 * cpu / runs, "server_ms": ms / runs,
            "queries": calls / runs, "text": text, "collections": runs}


def measure(tables: int, runs: int, repeat: int, interval: float) -> dict[str, list[dict[str, Any]]]:
    cluster = PgCluster({
        "shared_preload_libraries": "pg_stat_statements",
        "pg_stat_statements.track_planning": "on",
        "max_connections": "50",
        "max_locks_per_transaction": "256",
    })
    procs = []
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in ROLES}
    heaviest.clear()
    try:
        cluster.start()
        t0 = time.monotonic()
        prepare(cluster, tables)
        print(f"\n{tables} small tables + 1 of 100,000 rows (60% deleted): prepared in {time.monotonic() - t0:.0f}s, "
              f"load average {load_average()}")
        with tempfile.TemporaryDirectory() as tmp:
            dsn = {name: cluster.dsn("mev_db", role, PASSWORD) for name, role in ROLES.items()}
            secs = f"{int(interval * 1000)}ms"
            # database sizes every SIZES_EVERY collections, so that each window times them (see amortize)
            mw, mw_port = mevwatch_daemon(
                f"collectors:\n  - postgres:\n      interval: {secs}\n"
                f"      database_size_interval: {int(interval * SIZES_EVERY * 1000)}ms\n"
                f"      targets: [{{dsn: '{dsn['mevwatch']}'}}]\n",
                tmp)
            procs.append(mw)
            queries = Path(tmp) / "queries.yaml"
            exporter_queries(queries)
            ports = {}
            for name, extra in (("exporter (defaults)", []),
                                ("exporter (per-table queries)", [f"--extend.query-path={queries}"])):
                port = free_port()
                procs.append(start([EXPORTER, f"--web.listen-address=127.0.0.1:{port}", *extra], port,
                                   env={"DATA_SOURCE_NAME": dsn[name] + "?sslmode=disable"}))
                ports[name] = (procs[-1].pid, port)
                scrape(f"http://127.0.0.1:{port}/metrics")  # connect and prepare, as a running exporter has
            time.sleep(max(3 * interval, 2.0))  # mevwatch's first runs: connect, prepare, first pg_stats read
            for _ in range(repeat):
                results["mevwatch"].append(
                    mevwatch_window(cluster, mw.pid, f"http://127.0.0.1:{mw_port}/metrics", runs, interval))
                for name, (pid, port) in ports.items():
                    results[name].append(exporter_window(cluster, pid, f"http://127.0.0.1:{port}/metrics",
                                                         ROLES[name], runs, interval))
    finally:
        for proc in procs:
            stop(proc)
        cluster.remove()
    amortize(results["mevwatch"])
    report(tables, results, heaviest)
    return results


def _fmt(values: list[float]) -> str:
    lo, mid, hi = spread(values)
    return f"{lo:.1f}/{mid:.1f}/{hi:.1f}"


def report(tables: int, results: dict[str, list[dict[str, Any]]], heaviest: dict[str, list[str]]) -> None:
    print(f"per collection, {tables} tables, min/median/max of {len(results['mevwatch'])} windows:")
    print(f"{'':30} {'wall ms':>17} {'CPU ms':>17} {'server ms':>17} {'queries':>8} {'series':>8}")
    prefix = {"mevwatch": "mevwatch_postgres_"}
    for name, rows in results.items():
        series = sum(families_of(rows[-1]["text"], prefix.get(name, "pg_")).values())
        print(f"{name:30} {_fmt([r['wall_ms'] for r in rows]):>17} {_fmt([r['cpu_ms'] for r in rows]):>17} "
              f"{_fmt([r['server_ms'] for r in rows]):>17} {rows[-1]['queries']:8.1f} {series:8d}")
    mw = results["mevwatch"]
    print(f"mevwatch's server ms: per-run statements {_fmt([r['per_run_ms'] for r in mw])}, database sizes "
          f"{_fmt([r['sizes_per_call_ms'] for r in mw])} per call ({sum(r['sizes_calls'] for r in mw)} calls), "
          f"counted once per {SIZE_RATIO:g} collections (its defaults); as run, sizes every {SIZES_EVERY}th: "
          f"{_fmt([r['as_run_ms'] for r in mw])}")
    for name, role in ROLES.items():
        lines = heaviest.get(role, [])
        print(f"heaviest queries of {name} (ms per call: plan, exec; calls; in its last window):")
        for line in lines:
            print(f"  {line}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--tables", default="1000", help="small tables besides the bloated one; a comma list for growth")
    ap.add_argument("--runs", type=int, default=15, help="collections per window")
    ap.add_argument("--repeat", type=int, default=3, help="windows of each daemon, interleaved")
    ap.add_argument("--interval", type=float, default=1.0, help="collection (and scrape) interval, seconds")
    ap.add_argument("--concepts", action="store_true", help="print which runbook concept each side exposes")
    args = ap.parse_args()
    if not Path(EXPORTER).exists() or shutil.which("runuser") is None:
        print(f"needs {EXPORTER}, PostgreSQL 15 server binaries and root", file=sys.stderr)
        return 2
    print(f"machine: {machine()}; load average {load_average()}")
    counts = [int(x) for x in args.tables.split(",")]
    by_count = {n: measure(n, args.runs, args.repeat, args.interval) for n in counts}

    def med(n: int, name: str, key: str) -> float:
        return spread([r[key] for r in by_count[n][name]])[1]

    if len(counts) > 1:
        print(f"\ngrowth, median server ms per collection: {'tables':>8} {'mevwatch':>9} {'exp. defaults':>14} "
              f"{'exp. per-table':>15} {'mevwatch CPU ms':>16}")
        for n in counts:
            print(f"{'':45}{n:8d} {med(n, 'mevwatch', 'server_ms'):9.1f} "
                  f"{med(n, 'exporter (defaults)', 'server_ms'):14.1f} "
                  f"{med(n, 'exporter (per-table queries)', 'server_ms'):15.1f} {med(n, 'mevwatch', 'cpu_ms'):16.1f}")
    for n in counts:
        mw, pe = med(n, "mevwatch", "server_ms"), med(n, "exporter (defaults)", "server_ms")
        record(f"postgres server time per collection, {n} tables", mevwatch=mw, unit="ms",
               anchor_name="postgres_exporter defaults", anchor=pe, goal="<= exporter defaults", met=mw <= pe)
        record(f"postgres CPU per collection, {n} tables (exporter: per-table queries)",
               mevwatch=med(n, "mevwatch", "cpu_ms"), unit="ms", anchor_name="postgres_exporter per-table",
               anchor=med(n, "exporter (per-table queries)", "cpu_ms"))
    if len(counts) > 1:
        lo, hi = counts[0], counts[-1]
        growth = med(hi, "mevwatch", "server_ms") / med(lo, "mevwatch", "server_ms")
        anchor_growth = med(hi, "exporter (defaults)", "server_ms") / med(lo, "exporter (defaults)", "server_ms")
        record(f"postgres server time growth {lo} -> {hi} tables", mevwatch=growth, unit="x",
               anchor_name="postgres_exporter defaults", anchor=anchor_growth, goal="<= 2x", met=growth <= 2.0)
    if args.concepts:
        concepts(by_count[counts[-1]])
    return 0


def concepts(results: dict[str, list[dict[str, Any]]]) -> None:
    mw_fams = families_of(results["mevwatch"][-1]["text"], "mevwatch_postgres_")
    pe_fams = families_of(results["exporter (per-table queries)"][-1]["text"], "pg_")
    print(f"\n{'runbook concept':40} {'exporter':28} mevwatch")
    for concept, pe_re, mw_re in CONCEPTS:
        print(f"{concept:40} {_first(pe_fams, pe_re) or '-':28} {_first(mw_fams, mw_re) or '-'}")


def _first(names: dict[str, Any], pattern: str | None) -> str | None:
    if pattern is None:
        return None
    return next((n for n in sorted(names) if re.search(pattern, n)), None)


if __name__ == "__main__":
    sys.exit(main())
