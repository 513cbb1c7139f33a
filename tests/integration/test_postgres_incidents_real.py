"""Database incidents of the runbook played on throwaway PostgreSQL clusters and judged by a real daemon:
connections exhausted, sessions waiting on a lock, a database near transaction-ID wraparound, autovacuum
stopped on a hot table, dead tuples (only past the runbook's 1,000), and a server that goes down and comes
back. Each page must tell what /api/v1/alerts, the landing page and ``mevwatch diagnose`` tell."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import RunningDaemon, parse_metrics
from tests.support.pgcluster import PgCluster, pg_cluster
from tests.support.screens import Screens, paged_daemon, pages_of, screens_agree, screens_cleared

pytestmark = pytest.mark.peer("postgresql")


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with pg_cluster({"max_connections": "20", "autovacuum_naptime": "1s"}) as c:
        yield c


def _collectors(cluster: PgCluster, db: str = "postgres", extra: str = "") -> str:
    return (f"collectors:\n  - postgres: {{interval: 1s, min_connections: 1, max_connections: 1,{extra}"
            f" targets: [{{dsn: '{cluster.dsn(db)}'}}]}}\n")


class Sessions:
    """psql sessions held open on stdin, each fed statements as the test goes."""

    def __init__(self, cluster: PgCluster) -> None:
        self.cluster = cluster
        self.procs: list[subprocess.Popen[bytes]] = []

    def open(self, db: str = "postgres", sql: str = "") -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(self.cluster.port), "-U", "postgres", "-d", db],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "PGCONNECT_TIMEOUT": "5"})
        self.procs.append(proc)
        if sql:
            self.send(proc, sql)
        return proc

    @staticmethod
    def send(proc: subprocess.Popen[bytes], sql: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(sql.encode() + b"\n")
        proc.stdin.flush()

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


@pytest.fixture
def sessions(cluster: PgCluster) -> Iterator[Sessions]:
    s = Sessions(cluster)
    yield s
    s.close()


def _wait_sessions(cluster: PgCluster, n: int, where: str = "true", timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:  # the check's own session is not counted
        seen = int(cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                                f" AND pid <> pg_backend_pid() AND {where}"))
        if seen >= n:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{seen} client sessions, not {n}")
        time.sleep(0.2)


def test_connections_exhausted_pages_then_clears(cluster: PgCluster, sessions: Sessions, tmp_path: Path) -> None:
    instant = ["PostgresConnectionsExhausted", "PostgresConnectionsHigh"]
    with paged_daemon(tmp_path, _collectors(cluster), instant) as (d, hook):
        d.wait_value("mevwatch_postgres_up", 1, timeout=20)  # its own session is open before the others take the rest
        for _ in range(18):
            sessions.open()
        _wait_sessions(cluster, 19)  # with mevwatch's own: 19 of 20 (95 %), the check's own takes the last
        exhausted = screens_agree(d, hook, "PostgresConnectionsExhausted")
        assert exhausted.alert["labels"]["severity"] == "critical"
        assert exhausted.alert["labels"]["server"] == f"127.0.0.1:{cluster.port}"
        assert "of max_connections" in exhausted.alert["annotations"]["summary"]
        assert exhausted.alert["annotations"]["runbook_url"].endswith("#postgres-connections")
        screens_agree(d, hook, "PostgresConnectionsHigh")
        sessions.close()
        screens_cleared(d, hook, "PostgresConnectionsExhausted")


def test_a_session_waiting_on_a_row_lock_pages(cluster: PgCluster, sessions: Sessions, tmp_path: Path) -> None:
    cluster.psql("CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, balance int);"
                 "INSERT INTO accounts VALUES (1, 100) ON CONFLICT DO NOTHING")
    with paged_daemon(tmp_path, _collectors(cluster), ["PostgresLocksWaiting"]) as (d, hook):
        holder = sessions.open(sql="BEGIN; SELECT * FROM accounts WHERE id = 1 FOR UPDATE;")
        _wait_sessions(cluster, 1, "state = 'idle in transaction'")  # the row is locked before the writer comes
        sessions.open(sql="UPDATE accounts SET balance = balance - 1 WHERE id = 1;")  # waits for the holder
        screens = screens_agree(d, hook, "PostgresLocksWaiting")
        assert screens.alert["annotations"]["summary"].startswith("1 lock request(s) waiting on 127.0.0.1:")
        assert screens.alert["annotations"]["summary"].endswith(" for 0s on mev-host-1")  # the rule's real for
        assert screens.alert["annotations"]["runbook_url"].endswith("#postgres-locks")
        Sessions.send(holder, "COMMIT;")
        screens_cleared(d, hook, "PostgresLocksWaiting")


def test_a_database_past_half_the_xid_space_pages(tmp_path: Path) -> None:
    # 1.2 billion transactions would take hours; pg_resetwal moves the next xid there at once, and every
    # database's age(datfrozenxid) with it. A freeze age above it keeps anti-wraparound autovacuum away.
    with pg_cluster({"autovacuum_freeze_max_age": "2000000000"}) as c:
        c.set_next_xid(1152 * 2**20)
        c.start()
        assert int(c.psql("SELECT age(datfrozenxid) FROM pg_database WHERE datname = 'postgres'")) > 2**30
        with paged_daemon(tmp_path, _collectors(c), ["PostgresXidWraparound"]) as (d, hook):
            screens = screens_agree(d, hook, "PostgresXidWraparound", datname="postgres")
            assert float(screens.alert["value"]) == pytest.approx(0.5625, abs=0.001)
            assert screens.alert["annotations"]["summary"] == (
                f"postgres on 127.0.0.1:{c.port} is 56.25% of the way to xid wraparound")
            for db in ("template0", "template1"):
                screens_agree(d, hook, "PostgresXidWraparound", datname=db)


def test_autovacuum_stopped_on_a_hot_table_pages(cluster: PgCluster, tmp_path: Path) -> None:
    cluster.psql("CREATE DATABASE vacuumed")
    try:
        # autovacuum runs on the table once, for real (a naptime of 1 s and no threshold), and is then turned off
        cluster.psql("CREATE TABLE orders (id int) WITH (autovacuum_vacuum_threshold = 0,"
                     " autovacuum_vacuum_scale_factor = 0);"
                     "INSERT INTO orders SELECT generate_series(1, 100); DELETE FROM orders WHERE id > 50", "vacuumed")
        deadline = time.monotonic() + 60
        while cluster.psql("SELECT last_autovacuum IS NULL FROM pg_stat_user_tables WHERE relname = 'orders'",
                           "vacuumed") == "t":
            assert time.monotonic() < deadline, "autovacuum never ran"
            time.sleep(0.5)
        cluster.psql("ALTER TABLE orders SET (autovacuum_enabled = false);"
                     "INSERT INTO orders SELECT generate_series(1000, 3999); DELETE FROM orders WHERE id >= 1500",
                     "vacuumed")
        # the default is 10 hours without autovacuum; here 2 s tell the same on a table that has 2,500 dead tuples
        override = "  rule_overrides:\n    PostgresAutovacuumStale: {for: 0s, threshold: 2}\n"
        with paged_daemon(tmp_path, _collectors(cluster, "vacuumed"), extra=override) as (d, hook):
            screens = screens_agree(d, hook, "PostgresAutovacuumStale", table="orders")
            assert screens.alert["labels"]["datname"] == "vacuumed"
            assert screens.alert["annotations"]["summary"].startswith(
                "Autovacuum has not run on public.orders for ")
            assert screens.alert["annotations"]["runbook_url"].endswith("#dead-tuples")
    finally:
        cluster.psql("DROP DATABASE vacuumed WITH (FORCE)")


def test_a_hot_table_autovacuum_never_ran_on_pages(cluster: PgCluster, tmp_path: Path) -> None:
    cluster.psql("CREATE DATABASE unvacuumed")
    try:
        # autovacuum is off on the table from its creation: last_autovacuum stays NULL, 2,500 dead tuples pile up
        cluster.psql("CREATE TABLE ledger (id int) WITH (autovacuum_enabled = false);"
                     "INSERT INTO ledger SELECT generate_series(1, 3000); DELETE FROM ledger WHERE id > 500;"
                     + "".join(f"CREATE TABLE quiet{i} (id int) WITH (autovacuum_enabled = false);"
                               f"INSERT INTO quiet{i} VALUES ({i});" for i in range(6)), "unvacuumed")
        # 2 s without autovacuum tell what the default's 10 hours tell; 2 tables by dead tuples and 2 by size
        override = "  rule_overrides:\n    PostgresAutovacuumStale: {for: 0s, threshold: 2}\n"
        with paged_daemon(tmp_path, _collectors(cluster, "unvacuumed", " top_tables: 2,"), extra=override) as (d, hook):
            screens = screens_agree(d, hook, "PostgresAutovacuumStale", table="ledger")
            assert screens.alert["labels"]["datname"] == "unvacuumed"
            assert float(screens.alert["value"]) > 2
            assert screens.alert["annotations"]["summary"].startswith("Autovacuum has not run on public.ledger for ")
            # bounded: an age for the chosen tables only, not for every table autovacuum never ran on
            ages = [labels for (name, labels) in parse_metrics(d.get())
                    if name == "mevwatch_postgres_table_last_vacuum_age_seconds" and ("trigger", "auto") in labels]
            assert 1 <= len(ages) <= 4, ages
            # the quiet tables have no dead tuples: not hot, no page however long autovacuum stays away
            alerts = json.loads(d.get("/api/v1/alerts"))["data"]["alerts"]
            assert {a["labels"].get("table") for a in alerts
                    if a["labels"]["alertname"] == "PostgresAutovacuumStale"} == {"ledger"}
    finally:
        cluster.psql("DROP DATABASE unvacuumed WITH (FORCE)")


def test_dead_tuples_page_only_past_1000_with_the_share_of_the_table_and_counts(
        cluster: PgCluster, tmp_path: Path) -> None:
    cluster.psql("CREATE DATABASE bloated")
    try:
        for table, rows, keep in (("hot", 2500, 1000), ("tiny", 100, 40)):  # both 60 % dead
            cluster.psql(f"CREATE TABLE {table} (id int) WITH (autovacuum_enabled = false);"
                         f"INSERT INTO {table} SELECT generate_series(1, {rows});"
                         f"DELETE FROM {table} WHERE id > {keep};", "bloated")
        with paged_daemon(tmp_path, _collectors(cluster, "bloated"), ["PostgresDeadTuplesHigh"]) as (d, hook):
            d.wait_value("mevwatch_postgres_table_dead_tuple_share", 0.6, timeout=20, table="tiny")
            screens = screens_agree(d, hook, "PostgresDeadTuplesHigh", table="hot")
            # 1,500 dead and 1,000 live: the share of the table (60 %), not dead per live (150 %)
            assert screens.alert["annotations"]["summary"] == (
                f"Table public.hot is 60% dead (1500 dead, 1000 live tuples) on 127.0.0.1:{cluster.port}/bloated")
            assert screens.line["value"] == "firing: !table=hot=0.6"
            alerts = json.loads(d.get("/api/v1/alerts"))["data"]["alerts"]
            firing = [a["labels"].get("table") for a in alerts if a["labels"]["alertname"] == "PostgresDeadTuplesHigh"]
            assert firing == ["hot"]  # "tiny" has 60 dead tuples: under the runbook's filter
            paged = {a["labels"].get("table") for r in hook.delivered() for a in r.json()["alerts"]
                     if a["labels"]["alertname"] == "PostgresDeadTuplesHigh"}
            assert paged == {"hot"}
    finally:
        cluster.psql("DROP DATABASE bloated WITH (FORCE)")


def _failed_runs(d: RunningDaemon) -> float:
    return sum(v for (name, labels), v in parse_metrics(d.get()).items()
               if name == "mevwatch_collector_errors_total" and ("collector", "postgres") in labels)


def _diagnose_says(screens: Screens, reason: str) -> None:
    """diagnose names the down server and, on its alert's line, the reason: what the page says."""
    assert screens.line["value"].startswith("firing: !"), screens.line
    told = [ln for ln in screens.diagnose["lines"] if ln["check"].startswith("PostgresDown ")
            and ln["value"] == screens.page["annotations"]["summary"]]
    assert told, screens.diagnose["lines"]
    assert told[0]["value"].endswith(f": {reason}")


