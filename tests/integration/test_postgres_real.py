"""The postgres collector against real servers: the local PostgreSQL 15 and throwaway clusters."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import structlog

from mevwatch.aio import wait_for
from mevwatch.collectors import _pgqueries as pgq
from mevwatch.collectors.base import CollectorContext, CollectorError
from mevwatch.collectors.postgres import PostgresCollector, PostgresOptions
from mevwatch.families import Metric
from tests.support.daemon import RunningDaemon, sample_value
from tests.support.peers import free_port
from tests.support.pgcluster import (
    LOCAL_DSN,
    PgCluster,
    local_psql,
    need_local_server,
    pg_cluster,
    scratch_database,
)

pytestmark = pytest.mark.peer("postgresql")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(families: list[Metric]) -> Samples:
    out: Samples = {}
    for fam in families:
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    for (n, lbl), v in samples.items():
        if n == name and all(dict(lbl).get(k) == val for k, val in labels.items()):
            return v
    return None


def _must(samples: Samples, name: str, **labels: str) -> float:
    v = _value(samples, name, **labels)
    assert v is not None, f"{name}{labels} missing"
    return v


def _collector(dsn: str, *, interval: float = 1.0, timeout: float = 5.0, password_file: Path | None = None,
               **options: Any) -> PostgresCollector:
    opts = PostgresOptions.model_validate(
        {"targets": [{"dsn": dsn, "password_file": password_file}], "interval": interval, **options}
    )
    return PostgresCollector(CollectorContext("postgres", "test", interval, timeout), opts)


async def _run(c: PostgresCollector) -> tuple[Samples, CollectorError | None]:
    """One collection; a failed run still carries the families it measured (up 0)."""
    try:
        return _samples(list(await c.collect())), None
    except CollectorError as exc:
        return _samples(list(exc.families or [])), exc


@pytest.fixture(scope="module")
def scratch_db() -> Iterator[str]:
    need_local_server()
    with scratch_database() as name:
        yield name


def _local(db: str) -> str:
    return LOCAL_DSN.rsplit("/", 1)[0] + f"/{db}"


# --- dead tuples and bloat on the local server -------------------------------------------------


def _make_bloaty(db: str, table: str) -> None:
    local_psql(
        f"CREATE TABLE {table} (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = false);"
        f"INSERT INTO {table} SELECT g, md5(g::text) FROM generate_series(1, 100000) g;"
        f"ANALYZE {table};",
        db,
    )


@pytest.mark.parametrize("method", ["estimate", "pgstattuple"])
async def test_mass_delete_shows_in_dead_ratio_and_bloat_then_vacuum_clears_it(scratch_db: str, method: str) -> None:
    table = f"bloaty_{method}"
    _make_bloaty(scratch_db, table)
    if method == "pgstattuple":
        local_psql("CREATE EXTENSION IF NOT EXISTS pgstattuple", scratch_db)
    c = _collector(_local(scratch_db), tables=[table], bloat=method)
    tl = {"schema": "public", "table": table}
    try:
        before, err = await _run(c)
        assert err is None
        assert _value(before, "mevwatch_postgres_table_live_tuples", **tl) == 100_000
        assert _value(before, "mevwatch_postgres_table_dead_tuple_ratio", **tl) == 0.0
        bloat_before = _value(before, "mevwatch_postgres_table_bloat_ratio", **tl, method=method)
        assert bloat_before is not None
        assert bloat_before < 0.2
        size_before = _value(before, "mevwatch_postgres_table_size_bytes", **tl)
        assert size_before is not None
        assert size_before > 4_000_000

        # the newest 60% of rows: VACUUM can then give the emptied tail of the file back
        local_psql(f"DELETE FROM {table} WHERE id > 40000", scratch_db)
        after, err = await _run(c)
        assert err is None
        assert _value(after, "mevwatch_postgres_table_dead_tuples", **tl) == 60_000
        assert _value(after, "mevwatch_postgres_table_dead_tuple_ratio", **tl) == pytest.approx(1.5)
        bloat_after = _value(after, "mevwatch_postgres_table_bloat_ratio", **tl, method=method)
        assert bloat_after is not None
        assert bloat_after > 0.5
        bloat_bytes = _value(after, "mevwatch_postgres_table_bloat_bytes", **tl, method=method)
        assert bloat_bytes is not None
        assert bloat_bytes > 0.5 * size_before * 0.6
        index_bloat = _value(after, "mevwatch_postgres_index_bloat_ratio", index=f"{table}_pkey", method="estimate")
        assert index_bloat is not None
        assert index_bloat > 0.4
        assert _value(after, "mevwatch_postgres_table_last_vacuum_age_seconds", **tl, trigger="manual") is None
        # autovacuum never ran on it: its age counts from the first run that saw the table (a lower bound)
        never = _value(after, "mevwatch_postgres_table_last_vacuum_age_seconds", **tl, trigger="auto")
        assert never is not None
        assert never > 0

        local_psql(f"VACUUM {table}", scratch_db)
        vacuumed, err = await _run(c)
        assert err is None
        assert _value(vacuumed, "mevwatch_postgres_table_dead_tuples", **tl) == 0
        assert _value(vacuumed, "mevwatch_postgres_table_dead_tuple_ratio", **tl) == 0.0
        bloat_vacuumed = _value(vacuumed, "mevwatch_postgres_table_bloat_ratio", **tl, method=method)
        assert bloat_vacuumed is not None
        assert bloat_vacuumed < 0.2
        since = _value(vacuumed, "mevwatch_postgres_table_last_vacuum_age_seconds", **tl, trigger="manual")
        assert since is not None
        assert 0 <= since < 60
        still = _value(vacuumed, "mevwatch_postgres_table_last_vacuum_age_seconds", **tl, trigger="auto")
        assert still is not None
        assert still > never  # a manual VACUUM is not autovacuum: the age goes on
        assert _value(vacuumed, "mevwatch_postgres_table_last_analyze_age_seconds", **tl, trigger="manual") is not None
        assert _value(vacuumed, "mevwatch_postgres_extension_available", extension="pgstattuple") == (
            1.0 if method == "pgstattuple" else 0.0
        )
    finally:
        await c.close()
        local_psql(f"DROP TABLE {table}", scratch_db)


async def test_a_partitioned_table_among_the_chosen_keeps_pgstattuple_for_the_others(scratch_db: str) -> None:
    # pgstattuple_approx fails on a partitioned table (it has no storage): it must not take the others' bloat
    local_psql(
        "CREATE EXTENSION IF NOT EXISTS pgstattuple;"
        "CREATE TABLE plain (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false);"
        "INSERT INTO plain SELECT g, md5(g::text) FROM generate_series(1, 2000) g; DELETE FROM plain WHERE id % 2 = 0;"
        "CREATE TABLE parent (id int, k int) PARTITION BY RANGE (k);"
        "CREATE TABLE parent_1 PARTITION OF parent FOR VALUES FROM (0) TO (100);"
        "INSERT INTO parent_1 SELECT g, g % 100 FROM generate_series(1, 400) g",
        scratch_db,
    )
    c = _collector(_local(scratch_db), tables=["plain", "parent", "parent_1"], bloat="pgstattuple")
    try:
        s, err = await _run(c)
        assert err is None
        assert not [m for m in c.status()[0]["missing"] if "pgstattuple" in m]
        for table in ("plain", "parent_1"):
            assert _value(s, "mevwatch_postgres_table_bloat_ratio", table=table, method="pgstattuple") is not None
        assert _must(s, "mevwatch_postgres_table_bloat_ratio", table="plain", method="pgstattuple") > 0.2
        assert _value(s, "mevwatch_postgres_table_bloat_ratio", table="parent") is None
        assert _value(s, "mevwatch_postgres_table_live_tuples", table="parent") is not None
    finally:
        await c.close()
        local_psql("DROP TABLE plain, parent", scratch_db)


async def test_pg_stats_widths_are_read_again_only_after_analyze(scratch_db: str) -> None:
    local_psql(
        "CREATE TABLE widths (id int PRIMARY KEY, note text);"
        "INSERT INTO widths SELECT g, repeat('x', 10) FROM generate_series(1, 5000) g; ANALYZE widths",
        scratch_db,
    )
    c = _collector(_local(scratch_db), tables=["widths"], bloat="estimate")
    try:
        await _run(c)
        cache = c._targets[0].widths
        first = dict(cache)
        assert len(first) >= 2  # the table and its primary key
        await _run(c)
        assert all(cache[k] is v for k, v in first.items())
        # wider rows after ANALYZE: the estimate must use the new width
        local_psql("UPDATE widths SET note = repeat('y', 200)", scratch_db)
        local_psql("VACUUM FULL widths", scratch_db)
        local_psql("ANALYZE widths", scratch_db)
        s, err = await _run(c)
        assert err is None
        table_oid = next(k for k in first if cache[k][1].columns == 2)
        assert cache[table_oid] is not first[table_oid]
        assert cache[table_oid][1].data_width > first[table_oid][1].data_width + 150
        bloat = _must(s, "mevwatch_postgres_table_bloat_ratio", table="widths", method="estimate")
        assert bloat < 0.2
    finally:
        await c.close()
        local_psql("DROP TABLE widths", scratch_db)


async def test_server_metrics_on_the_local_server(scratch_db: str) -> None:
    local_psql("CREATE TABLE IF NOT EXISTS small (id int); INSERT INTO small VALUES (1)", scratch_db)
    holder = await asyncpg.connect(_local(scratch_db), server_settings={"application_name": "holder"})
    try:
        await holder.execute("BEGIN; LOCK TABLE small IN ACCESS EXCLUSIVE MODE")
        waiter = await asyncpg.connect(_local(scratch_db))
        blocked = asyncio.create_task(waiter.execute("SELECT * FROM small"))
        await asyncio.sleep(0.5)
        c = _collector(_local(scratch_db), tables=["small"])
        try:
            s, err = await _run(c)
        finally:
            await c.close()
        # the exclusively locked table is reported without the size that would wait for its lock
        assert err is None
        assert _value(s, "mevwatch_postgres_table_live_tuples", table="small") == 1
        assert _value(s, "mevwatch_postgres_table_size_bytes", table="small") is None
        assert any(m.startswith("locked") for m in c.status()[0]["missing"])
        srv = {"server": "127.0.0.1:5432"}
        assert _value(s, "mevwatch_postgres_up", **srv, datname=scratch_db) == 1
        assert _must(s, "mevwatch_postgres_locks_waiting", **srv) >= 1
        assert _must(s, "mevwatch_postgres_connections", datname=scratch_db, state="idle_in_transaction") >= 1
        assert _must(s, "mevwatch_postgres_connections", datname=scratch_db, state="active") >= 1
        assert _must(s, "mevwatch_postgres_oldest_idle_in_transaction_age_seconds", **srv) >= 0.4
        assert _must(s, "mevwatch_postgres_oldest_transaction_age_seconds", **srv) >= 0.4
        ratio = _value(s, "mevwatch_postgres_connections_used_ratio", **srv)
        assert ratio is not None
        assert 0 < ratio < 1
        assert _value(s, "mevwatch_postgres_max_connections", **srv) == 100
        assert _must(s, "mevwatch_postgres_database_size_bytes", datname=scratch_db) > 1_000_000
        assert 0 < _must(s, "mevwatch_postgres_database_xid_age", datname=scratch_db) < 2**31
        hit = _value(s, "mevwatch_postgres_database_cache_hit_ratio", datname="postgres")
        assert hit is not None
        assert 0 < hit <= 1
        version = next(dict(lbl) for (n, lbl) in s if n == "mevwatch_postgres_version_info")
        assert version["version_num"].startswith("15")
        await holder.execute("ROLLBACK")
        await wait_for(blocked, 5)
        await waiter.close()
    finally:
        await holder.close()


async def test_database_size_is_measured_on_its_own_cadence_with_its_timestamp(scratch_db: str) -> None:
    c = _collector(_local(scratch_db), database_size_interval=1.5, top_tables=0)
    size_of = {"datname": scratch_db}
    try:
        before = time.time()
        s, _ = await _run(c)
        size1 = _must(s, "mevwatch_postgres_database_size_bytes", **size_of)
        at1 = _must(s, "mevwatch_postgres_database_size_timestamp_seconds", **size_of)
        assert before <= at1 <= time.time()
        local_psql("CREATE TABLE grown AS SELECT g, repeat('x', 500) AS v FROM generate_series(1, 20000) g",
                   scratch_db)
        # not due yet: the last size is served with the time it was measured, the other figures are fresh
        s, _ = await _run(c)
        assert _must(s, "mevwatch_postgres_database_size_bytes", **size_of) == size1
        assert _must(s, "mevwatch_postgres_database_size_timestamp_seconds", **size_of) == at1
        assert _must(s, "mevwatch_postgres_database_xid_age", **size_of) > 0
        for _ in range(40):  # due after 1.5 s: bounded by 40 runs 0.1 s apart
            s, _ = await _run(c)
            at2 = _must(s, "mevwatch_postgres_database_size_timestamp_seconds", **size_of)
            if at2 != at1:
                break
            await asyncio.sleep(0.1)
        assert at1 + 1.5 <= at2 <= time.time()
        assert _must(s, "mevwatch_postgres_database_size_bytes", **size_of) > size1 + 5_000_000
    finally:
        await c.close()
        local_psql("DROP TABLE IF EXISTS grown", scratch_db)


async def test_missing_pg_stat_statements_is_reported_once_not_as_a_failure(scratch_db: str) -> None:
    with structlog.testing.capture_logs() as logs:
        c = _collector(_local(scratch_db))
        try:
            runs = [await _run(c) for _ in range(3)]
        finally:
            await c.close()
    for s, err in runs:
        assert err is None
        assert _value(s, "mevwatch_postgres_extension_available", extension="pg_stat_statements") == 0
        assert _value(s, "mevwatch_postgres_slow_statements") is None
    partial = [e for e in logs if e["event"] == "postgres_partial"]
    assert len(partial) == 1
    assert any("CREATE EXTENSION pg_stat_statements" in m for m in partial[0]["missing"])


async def test_pg_stat_statements_installed_but_not_preloaded_says_so(scratch_db: str) -> None:
    # the local server does not preload the library: the extension exists but its view cannot be read
    local_psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", scratch_db)
    c = _collector(_local(scratch_db))
    try:
        s, err = await _run(c)
        assert err is None
        assert _value(s, "mevwatch_postgres_extension_available", extension="pg_stat_statements") == 0
        assert _value(s, "mevwatch_postgres_up") == 1
        assert any("shared_preload_libraries" in m for m in c.status()[0]["missing"])
    finally:
        await c.close()
        local_psql("DROP EXTENSION pg_stat_statements", scratch_db)


async def test_role_without_pg_read_all_stats_gets_what_it_can(scratch_db: str) -> None:
    role = f"mevwatch_limited_{uuid.uuid4().hex[:8]}"
    local_psql(
        f"CREATE ROLE {role} LOGIN; CREATE TABLE IF NOT EXISTS secret_stuff (id int);"
        "INSERT INTO secret_stuff SELECT generate_series(1, 1000); ANALYZE secret_stuff;",
        scratch_db,
    )
    other = await asyncpg.connect(_local(scratch_db))
    try:
        c = _collector(f"postgresql://{role}@127.0.0.1:5432/{scratch_db}", tables=["secret_stuff"])
        try:
            s, err = await _run(c)
        finally:
            await c.close()
        assert err is None
        assert _value(s, "mevwatch_postgres_up") == 1
        assert _value(s, "mevwatch_postgres_role_privilege", privilege="pg_read_all_stats") == 0
        assert _value(s, "mevwatch_postgres_role_privilege", privilege="pg_stat_scan_tables") == 0
        # sessions of other roles are counted, their state is hidden
        assert _must(s, "mevwatch_postgres_connections", datname=scratch_db, state="unknown") >= 1
        assert _value(s, "mevwatch_postgres_table_live_tuples", table="secret_stuff") == 1000
        # pg_stats hides columns of tables the role cannot SELECT: no bloat figure rather than a wrong one
        assert _value(s, "mevwatch_postgres_table_bloat_ratio", table="secret_stuff") is None
        missing = " ".join(c.status()[0]["missing"])
        assert "pg_read_all_stats" in missing
        assert "pg_stats" in missing
    finally:
        await other.close()
        local_psql(f"DROP TABLE secret_stuff; DROP OWNED BY {role}; DROP ROLE {role}", scratch_db)


# The whole-view forms of the table selection and the pg_stats widths (pg_stat_user_tables, pg_stats
# joined by name): what the bounded queries of _pgqueries must still answer, row for row.
_REF_TABLES = """
WITH t AS (
  SELECT s.relid, s.schemaname::text AS schema, s.relname::text AS relname, s.n_live_tup, s.n_dead_tup,
         s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze,
         c.relpages::bigint + coalesce(tc.relpages, 0) AS pages,
         c.relpages::bigint AS heap_pages, coalesce(tc.relpages, 0)::bigint AS toast_pages,
         greatest(c.reltuples, 0)::float8 AS reltuples, greatest(coalesce(tc.reltuples, 0), 0)::float8 AS toast_tuples,
         coalesce(substring(array_to_string(c.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::int, 100) AS fillfactor
  FROM pg_stat_user_tables s
  JOIN pg_class c ON c.oid = s.relid
  LEFT JOIN pg_class tc ON tc.oid = c.reltoastrelid
), sel AS (
  (SELECT relid FROM t ORDER BY n_dead_tup DESC, relid LIMIT $1)
  UNION (SELECT relid FROM t ORDER BY pages DESC, relid LIMIT $1)
  UNION (SELECT relid FROM t WHERE schema || '.' || relname = ANY($2::text[]) OR relname = ANY($2::text[]))
)
SELECT t.relid, t.schema, t.relname, t.n_live_tup, t.n_dead_tup, lk.relation IS NOT NULL AS locked,
       t.heap_pages, t.toast_pages, t.reltuples, t.toast_tuples, t.fillfactor,
       extract(epoch FROM greatest(t.last_analyze, t.last_autoanalyze))::float8 AS analyzed_at,
       CASE WHEN lk.relation IS NULL THEN pg_total_relation_size(t.relid) END AS size,
       extract(epoch FROM now() - t.last_vacuum)::float8 AS since_vacuum,
       extract(epoch FROM now() - t.last_autovacuum)::float8 AS since_autovacuum,
       extract(epoch FROM now() - t.last_analyze)::float8 AS since_analyze,
       extract(epoch FROM now() - t.last_autoanalyze)::float8 AS since_autoanalyze
FROM t JOIN sel USING (relid)
LEFT JOIN (SELECT DISTINCT relation FROM pg_locks
           WHERE mode = 'AccessExclusiveLock' AND locktype = 'relation'
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) lk
  ON lk.relation = t.relid
"""

_REF_TABLE_WIDTHS = """
SELECT tbl.oid AS relid,
       coalesce(max(s.null_frac), 0)::float8 AS max_null_frac,
       sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 0))::float8 AS data_width,
       count(s.attname)::int AS with_stats, count(*)::int AS columns,
       bool_or(att.atttypid = 'pg_catalog.name'::regtype) AS has_name
