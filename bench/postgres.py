"""mevwatch's postgres collector vs prometheus-postgres-exporter on one database, in one run.

Starts a throwaway PostgreSQL 15 cluster (pg_stat_statements preloaded, planning time tracked),
fills a database with a bloated 100,000-row table and --tables small ones, and points both at it,
each as its own pg_monitor role. Measures per collection: wall time (mevwatch: collect + render;
exporter: one HTTP scrape), CPU of each, and the server-side plan+exec time of each one's own
queries from pg_stat_statements (filtered by role). Prints the ratios and what each exposes.
Targets: mevwatch's collection time and server-side query time at or below the exporter's.

The Debian exporter (0.11) has no built-in stat_statements or per-table collectors: it gets the
per-table queries of its shipped example queries.yaml and upstream's stat_statements query.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from _common import REPO, free_port, machine, proc_stats, start, stop

sys.path.insert(0, str(REPO))

from prometheus_client.parser import text_string_to_metric_families

from mevwatch.collectors.base import CollectorContext
from mevwatch.collectors.postgres import PostgresCollector, PostgresOptions
from mevwatch.daemon.exposition import render_text
from tests.support.pgcluster import PgCluster

EXPORTER = "/usr/bin/prometheus-postgres-exporter"
EXAMPLE_QUERIES = Path("/usr/share/doc/prometheus-postgres-exporter/examples/queries.yaml")
PASSWORD = "bench-only"

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
    cluster.psql(
        "CREATE EXTENSION pg_stat_statements;"
        # the same grants for both: pg_monitor, and pg_read_all_data so pg_stats shows column widths
        f"CREATE ROLE mevwatch_bench LOGIN PASSWORD '{PASSWORD}' IN ROLE pg_monitor, pg_read_all_data;"
        f"CREATE ROLE exporter_bench LOGIN PASSWORD '{PASSWORD}' IN ROLE pg_monitor, pg_read_all_data"
    )
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


async def run_mevwatch(dsn: str, runs: int, bloat: str) -> tuple[list[float], float, str]:
    opts = PostgresOptions.model_validate({"targets": [{"dsn": dsn}], "interval": 15, "bloat": bloat})
    collector = PostgresCollector(CollectorContext("postgres", "bench", 15.0, 10.0), opts)
    try:
        for _ in range(2):  # connect and prepare statements, as a running daemon has done long before
            await collector.collect()
        walls: list[float] = []
        text = b""
        cpu0 = time.process_time()
        for _ in range(runs):
            t0 = time.perf_counter()
            families = await collector.collect()
            text = render_text(families)  # as /metrics renders them
            walls.append(time.perf_counter() - t0)
        cpu = time.process_time() - cpu0
    finally:
        await collector.close()
    return walls, cpu, text.decode()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return str(resp.read().decode())


def run_exporter(port: int, dsn: str, queries: Path, runs: int) -> tuple[list[float], float, str]:
    http = free_port()
    proc = start(
        [EXPORTER, f"--web.listen-address=127.0.0.1:{http}", f"--extend.query-path={queries}"], http,
        env={"DATA_SOURCE_NAME": dsn},
    )
    url = f"http://127.0.0.1:{http}/metrics"
    try:
        for _ in range(2):
            scrape(url)
        walls: list[float] = []
        text = ""
        cpu0 = proc_stats(proc.pid).cpu_seconds
        for _ in range(runs):
            t0 = time.perf_counter()
            text = scrape(url)
            walls.append(time.perf_counter() - t0)
        cpu = proc_stats(proc.pid).cpu_seconds - cpu0
    finally:
        stop(proc)
    return walls, cpu, text


def server_time(cluster: PgCluster, role: str) -> tuple[float, int]:
    """(plan+exec milliseconds, calls) of the role's statements since the last reset."""
    out = cluster.psql(
        "SELECT coalesce(sum(total_exec_time + total_plan_time), 0), coalesce(sum(calls), 0)"
        f" FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = '{role}'"
    )
    ms, calls = out.split("|")
    return float(ms), int(calls)


def top_queries(cluster: PgCluster, role: str, n: int = 5) -> list[str]:
    out = cluster.psql(
        "SELECT round(((total_exec_time + total_plan_time) / calls)::numeric, 2), calls,"
        " left(regexp_replace(query, '\\s+', ' ', 'g'), 70)"
        f" FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = '{role}'"
        f" ORDER BY total_exec_time + total_plan_time DESC LIMIT {n}"
    )
    return [" ".join(f"{c:>7}" if i < 2 else c for i, c in enumerate(line.split("|", 2))) for line in out.splitlines()]


