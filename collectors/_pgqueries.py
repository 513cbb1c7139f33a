"""SQL of the postgres collector: one statement per section, each a single round trip.

Kept apart from the collector so the benchmark and ``mevwatch diagnose`` read the same text.
"""

from __future__ import annotations

__all__ = [
    "ACTIVITY",
    "BLOAT_INDEX_ESTIMATE",
    "BLOAT_TABLE_ESTIMATE",
    "DATABASES",
    "SERVER",
    "STATEMENTS",
    "STATEMENTS_TEXT",
    "TABLES",
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
          WHERE e.extname = 'pg_stat_statements') AS statements_schema
"""

# Without pg_read_all_stats other roles' sessions show NULL state and backend_type: the ones attached
# to a database are counted as 'unknown' (mostly clients; autovacuum workers cannot be told apart).
ACTIVITY = """
SELECT coalesce(datname::text, '') AS datname,
       coalesce(state, 'unknown') AS state,
       count(*)::int AS connections,
       coalesce(extract(epoch FROM max(now() - xact_start)), 0)::float8 AS oldest_xact,
       coalesce(extract(epoch FROM max(now() - state_change)
                FILTER (WHERE state LIKE 'idle in transaction%')), 0)::float8 AS oldest_idle_xact
FROM pg_stat_activity
WHERE (backend_type = 'client backend' OR (backend_type IS NULL AND datname IS NOT NULL))
  AND pid <> pg_backend_pid()
GROUP BY 1, 2
"""

DATABASES = """
SELECT d.datname::text AS datname,
       age(d.datfrozenxid)::bigint AS xid_age,
       CASE WHEN has_database_privilege(d.oid, 'CONNECT') THEN pg_database_size(d.oid) END AS size,
       s.blks_hit, s.blks_read
FROM pg_database d LEFT JOIN pg_stat_database s ON s.datid = d.oid
"""

# Ranking by pages from pg_class (kept by VACUUM/ANALYZE) avoids a stat() of every relation file;
# sizes are measured only for the tables chosen. Measuring a size takes a lock, so a table held or
# awaited in ACCESS EXCLUSIVE mode (VACUUM FULL, ALTER TABLE) is skipped rather than waited for.
TABLES = """
WITH t AS (
  SELECT s.relid, s.schemaname::text AS schema, s.relname::text AS relname, s.n_live_tup, s.n_dead_tup,
         s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze,
         c.relpages::bigint + coalesce(tc.relpages, 0) AS pages
  FROM pg_stat_user_tables s
  JOIN pg_class c ON c.oid = s.relid
  LEFT JOIN pg_class tc ON tc.oid = c.reltoastrelid
), sel AS (
  (SELECT relid FROM t ORDER BY n_dead_tup DESC, relid LIMIT $1)
  UNION (SELECT relid FROM t ORDER BY pages DESC, relid LIMIT $1)
  UNION (SELECT relid FROM t WHERE schema || '.' || relname = ANY($2::text[]) OR relname = ANY($2::text[]))
)
SELECT t.relid, t.schema, t.relname, t.n_live_tup, t.n_dead_tup, lk.relation IS NOT NULL AS locked,
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