FROM pg_attribute att
JOIN pg_class tbl ON att.attrelid = tbl.oid
JOIN pg_namespace ns ON ns.oid = tbl.relnamespace
LEFT JOIN pg_stats s ON s.schemaname = ns.nspname AND s.tablename = tbl.relname
                    AND s.inherited = false AND s.attname = att.attname
WHERE NOT att.attisdropped AND att.attnum > 0 AND tbl.oid = ANY($1::oid[])
GROUP BY tbl.oid
"""

_REF_INDEX_WIDTHS = """
SELECT i.indexrelid AS relid,
       coalesce(max(s.null_frac), 0)::float8 AS max_null_frac,
       sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 1024))::float8 AS data_width,
       count(s.attname)::int AS with_stats, count(*)::int AS columns,
       bool_or(coalesce(a1.atttypid, a2.atttypid) = 'pg_catalog.name'::regtype) AS has_name
FROM pg_index i
JOIN pg_class ci ON ci.oid = i.indexrelid
JOIN pg_class ct ON ct.oid = i.indrelid
JOIN pg_namespace n ON n.oid = ct.relnamespace
CROSS JOIN LATERAL generate_series(1, i.indnatts) AS k(attpos)
LEFT JOIN pg_attribute a1 ON i.indkey[k.attpos - 1] <> 0 AND a1.attrelid = i.indrelid
                         AND a1.attnum = i.indkey[k.attpos - 1]