def test_postgres_down_says_why_and_its_recovery_is_seen_at_the_next_run(tmp_path: Path) -> None:
    with pg_cluster() as c, paged_daemon(tmp_path, _collectors(c), ["PostgresDown"]) as (d, hook):
        d.wait_value("mevwatch_postgres_up", 1, timeout=20)
        c.stop()
        screens = screens_agree(d, hook, "PostgresDown")
        assert screens.alert["annotations"]["summary"] == (
            f"PostgreSQL 127.0.0.1:{c.port}/postgres unreachable from mev-host-1: refused")
        _diagnose_says(screens, "refused")
        deadline = time.monotonic() + 30
        while _failed_runs(d) < 4:  # several runs in a row fail: no back-off may delay the one after
            assert time.monotonic() < deadline, "the collector stopped trying"
            time.sleep(0.2)
        c.start()
        failed = _failed_runs(d)
        d.wait_value("mevwatch_postgres_up", 1, timeout=20)
        # at most the run that was under way when the server came back failed: the next one saw it
        assert _failed_runs(d) - failed <= 1
        screens_cleared(d, hook, "PostgresDown")


def test_a_restart_refused_then_starting_pages_once_for_after_the_server_went_away(tmp_path: Path) -> None:
    """PostgreSQL goes down (refused) and comes back through a long startup (starting: it listens and answers
    "not yet accepting connections"): one outage. PostgresDown fires once, ``for`` after the first refused
    attempt, naming the reason of the last one, with no resolved page until the server serves again."""
    hold = 12.0  # PostgresDown's `for` here; the reason changes within it
    override = f"  rule_overrides:\n    PostgresDown: {{for: {hold:g}s}}\n"
    with pg_cluster() as c, paged_daemon(tmp_path, _collectors(c), extra=override) as (d, hook):
        d.wait_value("mevwatch_postgres_up", 1, timeout=20)
        failed_at = time.monotonic()
        c.stop()
        d.wait_value("mevwatch_postgres_connect_failure", 1, timeout=10, reason="refused")
        deadline = time.monotonic() + 30
        while _failed_runs(d) < 6:  # refused for a few runs, then the server starts
            assert time.monotonic() < deadline, "the collector stopped trying"
            time.sleep(0.2)
        c.start_standby()
        d.wait_value("mevwatch_postgres_connect_failure", 1, timeout=10, reason="starting")
        assert time.monotonic() - failed_at < hold - 2, "refused outlasted `for`: slow machine?"
        screens = screens_agree(d, hook, "PostgresDown", timeout=hold + 10)
        pages = pages_of(hook, "PostgresDown")
        assert [p["status"] for p in pages] == ["firing"], pages
        waited = pages[0]["received_at"] - failed_at
        # from the first refused attempt (a run, 1 s, and the delivery later), not from the change of reason
        assert hold - 0.5 <= waited <= hold + 3.5, waited
        assert screens.page["annotations"]["summary"] == (
            f"PostgreSQL 127.0.0.1:{c.port}/postgres unreachable from mev-host-1: starting")
        _diagnose_says(screens, "starting")

        c.promote()
        d.wait_value("mevwatch_postgres_up", 1, timeout=20)
        screens_cleared(d, hook, "PostgresDown")
        assert [p["status"] for p in pages_of(hook, "PostgresDown")] == ["firing", "resolved"]


