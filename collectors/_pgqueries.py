"""SQL of the postgres collector: one statement per section, each a single round trip.

Kept apart from the collector so the benchmark and ``mevwatch diagnose`` read the same text.
"""

from __future__ import annotations

__all__ = [
    "ACTIVITY",
    "DATABASES",
    "DATABASE_SIZES",
    "INDEX_PAGES",
    "INDEX_WIDTHS",
    "SERVER",
    "STATEMENTS",
    "STATEMENTS_TEXT",
    "TABLES",
    "TABLE_WIDTHS",
    "bloat_pgstattuple",
]

# pg_has_role is true for superusers, so one test covers both ways of reading everything.
SERVER = """
SELECT current_setting('server_version') AS version,
       current_setting('server_version_num')::int AS version_num,
       current_setting('max_connections')::int AS max_connections,
       current_database() AS datname,
       pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS read_all_stats,
       pg_has_role(current_user, 'pg_stat_scan_tables', 'USAGE') AS stat_scan_tables,
       (SELECT count(*) FROM pg_locks WHERE NOT granted)::int AS locks_waiting,
       (SELECT coalesce(array_agg(extname::text), '{}') FROM pg_extension
          WHERE extname IN ('pg_stat_statements', 'pgstattuple')) AS extensions,
       (SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
          WHERE e.extname = 'pgstattuple') AS pgstattuple_schema,
       (SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
          WHERE e.extname = 'pg_stat_statements') AS statements_schema,
       current_setting('block_size')::int AS block_size,
       CASE WHEN version() ~ 'mingw32|64-bit|x86_64|ppc64|ia64|amd64' THEN 8 ELSE 4 END AS max_align
"""

# Without pg_read_all_stats other roles' sessions show NULL state and backend_type: the ones attached
# to a database are counted as 'unknown' (mostly clients; autovacuum workers cannot be told apart).
ACTIVITY = """
SELECT coalesce(datname::text, '') AS datname,
       coalesce(state, 'unknown') AS state,
       count(*)::int AS connections,
       coalesce(extract(epoch FROM max(now() - xact_start) FILTER (WHERE pid <> pg_backend_pid())), 0)::float8
         AS oldest_xact,
       coalesce(extract(epoch FROM max(now() - state_change)
                FILTER (WHERE state LIKE 'idle in transaction%')), 0)::float8 AS oldest_idle_xact
FROM pg_stat_activity
WHERE backend_type = 'client backend' OR (backend_type IS NULL AND datname IS NOT NULL)
GROUP BY 1, 2
"""

DATABASES = """
SELECT d.datname::text AS datname, age(d.datfrozenxid)::bigint AS xid_age, s.blks_hit, s.blks_read
FROM pg_database d LEFT JOIN pg_stat_database s ON s.datid = d.oid
"""

# pg_database_size stats every file of every database: its cost grows with the relations on the server
# (66 ms at 10,000 tables against 4 ms at 100), so it runs on its own, slower cadence.
DATABASE_SIZES = """
SELECT d.datname::text AS datname, pg_database_size(d.oid) AS size
FROM pg_database d WHERE has_database_privilege(d.oid, 'CONNECT')
"""