LEFT JOIN pg_attribute a2 ON i.indkey[k.attpos - 1] = 0 AND a2.attrelid = i.indexrelid AND a2.attnum = k.attpos
LEFT JOIN pg_stats s ON s.schemaname = n.nspname
                    AND s.tablename = CASE WHEN a1.attnum IS NULL THEN ci.relname ELSE ct.relname END
                    AND s.attname = coalesce(a1.attname, a2.attname)
WHERE ci.relam = (SELECT oid FROM pg_am WHERE amname = 'btree') AND i.indexrelid = ANY($1::oid[])
GROUP BY i.indexrelid
"""


async def test_bounded_table_and_width_queries_answer_as_the_whole_views_do(scratch_db: str) -> None:
    local_psql(
        "CREATE SCHEMA other;"
        "CREATE TABLE kinds (id int PRIMARY KEY, a text, b int, n name, big text);"
        "CREATE INDEX kinds_expr ON kinds (lower(a));"
        "CREATE INDEX kinds_multi ON kinds (b, a) WITH (fillfactor = 70);"
        "CREATE INDEX kinds_mixed ON kinds (b, (a || 'x'));"
        "INSERT INTO kinds SELECT g, md5(g::text), g % 7, 'n', CASE WHEN g % 50 = 0 THEN repeat(md5(g::text), 400) END"
        " FROM generate_series(1, 3000) g;"
        "DELETE FROM kinds WHERE id % 3 = 0;"
        "CREATE TABLE other.wide (id int, v text) WITH (fillfactor = 80);"
        "INSERT INTO other.wide SELECT g, repeat('v', 300) FROM generate_series(1, 500) g;"
        "CREATE TABLE never_analyzed (id int PRIMARY KEY);"
        "CREATE MATERIALIZED VIEW mat AS SELECT g FROM generate_series(1, 100) g;"
        "CREATE TABLE parted (id int, k int) PARTITION BY RANGE (k);"
        "CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);"
        "INSERT INTO parted_1 SELECT g, g % 100 FROM generate_series(1, 400) g;"
        "ANALYZE kinds; ANALYZE other.wide; ANALYZE mat; ANALYZE parted",
        scratch_db,
    )
    conn = await asyncpg.connect(_local(scratch_db))
    try:
        for top, named in ((2, []), (50, ["other.wide", "never_analyzed"])):
            ref = {r["relid"]: dict(r) for r in await conn.fetch(_REF_TABLES, top, named)}
            # one slice larger than the catalog: the whole of it is ranked in this run
            got = {r["relid"]: dict(r) for r in await conn.fetch(pgq.TABLES, top, named, 0, 1_000_000, [])}
            for row in got.values():
                del row["slice_end"], row["slice_len"]
            for row in (*ref.values(), *got.values()):  # ages move between the two reads
                for col in ("since_vacuum", "since_autovacuum", "since_analyze", "since_autoanalyze"):
                    row[col] = row[col] is not None
            assert got == ref
        relids = list(got)
        assert len(relids) >= 5
        indexes = [r["relid"] for r in await conn.fetch(pgq.INDEX_PAGES, relids)]
        assert len(indexes) >= 5  # the primary keys, the expression, multi-column and mixed indexes
        for bounded, whole, ids in ((pgq.TABLE_WIDTHS, _REF_TABLE_WIDTHS, relids),
                                    (pgq.INDEX_WIDTHS, _REF_INDEX_WIDTHS, indexes)):
            got_w = {r["relid"]: dict(r) for r in await conn.fetch(bounded, ids)}
            ref_w = {r["relid"]: dict(r) for r in await conn.fetch(whole, ids)}
            assert got_w == ref_w
            assert any(w["with_stats"] for w in got_w.values())
    finally:
        await conn.close()
        local_psql("DROP TABLE kinds, other.wide, never_analyzed, parted; DROP MATERIALIZED VIEW mat;"
                   " DROP SCHEMA other", scratch_db)


async def test_tables_are_ranked_a_slice_at_a_time_and_a_new_top_table_is_chosen_within_one_pass() -> None:
    need_local_server()
    with scratch_database("mevwatch_slices") as db:
        local_psql("DO $$ BEGIN FOR i IN 1..30 LOOP EXECUTE format('CREATE TABLE t_%s (id int)', i); END LOOP; END $$",
                   db)
        local_psql("INSERT INTO t_3 SELECT generate_series(1, 50); DELETE FROM t_3 WHERE id > 10", db)
        c = _collector(_local(db), top_tables=2, table_scan_batch=10, tables=["public.t_20"])
        conn = await asyncpg.connect(_local(db))

        async def chosen() -> set[str]:
            s, err = await _run(c)
            assert err is None
            return {dict(lbl)["table"] for (n, lbl) in s if n == "mevwatch_postgres_table_dead_tuples"}

        try:
            first = await chosen()  # t_1..t_10 ranked: t_3 leads, the named table is always there
            assert {"t_3", "t_20"} <= first
            assert len(first) <= 2 * 2 + 1
            # t_28 overtakes t_3 but sits in the third slice: chosen within one pass of ceil(30 / 10) runs
            local_psql("INSERT INTO t_28 SELECT generate_series(1, 500); DELETE FROM t_28 WHERE id > 10", db)
            runs = []
            for _ in range(3):
                runs.append(await chosen())
            assert "t_28" not in runs[0]  # the second slice, t_11..t_20, is ranked in that run
            assert "t_28" in runs[-1]
            assert "t_3" in runs[-1]  # chosen tables stay while they rank
            # after a pass, the choice is the whole-catalog ranking's
            ref = {r["relname"] for r in await conn.fetch(_REF_TABLES, 2, ["public.t_20"])}
            assert await chosen() == ref
        finally:
            await conn.close()
            await c.close()


@pytest.mark.slow
async def test_ten_thousand_tables_stay_bounded() -> None:
    need_local_server()
    with scratch_database("mevwatch_many") as db:
        # COMMIT every 1000 tables keeps each transaction within the server's lock table
        local_psql(
            "DO $$ BEGIN FOR i IN 1..10000 LOOP EXECUTE format('CREATE TABLE t_%s (id int)', i);"
            " IF i % 1000 = 0 THEN COMMIT; END IF; END LOOP; END $$",
            db,
        )
        local_psql(
            "INSERT INTO t_77 SELECT generate_series(1, 500); DELETE FROM t_77 WHERE id > 100;",
            db,
        )
        c = _collector(_local(db), top_tables=50, tables=["t_9999"], timeout=10.0)
        try:
            await _run(c)
            s, err = await _run(c)
        finally:
            await c.close()
        assert err is None
        tables = {dict(lbl)["table"] for (n, lbl) in s if "table" in dict(lbl)}
        assert len(tables) <= 2 * 50 + 1
        assert {"t_9999", "t_77"} <= tables
        assert _value(s, "mevwatch_postgres_table_dead_tuples", table="t_77") == 400
        assert len(s) < 2000


# --- connection failures: bounded time, clear reason --------------------------------------------


async def _fails_with(dsn: str, reasons: set[str], within: float, **options: Any) -> CollectorError:
    c = _collector(dsn, **options)
    started = time.monotonic()
    try:
        s, err = await _run(c)
    finally:
        await c.close()
    assert time.monotonic() - started < within
    assert err is not None
    assert err.reason in reasons, err.message
    assert _value(s, "mevwatch_postgres_up") == 0
    assert _value(s, "mevwatch_postgres_connect_failure", reason=err.reason) == 1
    assert sum(v for (n, _), v in s.items() if n == "mevwatch_postgres_connect_failure") == 1
    return err


async def test_nothing_listening_is_refused_at_once() -> None:
    err = await _fails_with(f"postgresql://postgres:pw1@127.0.0.1:{free_port()}/postgres", {"refused"}, 2.0)
    assert "pw1" not in err.message


async def test_unroutable_host_fails_within_the_connect_timeout() -> None:
    # TEST-NET-1 is never routed: depending on the host's firewall and routes the attempt is rejected,
    # unreachable, or silently dropped (then it must end at connect_timeout)
    await _fails_with("postgresql://postgres@192.0.2.1:5432/postgres", {"unreachable", "timeout", "refused"}, 3.0,
                      connect_timeout=1.0)


async def test_server_that_accepts_but_never_answers_times_out() -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(1 << 16)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        err = await _fails_with(f"postgresql://postgres@127.0.0.1:{port}/postgres", {"timeout"}, 3.0,
                                connect_timeout=0.5)
        assert held, "the collector never connected"
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
    assert "timeout" in err.message or "no answer" in err.message or err.message


async def test_failing_server_is_retried_with_backoff_not_every_run() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read(1 << 16)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = _collector(f"postgres://postgres@127.0.0.1:{port}/postgres", interval=1.0, timeout=2.0,
                   connect_timeout=0.2, reconnect_backoff_max=8.0)
    try:
        reasons = []
        for _ in range(4):
            s, err = await _run(c)
            assert err is not None
            assert _value(s, "mevwatch_postgres_up") == 0
            reasons.append(err.reason)
        # attempts 1 and 2 connect (the first backoff equals the interval); runs 3 and 4 fall inside the
        # 2 s pause after the second failure and report the last reason without connecting
        assert reasons == ["timeout"] * 4
        assert len(accepted) == 2
    finally:
        await c.close()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()


async def test_query_cancelled_by_statement_timeout_is_an_error_not_a_hang(scratch_db: str) -> None:
    started = time.monotonic()
    err = await _fails_with(_local(scratch_db), {"error"}, 3.0, statement_timeout="1ms")
    assert "QueryCanceledError" in err.message
    assert time.monotonic() - started < 3.0


async def test_missing_database_is_named() -> None:
    need_local_server()
    err = await _fails_with("postgresql://postgres@127.0.0.1:5432/mevwatch_no_such_db", {"no_database"}, 3.0)
    assert "mevwatch_no_such_db" in err.message


# --- a throwaway cluster: pg_stat_statements, passwords, restarts -------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with pg_cluster({"shared_preload_libraries": "pg_stat_statements"}) as c:
        c.psql("CREATE EXTENSION pg_stat_statements;"
               "CREATE ROLE mw_pw LOGIN PASSWORD 'right-horse-battery'")
        yield c


@pytest.fixture
def pw_file(tmp_path: Path) -> Path:
    p = tmp_path / "pgpass"
    p.write_text("right-horse-battery\n")
    return p


@pytest.mark.slow
async def test_slow_statements_appear_in_top_n_and_raise_the_count(cluster: PgCluster) -> None:
    c = _collector(cluster.dsn(), top_statements=5, slow_statement_threshold="100ms")
    try:
        before, err = await _run(c)
        assert err is None
        assert _value(before, "mevwatch_postgres_extension_available", extension="pg_stat_statements") == 1
        count_before = _value(before, "mevwatch_postgres_slow_statements")
        assert count_before is not None
        for _ in range(3):
            cluster.psql("SELECT pg_sleep(0.15)")
        after, err = await _run(c)
        assert err is None
        assert _must(after, "mevwatch_postgres_slow_statements") > count_before
        top = {
            dict(lbl)["queryid"]: v for (n, lbl), v in after.items() if n == "mevwatch_postgres_statement_mean_seconds"
        }
        assert 1 <= len(top) <= 5
        assert max(top.values()) >= 0.1
        slowest = max(top, key=lambda k: top[k])
        assert _value(after, "mevwatch_postgres_statement_calls_total", queryid=slowest, datname="postgres") == 3
        assert all(set(dict(lbl)) == {"server", "datname", "queryid"}
                   for (n, lbl) in after if n.startswith("mevwatch_postgres_statement_"))
        statements = await c.top_statements(limit=3)
        assert statements[0].queryid == int(slowest)
        assert "pg_sleep" in statements[0].query
        assert statements[0].mean_seconds >= 0.1
    finally:
        await c.close()


@pytest.mark.slow
async def test_wrong_password_is_auth_and_never_shown(cluster: PgCluster, pw_file: Path) -> None:
    err = await _fails_with(cluster.dsn(user="mw_pw", password="wrong-donkey"), {"auth"}, 3.0)
    assert "wrong-donkey" not in err.message
    assert "password authentication failed" in err.message
    ok = _collector(cluster.dsn(user="mw_pw", password="wrong-donkey"), password_file=pw_file)
    try:
        s, err2 = await _run(ok)
    finally:
        await ok.close()
    assert err2 is None
    assert _value(s, "mevwatch_postgres_up") == 1


def _mevwatch_backends(cluster: PgCluster) -> int:
    return int(cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mevwatch'"))


@pytest.mark.slow
async def test_restart_goes_down_then_up_without_leaking_connections(cluster: PgCluster) -> None:
    c = _collector(cluster.dsn(), interval=0.5, reconnect_backoff_max=1.0, min_connections=1, max_connections=2)
    try:
        s, err = await _run(c)
        assert err is None
        assert _value(s, "mevwatch_postgres_up") == 1
        for _ in range(2):
            await asyncio.to_thread(cluster.stop)
            s, err = await _run(c)
            assert err is not None
            assert err.reason in {"refused", "lost"}
            assert _value(s, "mevwatch_postgres_up") == 0
            await asyncio.to_thread(cluster.start)
            deadline = time.monotonic() + 5.0
            while True:
                await asyncio.sleep(0.5)
                s, err = await _run(c)
                if _value(s, "mevwatch_postgres_up") == 1 or time.monotonic() > deadline:
                    break
            assert err is None
            assert _value(s, "mevwatch_postgres_up") == 1
            assert 1 <= _mevwatch_backends(cluster) <= 2
    finally:
        await c.close()
    assert _mevwatch_backends(cluster) == 0


@pytest.mark.slow
def test_daemon_reports_each_target_and_keeps_passwords_out_of_its_log(cluster: PgCluster, tmp_path: Path) -> None:
    need_local_server()
    config = f"""