# The statistical estimate of ioguix/pgsql-bloat-estimation (table_bloat.sql), restricted to the
# chosen tables. One change: the live tuple count comes from pg_stat_user_tables when it has one,
# because reltuples moves only on VACUUM/ANALYZE and would hide a mass DELETE until then.
BLOAT_TABLE_ESTIMATE = """
SELECT tblid AS relid, schemaname AS schema, tblname AS relname, bs * tblpages AS real_size,
       CASE WHEN tblpages > est_tblpages_ff THEN (tblpages - est_tblpages_ff) * bs ELSE 0 END AS bloat_size
FROM (
  SELECT ceil(tuples / floor((bs - page_hdr) * fillfactor / (tpl_size * 100))) + ceil(toasttuples / 4)
           AS est_tblpages_ff,
         tblpages, bs, tblid, schemaname, tblname, is_na
  FROM (
    SELECT (4 + tpl_hdr_size + tpl_data_size + (2 * ma)
            - CASE WHEN tpl_hdr_size % ma = 0 THEN ma ELSE tpl_hdr_size % ma END
            - CASE WHEN ceil(tpl_data_size)::int % ma = 0 THEN ma ELSE ceil(tpl_data_size)::int % ma END
           ) AS tpl_size,
           (heappages + toastpages) AS tblpages, tuples, toasttuples, bs, page_hdr, tblid, schemaname,
           tblname, fillfactor, is_na
    FROM (
      SELECT tbl.oid AS tblid, ns.nspname::text AS schemaname, tbl.relname::text AS tblname,
             CASE WHEN st.n_live_tup + st.n_dead_tup > 0 THEN st.n_live_tup::float8
                  ELSE greatest(tbl.reltuples, 0) END AS tuples,
             tbl.relpages AS heappages, coalesce(toast.relpages, 0) AS toastpages,
             greatest(coalesce(toast.reltuples, 0), 0) AS toasttuples,
             coalesce(substring(array_to_string(tbl.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::smallint, 100)
               AS fillfactor,
             current_setting('block_size')::numeric AS bs,
             CASE WHEN version() ~ 'mingw32|64-bit|x86_64|ppc64|ia64|amd64' THEN 8 ELSE 4 END AS ma,
             24 AS page_hdr,
             23 + CASE WHEN max(coalesce(s.null_frac, 0)) > 0 THEN (7 + count(s.attname)) / 8 ELSE 0::int END
               AS tpl_hdr_size,
             sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 0)) AS tpl_data_size,
             bool_or(att.atttypid = 'pg_catalog.name'::regtype)
               OR sum(CASE WHEN att.attnum > 0 THEN 1 ELSE 0 END) <> count(s.attname) AS is_na
      FROM pg_attribute att
      JOIN pg_class tbl ON att.attrelid = tbl.oid
      JOIN pg_namespace ns ON ns.oid = tbl.relnamespace
      LEFT JOIN pg_stat_user_tables st ON st.relid = tbl.oid
      LEFT JOIN pg_stats s ON s.schemaname = ns.nspname AND s.tablename = tbl.relname
                          AND s.inherited = false AND s.attname = att.attname
      LEFT JOIN pg_class toast ON tbl.reltoastrelid = toast.oid
      WHERE NOT att.attisdropped AND att.attnum > 0 AND tbl.oid = ANY($1::oid[])
      GROUP BY tbl.oid, ns.nspname, tbl.relname, st.n_live_tup, st.n_dead_tup, tbl.reltuples, tbl.relpages,
               toast.relpages, toast.reltuples, tbl.reloptions
    ) s
  ) s2
) s3
WHERE NOT is_na AND tblpages > 0
"""