# The table selection reads a bounded slice of the catalog per run, not the whole of it: the next $4
# tables after oid $3 in pg_class's oid index (one range scan, which also reads the columns the
# ranking needs), plus the tables chosen last run ($5) and the named ones ($2, by the relname index),
# each looked up by oid. The top $1 by dead tuples (one statistics lookup per candidate) and by pages
# (from pg_class, kept by VACUUM/ANALYZE: no stat() of every relation file) are ranked among those in
# SQL; the collector keeps the chosen ones and moves the slice on, so a whole pass over the catalog
# takes ceil(tables / $4) runs and a table entering the top is chosen within one pass. A
# whole-catalog pass per run cost 20 ms at 10,000 tables (bench/postgres.py), 0.3 ms at 100; looking
# each slice table up again by oid after the range scan had read it cost a third of the ranking (7.8
# -> 4.9 ms for 1,000 candidates, a second between runs as in the daemon). Every other figure is read
# for the chosen tables only. Measuring a size takes a lock, so a table held or awaited in ACCESS
# EXCLUSIVE mode (VACUUM FULL, ALTER TABLE) is skipped rather than waited for. The kinds and schemas
# are pg_stat_user_tables'; oids below 16384 are the system's own. slice_end / slice_len tell the
# collector where the next slice starts.
TABLES = """
WITH slice AS MATERIALIZED (
  SELECT c.oid, c.relnamespace, c.relpages, c.reltoastrelid FROM pg_class c
  WHERE c.oid > greatest($3::oid, 16383::oid) AND c.relkind IN ('r', 'm', 'p')
  ORDER BY c.oid LIMIT $4
), named AS (
  SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relname = ANY(ARRAY(SELECT regexp_replace(x, '^[^.]*[.]', '') FROM unnest($2::text[]) x) || $2::text[])
    AND (n.nspname || '.' || c.relname = ANY($2::text[]) OR c.relname = ANY($2::text[]))
), cand AS (
  SELECT oid, relnamespace, relpages, reltoastrelid FROM slice
  UNION ALL
  -- one index lookup per chosen or named table outside the slice (LATERAL, OFFSET 0): a join would
  -- hash the whole of pg_class
  SELECT c.oid, c.relnamespace, c.relpages, c.reltoastrelid
  FROM (SELECT unnest($5::oid[]) UNION SELECT oid FROM named) x(oid)
  CROSS JOIN LATERAL (
    SELECT c.oid, c.relnamespace, c.relpages, c.reltoastrelid FROM pg_class c
    WHERE c.oid = x.oid AND c.relkind IN ('r', 'm', 'p') OFFSET 0
  ) c
  WHERE x.oid NOT IN (SELECT oid FROM slice)
), c AS (
  SELECT c.oid AS relid, c.relpages::bigint + coalesce(tc.relpages, 0) AS pages,
         pg_stat_get_dead_tuples(c.oid) AS n_dead_tup
  FROM cand c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_class tc ON tc.oid = c.reltoastrelid
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
), sel AS (
  (SELECT relid FROM c ORDER BY n_dead_tup DESC, relid LIMIT $1)
  UNION (SELECT relid FROM c ORDER BY pages DESC, relid LIMIT $1)
  UNION (SELECT relid FROM c WHERE relid IN (SELECT oid FROM named))
), t AS (
  SELECT c.oid AS relid, n.nspname::text AS schema, c.relname::text AS relname,
         pg_stat_get_live_tuples(c.oid) AS n_live_tup, pg_stat_get_dead_tuples(c.oid) AS n_dead_tup,
         pg_stat_get_last_vacuum_time(c.oid) AS last_vacuum,
         pg_stat_get_last_autovacuum_time(c.oid) AS last_autovacuum,
         pg_stat_get_last_analyze_time(c.oid) AS last_analyze,
         pg_stat_get_last_autoanalyze_time(c.oid) AS last_autoanalyze,
         c.relpages::bigint AS heap_pages, coalesce(tc.relpages, 0)::bigint AS toast_pages,
         greatest(c.reltuples, 0)::float8 AS reltuples, greatest(coalesce(tc.reltuples, 0), 0)::float8 AS toast_tuples,
         coalesce(substring(array_to_string(c.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::int, 100) AS fillfactor
  FROM sel
  JOIN pg_class c ON c.oid = sel.relid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_class tc ON tc.oid = c.reltoastrelid
)
SELECT t.relid, t.schema, t.relname, t.n_live_tup, t.n_dead_tup, lk.relation IS NOT NULL AS locked,
       t.heap_pages, t.toast_pages, t.reltuples, t.toast_tuples, t.fillfactor,
       extract(epoch FROM greatest(t.last_analyze, t.last_autoanalyze))::float8 AS analyzed_at,
       CASE WHEN lk.relation IS NULL THEN pg_total_relation_size(t.relid) END AS size,
       extract(epoch FROM now() - t.last_vacuum)::float8 AS since_vacuum,
       extract(epoch FROM now() - t.last_autovacuum)::float8 AS since_autovacuum,
       extract(epoch FROM now() - t.last_analyze)::float8 AS since_analyze,
       extract(epoch FROM now() - t.last_autoanalyze)::float8 AS since_autoanalyze,
       (SELECT max(oid) FROM slice)::bigint AS slice_end, (SELECT count(*) FROM slice)::int AS slice_len
FROM t
LEFT JOIN (SELECT DISTINCT relation FROM pg_locks
           WHERE mode = 'AccessExclusiveLock' AND locktype = 'relation'
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())) lk
  ON lk.relation = t.relid
"""

# Inputs of the statistical bloat estimate of ioguix/pgsql-bloat-estimation (table_bloat.sql and
# btree_bloat.sql). The column widths from pg_stats change only on ANALYZE, so these run only for
# relations analyzed since the last read; the pages and tuple counts come with TABLES and INDEX_PAGES
# on every run and the arithmetic is done in Python. pg_stats is looked up one column at a time
# (LATERAL, kept a subquery by OFFSET 0): joined as a whole, the view checks the privilege of every
# column of every table in the database (1.1 s at 10,000 tables) before the chosen ones are picked.
TABLE_WIDTHS = """
SELECT tbl.oid AS relid,
       coalesce(max(s.null_frac), 0)::float8 AS max_null_frac,
       sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 0))::float8 AS data_width,
       count(s.found)::int AS with_stats, count(*)::int AS columns,
       bool_or(att.atttypid = 'pg_catalog.name'::regtype) AS has_name
FROM pg_class tbl
JOIN pg_namespace ns ON ns.oid = tbl.relnamespace
JOIN pg_attribute att ON att.attrelid = tbl.oid
LEFT JOIN LATERAL (
  SELECT st.null_frac, st.avg_width, true AS found FROM pg_stats st
  WHERE st.schemaname = ns.nspname AND st.tablename = tbl.relname AND NOT st.inherited AND st.attname = att.attname
  OFFSET 0
) s ON true
WHERE NOT att.attisdropped AND att.attnum > 0 AND tbl.oid = ANY($1::oid[])
GROUP BY tbl.oid
"""