collectors:
  - postgres:
      interval: 1s
      targets:
        - dsn: {LOCAL_DSN}
        - dsn: {cluster.dsn(user="mw_pw", password="wrong-donkey")}
"""
    with RunningDaemon(tmp_path, config) as d:
        d.wait_for("mevwatch_postgres_up", server="127.0.0.1:5432")
        time.sleep(1.5)
        text = d.get()
        assert sample_value(text, "mevwatch_postgres_up", server="127.0.0.1:5432") == 1
        assert sample_value(text, "mevwatch_postgres_up", server=f"127.0.0.1:{cluster.port}") == 0
        assert sample_value(text, "mevwatch_postgres_connect_failure", server=f"127.0.0.1:{cluster.port}",
                            reason="auth") == 1
        assert sample_value(text, "mevwatch_collector_success", collector="postgres") == 0
    log = d.log.read_text()
    assert "postgres_down" in log
    assert "wrong-donkey" not in log
    assert "wrong-donkey" not in text


def test_diagnose_shows_slow_statement_text_that_metrics_never_carry(cluster: PgCluster, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    cluster.psql("SELECT pg_stat_statements_reset()")  # earlier tests' slower statements would crowd the top 5
    for _ in range(2):
        cluster.psql("SELECT pg_sleep(0.12) AS diagnose_probe")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 's'}\ncollectors:\n  - postgres:\n"
                   f"      targets: [{{dsn: '{cluster.dsn()}'}}]\n")
    proc = subprocess.run([sys.executable, "-m", "mevwatch", "diagnose", "--config", str(cfg),
                           "--section", "postgres", "--json"], capture_output=True, text=True, timeout=60)
    lines = json.loads(proc.stdout)["lines"]
    probe = [ln for ln in lines if "diagnose_probe" in ln["value"]]
    assert probe, lines
    assert probe[0]["value"].startswith("SLOW mean ")
    assert probe[0]["check"].startswith("statement ")
    assert probe[0]["section"] == "postgres-down"
