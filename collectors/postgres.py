"""PostgreSQL health from the runbook's "Database Query Performance Degradation" and "Disk Space Exhaustion".

Connections vs max_connections, long and idle-in-transaction transactions, waiting locks, xid wraparound,
cache hit ratio, database and table sizes, dead tuples, bloat, and the slowest statements.
"""

from __future__ import annotations

import asyncio
import errno
import math
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mevwatch.aio import wait_for
from mevwatch.collectors import _pgqueries as q
from mevwatch.collectors.base import CollectorError, CollectorOptions, Families, MetricSpec, PollCollector
from mevwatch.collectors.registry import register
from mevwatch.families import CounterMetricFamily, GaugeMetricFamily, Metric
from mevwatch.fields import Duration, read_secret_file
from mevwatch.redaction import redact

__all__ = [
    "CONNECTION_STATES",
    "FAILURE_REASONS",
    "PostgresCollector",
    "PostgresOptions",
    "PostgresTarget",
    "Statement",
    "Widths",
    "classify_error",
    "dead_tuple_ratio",
    "dead_tuple_share",
    "estimate_index_bloat",
    "estimate_table_bloat",
    "normalize_state",
    "parse_dsn",
]

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
XID_WRAPAROUND_LIMIT = 2**31 - 1

CONNECTION_STATES = (
    "active", "idle", "idle_in_transaction", "idle_in_transaction_aborted", "fastpath_function_call",
    "disabled", "unknown",
)
FAILURE_REASONS = (
    "auth", "no_database", "refused", "unreachable", "dns", "timeout", "starting", "too_many_connections",
    "lost", "error",
)
EXTENSIONS = ("pg_stat_statements", "pgstattuple")
PRIVILEGES = ("pg_read_all_stats", "pg_stat_scan_tables")


class PostgresTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dsn: str = Field(
        default=DEFAULT_DSN,
        description="postgresql://user[:password]@host:port/dbname[?sslmode=...]; the password is never logged",
    )
    password_file: Path | None = Field(default=None, description="file holding the password (overrides the DSN's)")

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, v: str) -> str:
        parse_dsn(v)
        return v

    @field_validator("password_file")
    @classmethod
    def _password_file(cls, v: Path | None) -> Path | None:
        if v is not None:
            read_secret_file(v)
        return v


class PostgresOptions(CollectorOptions):
    targets: list[PostgresTarget] = Field(
        default_factory=lambda: [PostgresTarget()], min_length=1,
        description="databases to watch; server-wide metrics come from the first one of each host:port",
    )
    min_connections: int = Field(default=0, ge=0, le=1, description="connections kept open per target")
    max_connections: int = Field(default=2, ge=1, le=5, description="never more connections than this per target")
    connect_timeout: Duration = Field(default=3.0, gt=0, description="time to connect and authenticate")
    statement_timeout: Duration = Field(default=5.0, gt=0, description="server-side limit of each query")
    lock_timeout: Duration = Field(default=1.0, gt=0, description="server-side limit of each lock wait")
    reconnect_backoff_max: Duration = Field(
        default=0.0, ge=0, description=(
            "longest pause between connection attempts to a failing server; 0: one attempt every run, so a "
            "recovery is seen at the next run (a pause is reported as down until it ends)"),
    )
    database_size_interval: Duration = Field(
        default=3600.0, ge=0, description=(
            "time between measurements of database sizes (pg_database_size reads the size of every file of "
            "every database, a cost that grows with the tables); each size is exported with the time it was "
            "measured (database_size_timestamp_seconds). A figure for capacity trends: the disk-full rules "
            "are the filesystems collector's, and the largest tables' sizes are read every run. 0: every run"),
    )
    top_tables: int = Field(
        default=50, ge=0, le=1000, description="tables with the most dead tuples, and the largest ones, per target"
    )
    tables: list[str] = Field(default_factory=list, description="tables always reported: 'schema.table' or 'table'")
    # 500 (was 1,000): a candidate costs the server about 5 µs to rank when the backend wakes once per run,
    # and the slice is the only part of a run that grows with the catalog. At 10,000 tables the table
    # statement cost 7.2-8.5 ms ranking 1,000 a run and 5.4 ms ranking 500, against 3.2-3.7 ms at 100 tables
    # (bench/postgres.py's clusters, side by side, a collection a second): a table entering the top is
    # chosen within 20 runs at 10,000 tables (10 min at 30 s) instead of 10, and up to 500 tables the whole
    # catalog is still ranked every run.
    table_scan_batch: int = Field(
        default=500, ge=10, le=1_000_000, description=(
            "tables ranked per run besides those already chosen, in catalog order: a database with more "
            "tables is covered in ceil(tables / batch) runs, so a table entering the top N is chosen that "
            "late at most; the chosen tables' figures are read every run"),
    )
    bloat: Literal["auto", "pgstattuple", "estimate", "off"] = Field(
        default="auto",
        description="auto: pgstattuple_approx when installed and allowed, else the pg_stats estimate",
    )
    top_statements: int = Field(default=10, ge=0, le=100, description="statements reported by mean time")
    slow_statement_threshold: Duration = Field(
        default=0.1, ge=0, description="mean execution time over which a statement counts as slow"
    )

    @model_validator(mode="after")
    def _unique_targets(self) -> PostgresOptions:
        seen: set[tuple[str, str]] = set()
        for t in self.targets:
            key = parse_dsn(t.dsn)
            if key in seen:
                raise ValueError(f"two targets for database {key[1]!r} on {key[0]}")
            seen.add(key)
        return self