# ioguix/pgsql-bloat-estimation btree_bloat.sql, restricted to btree indexes of the chosen tables; the
# tuple count is the table's live tuples for the same reason as above (dead entries are bloat too).
BLOAT_INDEX_ESTIMATE = """
SELECT idxoid AS relid, nspname AS schema, tblname AS relname, idxname AS index, bs * relpages AS real_size,
       CASE WHEN relpages > est_pages_ff THEN bs * (relpages - est_pages_ff) ELSE 0 END AS bloat_size
FROM (
  SELECT coalesce(1 + ceil(reltuples / floor((bs - pageopqdata - pagehdr) * fillfactor
                                             / (100 * (4 + nulldatahdrwidth)::float))), 0) AS est_pages_ff,
         bs, nspname, tblname, idxname, idxoid, relpages, is_na
  FROM (
    SELECT maxalign, bs, nspname, tblname, idxname, reltuples, relpages, idxoid, fillfactor,
           (index_tuple_hdr_bm + maxalign
              - CASE WHEN index_tuple_hdr_bm % maxalign = 0 THEN maxalign ELSE index_tuple_hdr_bm % maxalign END
              + nulldatawidth + maxalign
              - CASE WHEN nulldatawidth = 0 THEN 0
                     WHEN nulldatawidth::integer % maxalign = 0 THEN maxalign
                     ELSE nulldatawidth::integer % maxalign END
           )::numeric AS nulldatahdrwidth,
           pagehdr, pageopqdata, is_na
    FROM (
      SELECT n.nspname::text AS nspname, i.tblname, i.idxname, i.reltuples, i.relpages, i.idxoid, i.fillfactor,
             current_setting('block_size')::numeric AS bs,
             CASE WHEN version() ~ 'mingw32|64-bit|x86_64|ppc64|ia64|amd64' THEN 8 ELSE 4 END AS maxalign,
             24 AS pagehdr, 16 AS pageopqdata,
             CASE WHEN max(coalesce(s.null_frac, 0)) = 0 THEN 8 ELSE 8 + ((32 + 8 - 1) / 8) END
               AS index_tuple_hdr_bm,
             sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 1024)) AS nulldatawidth,
             max(CASE WHEN i.atttypid = 'pg_catalog.name'::regtype THEN 1 ELSE 0 END) > 0
               OR count(s.attname) <> count(*) AS is_na
      FROM (
        SELECT ct.relname::text AS tblname, ct.relnamespace, ic.idxname, ic.reltuples, ic.relpages, ic.idxoid,
               ic.fillfactor, coalesce(a1.attname, a2.attname) AS attname,
               coalesce(a1.atttypid, a2.atttypid) AS atttypid,
               CASE WHEN a1.attnum IS NULL THEN ic.idxname ELSE ct.relname::text END AS attrelname
        FROM (
          SELECT ci.relname::text AS idxname,
                 CASE WHEN st.n_live_tup + st.n_dead_tup > 0 THEN st.n_live_tup::float8
                      ELSE greatest(ci.reltuples, 0) END AS reltuples,
                 ci.relpages, i.indrelid AS tbloid, i.indexrelid AS idxoid,
                 coalesce(substring(array_to_string(ci.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::smallint, 90)
                   AS fillfactor,
                 i.indkey, generate_series(1, i.indnatts) AS attpos
          FROM pg_index i
          JOIN pg_class ci ON ci.oid = i.indexrelid
          LEFT JOIN pg_stat_user_tables st ON st.relid = i.indrelid
          WHERE ci.relam = (SELECT oid FROM pg_am WHERE amname = 'btree') AND ci.relpages > 0
            AND i.indrelid = ANY($1::oid[])
        ) ic
        JOIN pg_class ct ON ct.oid = ic.tbloid
        LEFT JOIN pg_attribute a1 ON ic.indkey[ic.attpos - 1] <> 0 AND a1.attrelid = ic.tbloid
                                 AND a1.attnum = ic.indkey[ic.attpos - 1]
        LEFT JOIN pg_attribute a2 ON ic.indkey[ic.attpos - 1] = 0 AND a2.attrelid = ic.idxoid
                                 AND a2.attnum = ic.attpos
      ) i
      JOIN pg_namespace n ON n.oid = i.relnamespace
      LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = i.attrelname AND s.attname = i.attname
      GROUP BY 1, 2, 3, 4, 5, 6, 7
    ) rows_data_stats
  ) rows_hdr_pdg_stats
) relation_stats
WHERE NOT is_na
"""


def bloat_pgstattuple(schema: str) -> str:
    """Exact dead-tuple and free-space bytes of the chosen tables, reading only pages not all-visible."""
    fn = f'"{schema.replace(chr(34), chr(34) * 2)}".pgstattuple_approx'
    return f"""
SELECT c.oid AS relid, n.nspname::text AS schema, c.relname::text AS relname,
       a.table_len AS real_size, a.dead_tuple_len + a.approx_free_space AS bloat_size
FROM unnest($1::oid[]) AS r(oid)
JOIN pg_class c ON c.oid = r.oid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL {fn}(c.oid) a
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