def families_of(text: str, prefix: str) -> dict[str, int]:
    """Family name -> series count of an exposition, for names starting with ``prefix``."""
    out: dict[str, int] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name.startswith(prefix):
            out[fam.name] = len(fam.samples)
    return out


def p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--tables", type=int, default=1000, help="small tables besides the bloated one")
    ap.add_argument("--runs", type=int, default=20, help="measured collections of each")
    ap.add_argument("--bloat", default="auto", choices=["auto", "estimate", "pgstattuple", "off"],
                    help="mevwatch's bloat method (auto: pgstattuple_approx, installed here)")
    args = ap.parse_args()
    if not Path(EXPORTER).exists() or shutil.which("runuser") is None:
        print(f"needs {EXPORTER}, PostgreSQL 15 server binaries and root", file=sys.stderr)
        return 2

    print(f"machine: {machine()}")
    print(f"exporter: {EXPORTER}; {args.tables} small tables + 1 of 100,000 rows (60% deleted); {args.runs} runs")
    cluster = PgCluster({
        "shared_preload_libraries": "pg_stat_statements",
        "pg_stat_statements.track_planning": "on",
        "max_connections": "50",
    })
    try:
        cluster.start()
        t0 = time.monotonic()
        prepare(cluster, args.tables)
        print(f"database prepared in {time.monotonic() - t0:.1f}s")
        with tempfile.TemporaryDirectory() as tmp:
            queries = Path(tmp) / "queries.yaml"
            exporter_queries(queries)
            cluster.psql("SELECT pg_stat_statements_reset()")
            mw_walls, mw_cpu, mw_text = asyncio.run(
                run_mevwatch(cluster.dsn("mev_db", "mevwatch_bench", PASSWORD), args.runs, args.bloat)
            )
            pe_walls, pe_cpu, pe_text = run_exporter(
                cluster.port, cluster.dsn("mev_db", "exporter_bench", PASSWORD) + "?sslmode=disable", queries,
                args.runs,
            )
        # the warm-up runs of each are included on both sides alike (2 each)
        mw_ms, mw_calls = server_time(cluster, "mevwatch_bench")
        pe_ms, pe_calls = server_time(cluster, "exporter_bench")
        heaviest = {role: top_queries(cluster, role) for role in ("mevwatch_bench", "exporter_bench")}
    finally:
        cluster.remove()

    n = args.runs + 2
    rows: list[tuple[str, float, float]] = [
        ("collection wall time p50 (ms)", statistics.median(mw_walls) * 1e3, statistics.median(pe_walls) * 1e3),
        ("collection wall time p90 (ms)", p(mw_walls, 0.9) * 1e3, p(pe_walls, 0.9) * 1e3),
        ("CPU per collection (ms)", mw_cpu / args.runs * 1e3, pe_cpu / args.runs * 1e3),
        ("server plan+exec time per collection (ms)", mw_ms / n, pe_ms / n),
        ("queries per collection", mw_calls / n, pe_calls / n),
    ]
    mw_fams = families_of(mw_text, "mevwatch_postgres_")
    pe_fams = families_of(pe_text, "pg_")
    rows.append(("metric families", float(len(mw_fams)), float(len(pe_fams))))
    rows.append(("series", float(sum(mw_fams.values())), float(sum(pe_fams.values()))))

    print(f"\n{'':44} {'mevwatch':>10} {'exporter':>10} {'ratio':>7}")
    for label, mw, pe in rows:
        ratio = f"{mw / pe:.2f}" if pe else "-"
        print(f"{label:44} {mw:10.2f} {pe:10.2f} {ratio:>7}")

    for role, lines in heaviest.items():
        print(f"\nheaviest queries of {role} (ms per call, plan+exec):")
        for line in lines:
            print(f"  {line}")

    print(f"\n{'runbook concept':40} {'exporter':28} mevwatch")
    for concept, pe_re, mw_re in CONCEPTS:
        pe_has = _first(pe_fams, pe_re)
        mw_has = _first(mw_fams, mw_re)
        print(f"{concept:40} {pe_has or '-':28} {mw_has or '-'}")
    print(f"\nexporter families: {' '.join(sorted(pe_fams))}")
    print(f"\nmevwatch families: {' '.join(sorted(mw_fams))}")
    ok = statistics.median(mw_walls) <= statistics.median(pe_walls) and mw_ms <= pe_ms
    print(f"\ntargets (mevwatch collection time and server time <= exporter's): {'met' if ok else 'NOT met'}")
    return 0


def _first(names: dict[str, Any], pattern: str | None) -> str | None:
    if pattern is None:
        return None
    return next((n for n in sorted(names) if re.search(pattern, n)), None)


if __name__ == "__main__":
    sys.exit(main())