def parse_dsn(dsn: str) -> tuple[str, str]:
    """``(host:port, dbname)`` of a postgresql:// URI: the only parts of a DSN fit for labels."""
    try:
        parts = urlsplit(dsn.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid DSN: {redact(str(exc))}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("DSN must be a URI 'postgresql://user@host:port/dbname'")
    query = parse_qs(parts.query)
    host = parts.hostname or (query.get("host") or [""])[0] or "localhost"
    if port is None:
        port = int((query.get("port") or ["5432"])[0]) if (query.get("port") or ["5432"])[0].isdigit() else 0
    if not 0 < port < 65536:
        raise ValueError("DSN port must be 1-65535")
    user = unquote(parts.username or "") or (query.get("user") or [""])[0] or "postgres"
    dbname = unquote(parts.path.lstrip("/")) or (query.get("dbname") or [""])[0] or user
    if "/" in host:
        host = "unix"
    return f"{host}:{port}", dbname


def classify_error(exc: BaseException) -> str:
    """One of FAILURE_REASONS for a failed connection or query."""
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return "auth"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return "no_database"
    if isinstance(exc, asyncpg.CannotConnectNowError):
        return "starting"
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return "too_many_connections"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, asyncpg.ConnectionDoesNotExistError | asyncpg.InterfaceError | ConnectionError):
        return "lost"
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
            return "unreachable"
        if exc.errno == errno.ECONNREFUSED:
            return "refused"
        if exc.errno == errno.ETIMEDOUT:
            return "timeout"
        return "lost"
    if isinstance(exc, asyncpg.AdminShutdownError):
        return "lost"
    return "error"


def normalize_state(state: str) -> str:
    """pg_stat_activity.state as a label value: 'idle in transaction (aborted)' -> idle_in_transaction_aborted."""
    s = state.replace("(", "").replace(")", "").strip().replace(" ", "_")
    return s if s in CONNECTION_STATES else "unknown"


def dead_tuple_ratio(live: float, dead: float) -> float:
    """The runbook's n_dead_tup / n_live_tup; an empty table counts its dead tuples against one live tuple."""
    return dead / max(live, 1.0)


def dead_tuple_share(live: float, dead: float) -> float:
    """The share of the table's tuples that are dead, n_dead_tup / (n_live_tup + n_dead_tup); 0 when empty."""
    return dead / (live + dead) if live + dead > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Widths:
    """What pg_stats says about a relation's columns: the inputs of the bloat estimate that ANALYZE sets."""

    max_null_frac: float
    data_width: float
    with_stats: int
    columns: int
    has_name: bool

    @property
    def usable(self) -> bool:
        # a column without statistics (never analyzed, or hidden from this role) would make the estimate wrong
        return self.columns > 0 and self.with_stats == self.columns and not self.has_name


def _pad(n: float, align: int) -> int:
    r = int(n) % align
    return align if r == 0 else r