def test_postgres_down_for_auth_says_so_for_a_wrong_password_and_a_pg_hba_reject(tmp_path: Path) -> None:
    with pg_cluster() as c:
        c.psql("CREATE ROLE mev LOGIN PASSWORD 'right'")
        c.psql("CREATE DATABASE ledger OWNER mev")
        hba = c.data / "pg_hba.conf"
        hba.write_text("host all intruder 127.0.0.1/32 reject\n" + hba.read_text())
        c.psql("SELECT pg_reload_conf()")
        wrong_password, rejected = c.dsn("postgres", "mev", "wrong"), c.dsn("ledger", "intruder", "x")
        collectors = ("collectors:\n  - postgres: {interval: 1s, min_connections: 1, max_connections: 1, targets: ["
                      f"{{dsn: '{wrong_password}'}}, {{dsn: '{rejected}'}}]}}\n")
        with paged_daemon(tmp_path, collectors, ["PostgresDown"]) as (d, hook):
            for db in ("postgres", "ledger"):
                screens = screens_agree(d, hook, "PostgresDown", datname=db)
                assert screens.page["annotations"]["summary"] == (
                    f"PostgreSQL 127.0.0.1:{c.port}/{db} unreachable from mev-host-1: auth")
                assert screens.page["labels"]["severity"] == "critical"
                _diagnose_says(screens, "auth")
            log = c.log.read_text(errors="replace")
            assert 'password authentication failed for user "mev"' in log
            assert 'pg_hba.conf rejects connection for host "127.0.0.1", user "intruder"' in log


def test_postgres_down_for_timeout_when_the_server_accepts_and_never_answers(tmp_path: Path) -> None:
    with pg_cluster() as c, c.paused():  # the postmaster stopped: the kernel accepts, nothing answers
        collectors = ("collectors:\n  - postgres: {interval: 1s, timeout: 1900ms, connect_timeout: 1s,"
                      f" min_connections: 1, max_connections: 1, targets: [{{dsn: '{c.dsn()}'}}]}}\n")
        with paged_daemon(tmp_path, collectors, ["PostgresDown"]) as (d, hook):
            screens = screens_agree(d, hook, "PostgresDown")
            assert screens.page["annotations"]["summary"] == (
                f"PostgreSQL 127.0.0.1:{c.port}/postgres unreachable from mev-host-1: timeout")
            _diagnose_says(screens, "timeout")
            started = time.monotonic()
            d.get("/metrics")  # the daemon itself is not held up by the hung server
            assert time.monotonic() - started < 2
