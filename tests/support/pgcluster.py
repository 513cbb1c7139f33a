"""Throwaway PostgreSQL clusters (initdb in a temp dir) and scratch databases on the local server.

The machine's server at 127.0.0.1:5432 cannot preload pg_stat_statements or use password auth,
so tests that need either start their own cluster on a free port.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.support.peers import free_port, missing, wait_port

__all__ = ["LOCAL_DSN", "PG_BIN", "PgCluster", "local_psql", "need_local_server", "pg_cluster", "scratch_database"]

PG_BIN = Path(os.environ.get("MEVWATCH_PG_BIN", "/usr/lib/postgresql/15/bin"))
LOCAL_HOST, LOCAL_PORT = "127.0.0.1", 5432
LOCAL_DSN = f"postgresql://postgres@{LOCAL_HOST}:{LOCAL_PORT}/postgres"
_HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


def _psql(port: int, sql: str, db: str = "postgres", user: str = "postgres", host: str = "127.0.0.1") -> str:
    proc = subprocess.run(
        ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", str(port), "-U", user,
         "-d", db, "-c", sql],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"psql failed ({sql[:80]!r}): {proc.stderr.strip()}")
    return proc.stdout.strip()


def local_psql(sql: str, db: str = "postgres") -> str:
    return _psql(LOCAL_PORT, sql, db)


def need_local_server() -> None:
    if shutil.which("psql") is None:
        missing("psql not installed (postgresql-client)")
    try:
        local_psql("SELECT 1")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        missing(f"PostgreSQL not running at {LOCAL_HOST}:{LOCAL_PORT}: {exc}")


@contextmanager
def scratch_database(prefix: str = "mevwatch_test") -> Iterator[str]:
    """A database on the local server, dropped (with its sessions) afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    local_psql(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        local_psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PgCluster:
    """initdb + pg_ctl as the postgres OS user, on a free loopback port, removed on stop."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        for tool in ("initdb", "pg_ctl"):
            if not (PG_BIN / tool).is_file():
                missing(f"{PG_BIN / tool} not installed (postgresql-15)")
        if shutil.which("runuser") is None or os.geteuid() != 0:
            missing("starting a throwaway cluster needs root and runuser (to run as the postgres user)")
        self.port = free_port()
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "off",
            "shared_buffers": "16MB",
            "max_connections": "30",
            **(settings or {}),
        }
        self.dir = Path(tempfile.mkdtemp(prefix="mevwatch-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        pw = pwd.getpwnam("postgres")
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                           "--no-sync", "-E", "UTF8"], timeout=120)
        (self.data / "pg_hba.conf").write_text(_HBA)

    def _as_postgres(self, argv: list[str], timeout: float = 60) -> None:
        proc = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True,
                              timeout=timeout, cwd=self.dir)
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{Path(argv[0]).name} failed: {proc.stderr.strip()}\n{log}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} " + " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._as_postgres([str(PG_BIN / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
                           "-l", str(self.log), "-o", opts], timeout=90)
        wait_port(self.port, 30)

    def start_standby(self) -> None:
        """Start the stopped cluster as a standby with hot_standby off: the postmaster listens and answers every
        connection "the database system is not yet accepting connections" (asyncpg's CannotConnectNowError, as in
        a server's startup or crash recovery) until :meth:`promote`."""
        signal_file = self.data / "standby.signal"
        signal_file.touch()
        pw = pwd.getpwnam("postgres")
        os.chown(signal_file, pw.pw_uid, pw.pw_gid)
        settings = self.settings
        self.settings = {**settings, "hot_standby": "off"}
        try:
            self.start()
        finally:
            self.settings = settings

    def promote(self) -> None:
        """End the standby's recovery: it accepts connections."""
        self._as_postgres([str(PG_BIN / "pg_ctl"), "promote", "-w", "-t", "60", "-D", str(self.data)], timeout=90)

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The postmaster stopped with SIGSTOP: the kernel still accepts TCP connections on its port, and nothing
        answers them (a hung server); SIGCONT when the block ends, whatever happens in it."""
        pid = self.postmaster_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self, mode: str = "immediate") -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_postgres([str(PG_BIN / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.data)])

    def set_next_xid(self, xid: int) -> None:
        """Move the stopped cluster's next transaction ID with pg_resetwal (every database's xid age jumps to
        about ``xid``), with the commit-log segment it needs. ``xid`` must start a segment (a multiple of 2**20)."""
        if xid % 2**20:
            raise ValueError("xid must be a multiple of 1048576 (one pg_xact segment)")
        self.stop("fast")  # pg_resetwal wants a clean shutdown
        self._as_postgres([str(PG_BIN / "pg_resetwal"), "-x", str(xid), "-D", str(self.data)])
        segment = self.data / "pg_xact" / f"{xid // 2**20:04X}"
        segment.write_bytes(bytes(256 * 1024))
        pw = pwd.getpwnam("postgres")
        os.chown(segment, pw.pw_uid, pw.pw_gid)

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, db: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{db}"

    def psql(self, sql: str, db: str = "postgres", user: str = "postgres") -> str:
        return _psql(self.port, sql, db, user)


@contextmanager
def pg_cluster(settings: dict[str, str] | None = None) -> Iterator[PgCluster]:
    cluster = PgCluster(settings)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()