def estimate_table_bloat(
    heap_pages: int, tuples: float, toast_pages: int, toast_tuples: float, fillfactor: int, w: Widths,
    block_size: int = 8192, max_align: int = 8,
) -> float:
    """Bytes of a table beyond what its tuples need at its fillfactor (ioguix table_bloat.sql)."""
    page_header = 24
    header = 23 + ((7 + w.with_stats) // 8 if w.max_null_frac > 0 else 0)
    tuple_size = (4 + header + w.data_width + 2 * max_align
                  - _pad(header, max_align) - _pad(math.ceil(w.data_width), max_align))
    per_page = max(math.floor((block_size - page_header) * fillfactor / (tuple_size * 100)), 1)
    expected = math.ceil(tuples / per_page) + math.ceil(toast_tuples / 4)
    return float(max(heap_pages + toast_pages - expected, 0) * block_size)


def estimate_index_bloat(
    pages: int, tuples: float, fillfactor: int, w: Widths, block_size: int = 8192, max_align: int = 8
) -> float:
    """Bytes of a btree index beyond what one entry per tuple needs at its fillfactor (ioguix btree_bloat.sql)."""
    page_header, special = 24, 16
    header = 8 if w.max_null_frac == 0 else 8 + (32 + 8 - 1) // 8
    data = w.data_width
    width = (header + max_align - _pad(header, max_align)
             + data + max_align - (0 if data == 0 else _pad(round(data), max_align)))
    per_page = max(math.floor((block_size - special - page_header) * fillfactor / (100 * (4 + width))), 1)
    expected = 1 + math.ceil(tuples / per_page)
    return float(max(pages - expected, 0) * block_size)


def _tuples(r: Mapping[str, Any]) -> float:
    # n_live_tup follows every commit; reltuples moves only on VACUUM/ANALYZE and would hide a mass DELETE
    live, dead = r["n_live_tup"] or 0, r["n_dead_tup"] or 0
    return float(live) if live + dead > 0 else float(r["reltuples"])


@dataclass(frozen=True, slots=True)
class Statement:
    """A pg_stat_statements entry for ``mevwatch diagnose`` (the text is never a label)."""

    queryid: int
    datname: str
    calls: int
    mean_seconds: float
    total_seconds: float
    query: str


_HELP: dict[str, tuple[str, tuple[str, ...]]] = {
    "up": ("1 if mevwatch could connect and query the database, 0 if not", ("server", "datname")),
    "connect_failure": (
        "1 for the reason mevwatch cannot reach the database (all 0 while up)", ("server", "datname", "reason")
    ),
    "version_info": ("Server version, value 1", ("server", "version", "version_num")),
    "extension_available": (
        "1 if the extension is installed in this database and usable", ("server", "datname", "extension")
    ),
    "role_privilege": (
        "1 if mevwatch's role has this predefined role (without it some metrics are partial)",
        ("server", "datname", "privilege"),
    ),
    "max_connections": ("Server setting max_connections", ("server",)),
    "connections": ("Client connections by database and state", ("server", "datname", "state")),
    "connections_used_ratio": ("Client connections / max_connections", ("server",)),
    "oldest_transaction_age_seconds": ("Age of the oldest open transaction of a client", ("server",)),
    "oldest_idle_in_transaction_age_seconds": (
        "Time the longest idle-in-transaction session has been idle", ("server",)
    ),
    "locks_waiting": ("Lock requests not granted (sessions waiting for a lock)", ("server",)),
    "database_xid_age": ("Transactions since the database's datfrozenxid (wraparound age)", ("server", "datname")),
    "database_xid_wraparound_ratio": (
        "Wraparound age / 2^31: 1 means the server stops accepting writes", ("server", "datname")
    ),
    "database_cache_hit_ratio": ("blks_hit / (blks_hit + blks_read) since stats reset", ("server", "datname")),
    "database_size_bytes": (
        "Size of the database on disk, measured every database_size_interval", ("server", "datname")
    ),
    "database_size_timestamp_seconds": (
        "Unix time database_size_bytes was measured", ("server", "datname")
    ),
    "table_live_tuples": ("Estimated live rows (n_live_tup)", ("server", "datname", "schema", "table")),
    "table_dead_tuples": ("Estimated dead rows (n_dead_tup)", ("server", "datname", "schema", "table")),
    "table_dead_tuple_ratio": (
        "n_dead_tup / n_live_tup as in the runbook (can exceed 1)", ("server", "datname", "schema", "table")
    ),
    "table_dead_tuple_share": (
        "Share of the table's tuples that are dead: n_dead_tup / (n_live_tup + n_dead_tup), 0 to 1",
        ("server", "datname", "schema", "table"),
    ),
    "table_size_bytes": (
        "Total relation size: heap, TOAST and indexes", ("server", "datname", "schema", "table")
    ),
    "table_last_vacuum_age_seconds": (
        "Seconds since the last VACUUM (trigger manual or auto); absent if never manually vacuumed; a table "
        "autovacuum never ran on has the seconds since mevwatch first saw it so (a lower bound)",
        ("server", "datname", "schema", "table", "trigger"),
    ),
    "table_last_analyze_age_seconds": (
        "Seconds since the last ANALYZE (trigger manual or auto); absent if never",
        ("server", "datname", "schema", "table", "trigger"),
    ),
    "table_bloat_bytes": (
        "Bytes of the table not holding live rows beyond its fillfactor", ("server", "datname", "schema", "table",
                                                                           "method"),
    ),
    "table_bloat_ratio": (
        "table_bloat_bytes / table size", ("server", "datname", "schema", "table", "method"),
    ),
    "index_bloat_bytes": (
        "Estimated bytes of a btree index beyond what its live entries need",
        ("server", "datname", "schema", "table", "index", "method"),
    ),
    "index_bloat_ratio": (
        "index_bloat_bytes / index size", ("server", "datname", "schema", "table", "index", "method"),
    ),
    "slow_statements": (
        "Statements in pg_stat_statements whose mean execution time exceeds slow_statement_threshold", ("server",)
    ),
    "statement_mean_seconds": (
        "Mean execution time of the top statements by mean time", ("server", "datname", "queryid")
    ),
    "statement_calls": ("Calls of the top statements by mean time", ("server", "datname", "queryid")),
    "statement_seconds": ("Total execution time of the top statements", ("server", "datname", "queryid")),
}
_COUNTERS = frozenset({"statement_calls", "statement_seconds"})

#: each metric declared once, by its name without the mevwatch_postgres_ prefix (what samples are added under)
SPECS: dict[str, MetricSpec] = {
    name: MetricSpec(f"mevwatch_postgres_{name}", "counter" if name in _COUNTERS else "gauge", text, tuple(labels))
    for name, (text, labels) in _HELP.items()
}


class _Out:
    """Samples of every target, rendered as one family per metric name."""

    def __init__(self) -> None:
        self.samples: list[tuple[str, tuple[str, ...], float]] = []

    def add(self, name: str, labels: Sequence[str], value: float) -> None:
        self.samples.append((name, tuple(labels), float(value)))

    def families(self) -> list[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for name, labels, value in self.samples:
            fam = families.get(name)
            if fam is None:
                spec = SPECS[name]
                fam = families[name] = spec.counter() if spec.type == "counter" else spec.gauge()
            fam.add_metric(list(labels), value)
        return list(families.values())


class _Unreachable(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(slots=True)
class _TargetState:
    dsn: str
    password: str | None
    server: str
    datname: str
    server_wide: bool
    pool: Any = None
    up: bool | None = None
    reason: str = ""
    message: str = ""
    failures: int = 0
    retry_at: float = 0.0
    notes: frozenset[str] = field(default_factory=frozenset)
    stats_schema: str | None = None
    #: datname -> (size in bytes, unix time measured); measured again at sizes_due (monotonic)
    sizes: dict[str, tuple[float, float]] = field(default_factory=dict)
    sizes_due: float = 0.0
    #: the tables chosen last run, ranked again with the next slice of the catalog (after oid table_cursor)
    chosen: list[int] = field(default_factory=list)
    table_cursor: int = 0
    #: relid -> (last analyze time it was read at, pg_stats widths): re-read only after an ANALYZE
    widths: dict[int, tuple[float | None, Widths]] = field(default_factory=dict)
    #: relid -> when (monotonic) a chosen table was first seen with no autovacuum on record (last_autovacuum
    #: NULL: never, or not since the statistics were reset); kept for the chosen tables only
    no_autovacuum_since: dict[int, float] = field(default_factory=dict)


@register
class PostgresCollector(PollCollector[PostgresOptions]):
    kind: ClassVar[str] = "postgres"
    Options = PostgresOptions
    default_interval: ClassVar[float] = 30.0
    default_timeout: ClassVar[float] = 10.0
    runbook_section = "postgres-down"
    metrics: ClassVar[tuple[MetricSpec, ...]] = tuple(SPECS.values())

    def __init__(self, ctx: Any, options: PostgresOptions) -> None:
        super().__init__(ctx, options)
        servers: set[str] = set()
        self._targets: list[_TargetState] = []
        for t in options.targets:
            server, datname = parse_dsn(t.dsn)
            password = read_secret_file(t.password_file) if t.password_file is not None else None
            self._targets.append(_TargetState(t.dsn, password, server, datname, server not in servers))
            servers.add(server)

    async def collect(self) -> Families:
        out = _Out()
        # Each target gets most of the run's budget, so a hung server reports up 0 instead of the whole run failing.
        budget = max(self.ctx.timeout * 0.8, 0.1)
        await asyncio.gather(*(self._collect_target(t, out, budget) for t in self._targets))
        down = [t for t in self._targets if t.up is False]
        if down:
            # up 0 is still published with the failure, so the run shows as failed and the series as down
            message = "; ".join(f"{t.server}/{t.datname}: {t.reason}: {t.message}" for t in down)
            raise CollectorError(down[0].reason, message, out.families())
        return out.families()

    async def close(self) -> None:
        for t in self._targets:
            await self._drop_pool(t)

    async def details(self) -> list[tuple[str, str]]:
        """The slowest statements with their text (never a label), for ``mevwatch diagnose``."""
        lines = []
        threshold = self.options.slow_statement_threshold
        for st in await self.top_statements(limit=5, text_chars=200):
            flag = "SLOW " if st.mean_seconds >= threshold else ""
            query = " ".join(st.query.split())
            lines.append((f"statement {st.queryid} ({st.datname})",
                          f"{flag}mean {st.mean_seconds * 1000:.1f} ms x {st.calls} calls: {query}"))
        return lines

    async def top_statements(self, limit: int = 10, text_chars: int = 500) -> list[Statement]:
        """The slowest statements by mean time with their text, for ``mevwatch diagnose``."""
        for t in self._targets:
            if not t.server_wide or t.stats_schema is None or t.pool is None:
                continue
            async with t.pool.acquire(timeout=self.options.connect_timeout) as conn:
                rows = await conn.fetch(q.STATEMENTS_TEXT.format(schema=_ident(t.stats_schema)), limit, text_chars)
            return [
                Statement(int(r["queryid"]), r["datname"] or "", int(r["calls"]), r["mean_exec_time"] / 1000.0,
                          r["total_exec_time"] / 1000.0, r["query"] or "")
                for r in rows
            ]
        return []

    # --- one target ---------------------------------------------------------------------

    async def _collect_target(self, t: _TargetState, out: _Out, budget: float) -> None:
        now = time.monotonic()
        if t.up is False and now < t.retry_at:
            self._report_down(t, out)
            return
        notes: set[str] = set()
        mine = _Out()
        try:
            async with asyncio.timeout(budget):
                for attempt in (0, 1):
                    mine, notes = _Out(), set()
                    try:
                        await self._query_target(t, mine, notes)
                        break
                    except (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, ConnectionError) as exc:
                        # A pooled connection the server dropped (restart, idle timeout): reconnect once now.
                        await self._drop_pool(t)
                        if attempt == 1:
                            raise _Unreachable(classify_error(exc), str(exc)) from None
        except _Unreachable as exc:
            self._mark_down(t, exc.reason, exc.message)
            self._report_down(t, out)
            return
        except TimeoutError:
            self._mark_down(t, "timeout", f"no answer within {budget:g}s")
            await self._drop_pool(t)
            self._report_down(t, out)
            return
        except asyncpg.PostgresError as exc:
            # a query of ours failed on a reachable server (e.g. cancelled by statement_timeout)
            self._mark_down(t, "error", f"{type(exc).__name__}: {exc}")
            self._report_down(t, out)
            return
        out.samples.extend(mine.samples)
        if t.up is not True:
            if t.up is False:
                self.ctx.log.info("postgres_recovered", server=t.server, datname=t.datname)
            t.up, t.failures, t.reason, t.message = True, 0, "", ""
        out.add("up", (t.server, t.datname), 1)
        for reason in FAILURE_REASONS:
            out.add("connect_failure", (t.server, t.datname, reason), 0)
        if frozenset(notes) != t.notes:
            t.notes = frozenset(notes)
            if notes:
                self.ctx.log.warning("postgres_partial", server=t.server, datname=t.datname, missing=sorted(notes))

    async def _pool(self, t: _TargetState) -> Any:
        if t.pool is None:
            o = self.options
            t.pool = await asyncpg.create_pool(
                t.dsn, password=t.password, min_size=o.min_connections, max_size=o.max_connections,
                max_inactive_connection_lifetime=max(3 * self.ctx.interval, 60.0),
                timeout=o.connect_timeout, command_timeout=o.statement_timeout + 1.0, reset=_keep_session,
                server_settings={
                    "application_name": "mevwatch",
                    "statement_timeout": str(int(o.statement_timeout * 1000)),
                    "lock_timeout": str(int(o.lock_timeout * 1000)),
                    "idle_in_transaction_session_timeout": str(int((o.statement_timeout + 5) * 1000)),
                    "default_transaction_read_only": "on",
                    # our catalog queries are small; JIT compilation would cost more than it saves
                    "jit": "off",
                },
            )
        return t.pool

    async def _drop_pool(self, t: _TargetState) -> None:
        pool, t.pool = t.pool, None
        if pool is None:
            return
        try:
            await wait_for(pool.close(), 2.0)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pool.terminate()

    async def _query_target(self, t: _TargetState, out: _Out, notes: set[str]) -> None:
        try:
            pool = await self._pool(t)
            conn_cm = pool.acquire(timeout=self.options.connect_timeout)
            conn = await conn_cm.__aenter__()
        except (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, ConnectionResetError):
            raise
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            await self._drop_pool(t)
            raise _Unreachable(classify_error(exc), str(exc)) from None
        try:
            await self._sections(t, conn, out, notes)
        finally:
            await conn_cm.__aexit__(None, None, None)

    async def _sections(self, t: _TargetState, conn: Any, out: _Out, notes: set[str]) -> None:
        o = self.options
        srv = await conn.fetchrow(q.SERVER)
        exts = set(srv["extensions"])
        t.stats_schema = srv["statements_schema"]
        labels = (t.server, t.datname)
        if t.server_wide:
            out.add("version_info", (t.server, srv["version"], str(srv["version_num"])), 1)
        privileges = {"pg_read_all_stats": srv["read_all_stats"], "pg_stat_scan_tables": srv["stat_scan_tables"]}
        for priv in PRIVILEGES:
            out.add("role_privilege", (*labels, priv), 1 if privileges[priv] else 0)
        if not srv["read_all_stats"]:
            notes.add("pg_read_all_stats: other roles' sessions and statements are hidden")

        if t.server_wide:
            max_conn = srv["max_connections"]
            out.add("max_connections", (t.server,), max_conn)
            out.add("locks_waiting", (t.server,), srv["locks_waiting"])
            rows = await conn.fetch(q.ACTIVITY)
            self._activity(t.server, rows, max_conn, out)
            await self._database_sizes(t, conn)
            for r in await conn.fetch(q.DATABASES):
                dl = (t.server, r["datname"])
                out.add("database_xid_age", dl, r["xid_age"])
                out.add("database_xid_wraparound_ratio", dl, r["xid_age"] / XID_WRAPAROUND_LIMIT)
                if r["datname"] in t.sizes:
                    size, measured = t.sizes[r["datname"]]
                    out.add("database_size_bytes", dl, size)
                    out.add("database_size_timestamp_seconds", dl, measured)
                hit, read = r["blks_hit"] or 0, r["blks_read"] or 0
                if hit + read > 0:
                    out.add("database_cache_hit_ratio", dl, hit / (hit + read))
            if not await self._statements(t, conn, out, notes):
                exts.discard("pg_stat_statements")

        tables = await conn.fetch(q.TABLES, o.top_tables, o.tables, t.table_cursor, o.table_scan_batch, t.chosen)
        t.chosen = [r["relid"] for r in tables]
        # a short slice reached the end of the catalog: the next run starts again from its beginning
        full = bool(tables) and tables[0]["slice_len"] >= o.table_scan_batch
        t.table_cursor = tables[0]["slice_end"] if full else 0
        now = time.monotonic()
        for r in tables:
            tl = (*labels, r["schema"], r["relname"])
            live, dead = float(r["n_live_tup"] or 0), float(r["n_dead_tup"] or 0)
            out.add("table_live_tuples", tl, live)
            out.add("table_dead_tuples", tl, dead)
            out.add("table_dead_tuple_ratio", tl, dead_tuple_ratio(live, dead))
            out.add("table_dead_tuple_share", tl, dead_tuple_share(live, dead))
            if r["size"] is not None:
                out.add("table_size_bytes", tl, r["size"])
            else:
                notes.add("locked: tables held in ACCESS EXCLUSIVE mode are skipped for size and bloat")
            for metric, col, trigger in (
                ("table_last_vacuum_age_seconds", "since_vacuum", "manual"),
                ("table_last_vacuum_age_seconds", "since_autovacuum", "auto"),
                ("table_last_analyze_age_seconds", "since_analyze", "manual"),
                ("table_last_analyze_age_seconds", "since_autoanalyze", "auto"),
            ):
                if r[col] is not None:
                    out.add(metric, (*tl, trigger), max(r[col], 0.0))
            if r["since_autovacuum"] is None:
                # Autovacuum has no run on record: it has not run for at least as long as this collector has
                # seen the table so, which PostgresAutovacuumStale judges like any other age (a table it
                # never ran on is the runbook's "autovacuum not running" at its plainest).
                since = t.no_autovacuum_since.setdefault(r["relid"], now)
                out.add("table_last_vacuum_age_seconds", (*tl, "auto"), now - since)
        never = {r["relid"] for r in tables if r["since_autovacuum"] is None}
        t.no_autovacuum_since = {k: v for k, v in t.no_autovacuum_since.items() if k in never}
        if o.bloat != "off":
            unlocked = [r for r in tables if not r["locked"]]
            if unlocked:
                await self._bloat(t, conn, unlocked, srv, out, notes)
        for ext in EXTENSIONS:
            out.add("extension_available", (*labels, ext), 1 if ext in exts else 0)

    async def _database_sizes(self, t: _TargetState, conn: Any) -> None:
        """Measure the database sizes when due. Between measurements the last ones are exported with the
        time they were taken: the bench (bench/postgres.py) shows pg_database_size to be most of a
        collection's server time at 10,000 tables, for a figure that moves slowly and whose disk the
        filesystem collectors watch every run. Every hour by default (it was 5 min): at 10,000 tables a
        measurement cost 94-130 ms of server time (4-5 ms at 100 tables), 10-12 ms a collection at 5 min
        against 8.6 ms for all the rest of a run, 0.9 ms at an hour (bench/postgres.py, 2026-12-06, 30 s
        collections)."""
        now = time.monotonic()
        if now < t.sizes_due:
            return
        rows = await conn.fetch(q.DATABASE_SIZES)
        measured = time.time()
        t.sizes = {r["datname"]: (float(r["size"]), measured) for r in rows if r["size"] is not None}
        t.sizes_due = now + self.options.database_size_interval

    def _activity(self, server: str, rows: Iterable[Mapping[str, Any]], max_conn: int, out: _Out) -> None:
        by_db: dict[str, dict[str, int]] = {}
        total = 0
        oldest_xact = oldest_idle = 0.0
        for r in rows:
            states = by_db.setdefault(r["datname"], dict.fromkeys(CONNECTION_STATES, 0))
            states[normalize_state(r["state"])] += r["connections"]
            total += r["connections"]
            oldest_xact = max(oldest_xact, r["oldest_xact"])
            oldest_idle = max(oldest_idle, r["oldest_idle_xact"])
        for datname, states in sorted(by_db.items()):
            for state, n in states.items():
                out.add("connections", (server, datname, state), n)
        out.add("connections_used_ratio", (server,), total / max_conn if max_conn else 0.0)
        out.add("oldest_transaction_age_seconds", (server,), oldest_xact)
        out.add("oldest_idle_in_transaction_age_seconds", (server,), oldest_idle)

    async def _statements(self, t: _TargetState, conn: Any, out: _Out, notes: set[str]) -> bool:
        """False when pg_stat_statements cannot be read here (the reason goes to ``notes``)."""
        if t.stats_schema is None:
            notes.add("pg_stat_statements: not installed (CREATE EXTENSION pg_stat_statements)")
            return False
        sql = q.STATEMENTS.format(schema=_ident(t.stats_schema))
        try:
            rows = await conn.fetch(sql, self.options.slow_statement_threshold * 1000.0, self.options.top_statements)
        except asyncpg.ObjectNotInPrerequisiteStateError:
            notes.add("pg_stat_statements: not loaded (add it to shared_preload_libraries and restart)")
            return False
        except asyncpg.InsufficientPrivilegeError:
            notes.add("pg_stat_statements: no EXECUTE privilege on pg_stat_statements()")
            return False
        out.add("slow_statements", (t.server,), rows[0]["over"])
        for r in rows:
            if r["queryid"] is None or r["mean_exec_time"] is None:
                continue
            sl = (t.server, r["datname"] or "", str(r["queryid"]))
            out.add("statement_mean_seconds", sl, r["mean_exec_time"] / 1000.0)
            out.add("statement_calls", sl, r["calls"])
            out.add("statement_seconds", sl, r["total_exec_time"] / 1000.0)
        return True

    async def _bloat(
        self, t: _TargetState, conn: Any, tables: list[Mapping[str, Any]], srv: Mapping[str, Any], out: _Out,
        notes: set[str],
    ) -> None:
        labels = (t.server, t.datname)
        relids = [r["relid"] for r in tables]
        bs, ma = srv["block_size"], srv["max_align"]
        use_pgstattuple = self.options.bloat == "pgstattuple" or (
            self.options.bloat == "auto" and srv["pgstattuple_schema"] is not None and srv["stat_scan_tables"]
        )
        if self.options.bloat == "pgstattuple" and srv["pgstattuple_schema"] is None:
            notes.add("pgstattuple: not installed, bloat falls back to the pg_stats estimate")
            use_pgstattuple = False
        method = "estimate"
        if use_pgstattuple:
            try:
                for r in await conn.fetch(q.bloat_pgstattuple(srv["pgstattuple_schema"]), relids):
                    size, bloat = float(r["real_size"] or 0), float(r["bloat_size"] or 0)
                    tl = (*labels, r["schema"], r["relname"], "pgstattuple")
                    out.add("table_bloat_bytes", tl, bloat)
                    out.add("table_bloat_ratio", tl, bloat / size if size > 0 else 0.0)
                method = "pgstattuple"
            except asyncpg.InsufficientPrivilegeError:
                notes.add("pg_stat_scan_tables: pgstattuple_approx not allowed, bloat is estimated")
            except asyncpg.PostgresError as exc:
                notes.add(f"pgstattuple: {type(exc).__name__}, bloat is estimated")

        indexes = await conn.fetch(q.INDEX_PAGES, relids)
        # an index's statistics are refreshed by the ANALYZE of its table
        analyzed: dict[int, float | None] = {r["relid"]: r["analyzed_at"] for r in tables}
        analyzed.update({i["relid"]: analyzed[i["table_relid"]] for i in indexes})
        for sql, candidates in (
            (q.TABLE_WIDTHS, [] if method == "pgstattuple" else relids),
            (q.INDEX_WIDTHS, [i["relid"] for i in indexes]),
        ):
            stale = [rid for rid in candidates if rid not in t.widths or t.widths[rid][0] != analyzed[rid]]
            if not stale:
                continue
            found = {r["relid"]: r for r in await conn.fetch(sql, stale)}
            for rid in stale:
                w = found.get(rid)
                t.widths[rid] = (analyzed[rid], Widths(
                    w["max_null_frac"], w["data_width"] or 0.0, w["with_stats"], w["columns"], bool(w["has_name"])
                ) if w is not None else Widths(0.0, 0.0, 0, 0, False))
        keep = set(relids) | {i["relid"] for i in indexes}
        for rid in [rid for rid in t.widths if rid not in keep]:
            del t.widths[rid]

        missing = 0
        live = {r["relid"]: _tuples(r) for r in tables}
        if method == "estimate":
            for r in tables:
                w = t.widths[r["relid"]][1]
                if not w.usable:
                    missing += 1
                    continue
                size = (r["heap_pages"] + r["toast_pages"]) * bs
                bloat = estimate_table_bloat(r["heap_pages"], live[r["relid"]], r["toast_pages"], r["toast_tuples"],
                                             r["fillfactor"], w, bs, ma)
                tl = (*labels, r["schema"], r["relname"], "estimate")
                out.add("table_bloat_bytes", tl, bloat)
                out.add("table_bloat_ratio", tl, bloat / size if size > 0 else 0.0)
        names = {r["relid"]: (r["schema"], r["relname"]) for r in tables}
        # pgstattuple has no cheap index function (pgstatindex reads the whole index): indexes are estimated.
        for i in indexes:
            w = t.widths[i["relid"]][1]
            if not w.usable:
                missing += 1
                continue
            size = i["pages"] * bs
            bloat = estimate_index_bloat(i["pages"], live[i["table_relid"]], i["fillfactor"], w, bs, ma)
            il = (*labels, *names[i["table_relid"]], i["index"], "estimate")
            out.add("index_bloat_bytes", il, bloat)
            out.add("index_bloat_ratio", il, bloat / size if size > 0 else 0.0)
        if missing:
            notes.add("pg_stats: some tables or indexes have no statistics (never analyzed, or no SELECT "
                      "privilege: grant pg_read_all_data), their bloat is not estimated")

    def _mark_down(self, t: _TargetState, reason: str, message: str) -> None:
        t.failures += 1
        backoff = min(self.ctx.interval * 2 ** (t.failures - 1), self.options.reconnect_backoff_max)
        # The next regular run comes one interval later anyway; only longer pauses need a retry time.
        t.retry_at = time.monotonic() + max(backoff - self.ctx.interval, 0.0)
        if t.up is not False or t.reason != reason:
            self.ctx.log.warning(
                "postgres_down", server=t.server, datname=t.datname, reason=reason, error=redact(message)
            )
        t.up, t.reason, t.message = False, reason, redact(message)

    def _report_down(self, t: _TargetState, out: _Out) -> None:
        out.add("up", (t.server, t.datname), 0)
        for reason in FAILURE_REASONS:
            out.add("connect_failure", (t.server, t.datname, reason), 1 if reason == t.reason else 0)

    def status(self) -> list[dict[str, Any]]:
        """Per target: up, failure reason, and what the role or server lacks (for diagnose and /health)."""
        return [
            {"server": t.server, "datname": t.datname, "up": t.up, "reason": t.reason, "missing": sorted(t.notes)}
            for t in self._targets
        ]


async def _keep_session(conn: Any) -> None:
    """The pool's reset of a released connection. Ours only read, and never SET, LISTEN, lock advisorily or
    keep a cursor: asyncpg's default reset (pg_advisory_unlock_all, CLOSE ALL, UNLISTEN *, RESET ALL) was
    one more round trip per run with nothing to undo, 4 of the 11 statements a collection sent
    (bench/postgres.py: 7.1 a collection without it). An open transaction is still rolled back by the pool
    before this is called."""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