# Expression columns of an index have their statistics under the index's own name. Each column's
# attribute is looked up by key (LATERAL, OFFSET 0), as the pg_stats rows are: a join would hash the
# whole of pg_attribute, which grows with every table in the database.
INDEX_WIDTHS = """
SELECT i.indexrelid AS relid,
       coalesce(max(s.null_frac), 0)::float8 AS max_null_frac,
       sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 1024))::float8 AS data_width,
       count(s.found)::int AS with_stats, count(*)::int AS columns,
       bool_or(a.atttypid = 'pg_catalog.name'::regtype) AS has_name
FROM pg_index i
JOIN pg_class ci ON ci.oid = i.indexrelid
JOIN pg_class ct ON ct.oid = i.indrelid
JOIN pg_namespace n ON n.oid = ct.relnamespace
CROSS JOIN LATERAL generate_series(1, i.indnatts) AS k(attpos)
CROSS JOIN LATERAL (
  SELECT          CASE WHEN i.indkey[k.attpos - 1] = 0 THEN i.indexrelid ELSE i.indrelid END AS attrelid,
         CASE WHEN i.indkey[k.attpos - 1] = 0 THEN k.attpos ELSE i.indkey[k.attpos - 1] END AS attnum,
         CASE WHEN i.indkey[k.attpos - 1] = 0 THEN ci.relname ELSE ct.relname END AS stats_relname
  OFFSET 0
) col
LEFT JOIN LATERAL (
  SELECT att.attname, att.atttypid FROM pg_attribute att
  WHERE att.attrelid = col.attrelid AND att.attnum = col.attnum
  OFFSET 0
) a ON true
LEFT JOIN LATERAL (
  SELECT st.null_frac, st.avg_width, true AS found FROM pg_stats st
  WHERE st.schemaname = n.nspname AND st.tablename = col.stats_relname AND st.attname = a.attname
  OFFSET 0
) s ON true
WHERE ci.relam = (SELECT oid FROM pg_am WHERE amname = 'btree') AND i.indexrelid = ANY($1::oid[])
GROUP BY i.indexrelid
"""

INDEX_PAGES = """
SELECT i.indexrelid AS relid, i.indrelid AS table_relid, ci.relname::text AS index, ci.relpages::bigint AS pages,
       coalesce(substring(array_to_string(ci.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::int, 90) AS fillfactor
FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid
WHERE ci.relam = (SELECT oid FROM pg_am WHERE amname = 'btree') AND ci.relpages > 0
  AND i.indrelid = ANY($1::oid[])
"""


def bloat_pgstattuple(schema: str) -> str:
    """Exact dead-tuple and free-space bytes of the chosen tables, reading only pages not all-visible.

    A partitioned table has no storage: pgstattuple_approx would fail the statement for all of them."""
    fn = f'"{schema.replace(chr(34), chr(34) * 2)}".pgstattuple_approx'
    return f"""
SELECT c.oid AS relid, n.nspname::text AS schema, c.relname::text AS relname,
       a.table_len AS real_size, a.dead_tuple_len + a.approx_free_space AS bloat_size
FROM unnest($1::oid[]) AS r(oid)
JOIN pg_class c ON c.oid = r.oid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL {fn}(c.oid) a
WHERE c.relkind IN ('r', 'm')
"""


# showtext := false: the query texts file is not read on every scrape (postgres_exporter reads it).
# The slow count is over entries, as the runbook's query counts them; the top N merges the entries of
# one statement run by several roles, so (datname, queryid) stays a unique series. The outer LEFT JOIN
# keeps the count when no statement is visible.
STATEMENTS = """
WITH s AS (
  SELECT dbid, queryid, calls, total_exec_time, mean_exec_time FROM {schema}.pg_stat_statements(false)
  WHERE toplevel
)
SELECT (SELECT count(*) FROM s WHERE mean_exec_time > $1) AS over,
       top.queryid, d.datname::text AS datname, top.calls, top.mean_exec_time, top.total_exec_time
FROM (SELECT 1) one
LEFT JOIN LATERAL (
  SELECT dbid, queryid, sum(calls) AS calls, sum(total_exec_time) AS total_exec_time,
         sum(total_exec_time) / nullif(sum(calls), 0) AS mean_exec_time
  FROM s WHERE queryid IS NOT NULL
  GROUP BY dbid, queryid
  ORDER BY mean_exec_time DESC NULLS LAST
  LIMIT $2
) top ON true
LEFT JOIN pg_database d ON d.oid = top.dbid
"""

STATEMENTS_TEXT = """
SELECT s.queryid, d.datname::text AS datname, sum(s.calls) AS calls,
       sum(s.total_exec_time) / nullif(sum(s.calls), 0) AS mean_exec_time,
       sum(s.total_exec_time) AS total_exec_time, left(min(s.query), $2) AS query
FROM {schema}.pg_stat_statements(true) s LEFT JOIN pg_database d ON d.oid = s.dbid
WHERE s.toplevel AND s.queryid IS NOT NULL
GROUP BY s.dbid, s.queryid, d.datname
ORDER BY 4 DESC NULLS LAST
LIMIT $1
"""
