"""The postgres collector's pure parts: DSN labels, options, error classes, state names, activity rows."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from mevwatch.collectors.base import CollectorContext
from mevwatch.collectors.postgres import (
    CONNECTION_STATES,
    DEFAULT_DSN,
    PostgresCollector,
    PostgresOptions,
    Widths,
    _Out,
    classify_error,
    dead_tuple_ratio,
    estimate_index_bloat,
    estimate_table_bloat,
    normalize_state,
    parse_dsn,
)
from mevwatch.daemon.config import ConfigError, load_config_text

# --- DSN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (DEFAULT_DSN, ("127.0.0.1:5432", "postgres")),
        ("postgresql://mev:hunter2@db.internal:6432/mev_db?sslmode=require", ("db.internal:6432", "mev_db")),
        ("postgres://mev@[::1]:5433/x", ("::1:5433", "x")),
        ("postgresql://mev@localhost", ("localhost:5432", "mev")),
        ("postgresql:///mev_db?host=/var/run/postgresql&port=5433", ("unix:5433", "mev_db")),
        ("postgresql://u:p%40ss@h:1/db%20name", ("h:1", "db name")),
    ],
)
def test_parse_dsn_keeps_only_host_port_and_database(dsn: str, expected: tuple[str, str]) -> None:
    assert parse_dsn(dsn) == expected
    assert "hunter2" not in "".join(parse_dsn(dsn))


@pytest.mark.parametrize(
    ("dsn", "error"),
    [
        ("host=127.0.0.1 dbname=postgres", "must be a URI"),
        ("mysql://root@127.0.0.1/db", "must be a URI"),
        ("postgresql://u:secretpw@h:99999/db", "[Pp]ort out of range"),
        ("postgresql://u:secretpw@h:0/db", "port must be 1-65535"),
        ("postgresql://u:secretpw@h:abc/db", "invalid DSN"),
        ("", "must be a URI"),
    ],
)
def test_parse_dsn_rejects_garbage_without_echoing_the_password(dsn: str, error: str) -> None:
    with pytest.raises(ValueError, match=error) as exc:
        parse_dsn(dsn)
    assert "secretpw" not in str(exc.value)


def _config(body: str) -> str:
    return f"collectors:\n  - postgres:\n{body}"


def test_garbage_dsn_is_a_config_error_with_field_path_and_line() -> None:
    text = _config("      targets:\n        - dsn: 'not a dsn, password=topsecret'\n")
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "mevwatch.yaml")
    msg = str(exc.value)
    assert "mevwatch.yaml:4" in msg
    assert "collectors[0].postgres.targets[0].dsn" in msg
    assert "postgresql://" in msg
    assert "topsecret" not in msg


def test_missing_password_file_is_a_config_error(tmp_path: Path) -> None:
    text = _config(f"      targets:\n        - dsn: {DEFAULT_DSN}\n          password_file: {tmp_path}/nope\n")
    with pytest.raises(ConfigError, match="cannot read secret file"):
        load_config_text(text)


def test_password_file_is_read_and_passed_to_the_connection(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    text = _config(f"      targets:\n        - dsn: {DEFAULT_DSN}\n          password_file: {secret}\n")
    opts = load_config_text(text).collectors[0].options
    assert isinstance(opts, PostgresOptions)
    collector = PostgresCollector(CollectorContext("postgres", "default", 30.0, 10.0), opts)
    assert collector._targets[0].password == "s3cret"


def test_two_targets_for_the_same_database_are_rejected() -> None:
    text = _config(
        "      targets:\n        - dsn: postgresql://a@h:5432/db\n        - dsn: postgresql://b:x@h:5432/db\n"
    )
    with pytest.raises(ConfigError, match="two targets for database 'db' on h:5432"):
        load_config_text(text)


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("max_connections", "0", "greater than or equal to 1"),
        ("max_connections", "50", "less than or equal to 5"),
        ("min_connections", "2", "less than or equal to 1"),
        ("top_tables", "-1", "greater than or equal to 0"),
        ("bloat", "exact", "'auto', 'pgstattuple', 'estimate' or 'off'"),
        ("slow_statement_threshold", "fast", "invalid duration"),
        ("connect_timeout", "0s", "greater than 0"),
        ("targets", "[]", "at least 1 item"),
        ("dsns", "[]", "unknown key"),
    ],
)
def test_bad_options_are_rejected(option: str, value: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_config_text(_config(f"      {option}: {value}\n"))


def test_defaults_validate_and_watch_the_local_server() -> None:
    opts = load_config_text("collectors:\n  - postgres: {}\n").collectors[0].options
    assert isinstance(opts, PostgresOptions)
    assert [t.dsn for t in opts.targets] == [DEFAULT_DSN]
    assert (opts.max_connections, opts.top_tables, opts.top_statements) == (2, 50, 10)
    assert opts.slow_statement_threshold == pytest.approx(0.1)


def test_server_wide_metrics_come_from_the_first_target_of_each_server() -> None:
    opts = PostgresOptions.model_validate({"targets": [
        {"dsn": "postgresql://u@a:5432/one"}, {"dsn": "postgresql://u@a:5432/two"}, {"dsn": "postgresql://u@b/one"},
    ]})
    collector = PostgresCollector(CollectorContext("postgres", "default", 30.0, 10.0), opts)
    assert [t.server_wide for t in collector._targets] == [True, False, True]


# --- errors and states -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (asyncpg.InvalidPasswordError("password authentication failed"), "auth"),
        (asyncpg.InvalidAuthorizationSpecificationError("no pg_hba.conf entry"), "auth"),
        (asyncpg.InvalidCatalogNameError('database "x" does not exist'), "no_database"),
        (asyncpg.CannotConnectNowError("the database system is starting up"), "starting"),
        (asyncpg.TooManyConnectionsError("too many clients"), "too_many_connections"),
        (TimeoutError(), "timeout"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "refused"),
        (OSError(errno.ECONNREFUSED, "Connect call failed"), "refused"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "unreachable"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "unreachable"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "dns"),
        (asyncpg.ConnectionDoesNotExistError("connection was closed"), "lost"),
        (ConnectionResetError(), "lost"),
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"), "lost"),
        (asyncpg.SyntaxOrAccessError("boom"), "error"),
    ],
)
def test_classify_error(exc: BaseException, reason: str) -> None:
    assert classify_error(exc) == reason


@pytest.mark.parametrize(
    ("state", "label"),
    [
        ("active", "active"),
        ("idle", "idle"),
        ("idle in transaction", "idle_in_transaction"),
        ("idle in transaction (aborted)", "idle_in_transaction_aborted"),
        ("fastpath function call", "fastpath_function_call"),
        ("disabled", "disabled"),
        ("unknown", "unknown"),
        ("something new in pg 19", "unknown"),
    ],
)
def test_normalize_state(state: str, label: str) -> None:
    assert normalize_state(state) == label
    assert label in CONNECTION_STATES


def test_dead_tuple_ratio_is_the_runbooks_dead_over_live() -> None:
    assert dead_tuple_ratio(40_000, 60_000) == pytest.approx(1.5)
    assert dead_tuple_ratio(100, 0) == 0.0
    assert dead_tuple_ratio(0, 0) == 0.0
    assert dead_tuple_ratio(0, 7) == 7.0


# (int, md5 text): 24-byte header + 37 bytes of data -> 64 aligned + 4 line pointer = 68 bytes, 120 a page
ROW = Widths(max_null_frac=0.0, data_width=37.0, with_stats=2, columns=2, has_name=False)


def test_table_bloat_estimate_of_a_packed_table_is_zero() -> None:
    assert estimate_table_bloat(834, 100_000, 0, 0, 100, ROW) == 0.0


def test_table_bloat_estimate_after_deleting_60_percent() -> None:
    # 40,000 live rows need ceil(40000 / 120) = 334 of the 834 pages
    assert estimate_table_bloat(834, 40_000, 0, 0, 100, ROW) == (834 - 334) * 8192


def test_table_bloat_estimate_honours_fillfactor_nulls_and_toast() -> None:
    # fillfactor 50: 60 rows a page, so 100,000 rows fill 1667 pages and nothing is bloat
    assert estimate_table_bloat(1667, 100_000, 0, 0, 50, ROW) == 0.0
    # with NULLs a bitmap byte is added; for two columns it fits the header's alignment padding (23 -> 24)
    nullable = Widths(0.1, 37.0, 2, 2, False)
    assert estimate_table_bloat(1000, 100_000, 0, 0, 100, nullable) == (1000 - 834) * 8192
    # nine columns need a second bitmap byte: header 25 -> 32, the tuple grows to 76 bytes, 107 a page
    wide = Widths(0.1, 37.0, 9, 9, False)
    assert estimate_table_bloat(1000, 100_000, 0, 0, 100, wide) == (1000 - 935) * 8192
    # TOAST pages count as 4 chunks each
    assert estimate_table_bloat(834, 100_000, 10, 40, 100, ROW) == 0.0
    assert estimate_table_bloat(834, 100_000, 20, 40, 100, ROW) == 10 * 8192


def test_index_bloat_estimate_of_an_int_btree() -> None:
    key = Widths(0.0, 4.0, 1, 1, False)
    # 16-byte entries + 4-byte pointer at fillfactor 90: 366 a page, plus the metapage
    assert estimate_index_bloat(275, 100_000, 90, key) == 0.0
    assert estimate_index_bloat(276, 100_000, 90, key) == 8192
    assert estimate_index_bloat(276, 40_000, 90, key) == (276 - 111) * 8192


def test_widths_without_statistics_are_not_used() -> None:
    assert ROW.usable
    assert not Widths(0.0, 4.0, 1, 2, False).usable  # a column never analyzed or hidden from the role
    assert not Widths(0.0, 0.0, 0, 0, False).usable
    assert not Widths(0.0, 64.0, 1, 1, True).usable  # ioguix: the name type's width is misreported


def _values(out: _Out) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    result = {}
    for fam in out.families():
        for s in fam.samples:
            result[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return result


def test_activity_rows_become_states_per_database_ratio_and_oldest_ages() -> None:
    collector = PostgresCollector(CollectorContext("postgres", "default", 30.0, 10.0), PostgresOptions())
    rows: list[dict[str, Any]] = [
        {"datname": "mev_db", "state": "active", "connections": 3, "oldest_xact": 2.5, "oldest_idle_xact": 0.0},
        {"datname": "mev_db", "state": "idle in transaction", "connections": 1, "oldest_xact": 700.0,
         "oldest_idle_xact": 650.0},
        {"datname": "mev_db", "state": "unknown", "connections": 4, "oldest_xact": 0.0, "oldest_idle_xact": 0.0},
        {"datname": "postgres", "state": "idle", "connections": 1, "oldest_xact": 0.0, "oldest_idle_xact": 0.0},
    ]
    out = _Out()
    collector._activity("h:5432", rows, 20, out)
    v = _values(out)

    def conn(db: str, state: str) -> float:
        return v[("mevwatch_postgres_connections", (("datname", db), ("server", "h:5432"), ("state", state)))]

    assert conn("mev_db", "active") == 3
    assert conn("mev_db", "idle_in_transaction") == 1
    assert conn("mev_db", "unknown") == 4
    assert conn("mev_db", "idle") == 0
    assert conn("postgres", "idle") == 1
    # every state of every database seen is exported, so a state that empties goes to 0 instead of vanishing
    assert sum(1 for (n, _) in v if n == "mevwatch_postgres_connections") == 2 * len(CONNECTION_STATES)
    srv = (("server", "h:5432"),)
    assert v[("mevwatch_postgres_connections_used_ratio", srv)] == pytest.approx(9 / 20)
    assert v[("mevwatch_postgres_oldest_transaction_age_seconds", srv)] == 700.0
    assert v[("mevwatch_postgres_oldest_idle_in_transaction_age_seconds", srv)] == 650.0


def test_every_metric_has_help_and_counters_get_total() -> None:
    out = _Out()
    out.add("statement_calls", ("h:1", "db", "42"), 5)
    out.add("up", ("h:1", "db"), 1)
    names = {s.name for fam in out.families() for s in fam.samples}
    assert names == {"mevwatch_postgres_statement_calls_total", "mevwatch_postgres_up"}
    assert all(fam.documentation for fam in out.families())
