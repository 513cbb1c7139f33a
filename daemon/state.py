"""The state DB: SQLite in WAL mode under the state dir, with versioned migrations per component.

Each component (alert outbox, integrity baseline, log offsets, ...) owns its tables and
declares its own ordered list of migration scripts; ``schema_versions`` records how far each
component's schema has been migrated, so components evolve independently.
The DB holds alert bodies: the dir is created 0700 and the DB files 0600 whatever the umask. A DB
that SQLite reports corrupt is, when the daemon opens it, moved aside (kept, named with the time)
and replaced by an empty one, so the daemon starts and serves instead of refusing to.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from mevwatch.collectors.base import MetricSpec, StateError
from mevwatch.families import Metric

__all__ = ["STATE_METRICS", "StateDB", "StateError", "default_state_dir", "state_families"]

log = structlog.get_logger("mevwatch.state")

DIR_MODE = 0o700
FILE_MODE = 0o600
_SIDE_FILES = ("-wal", "-shm", "-journal")


def default_state_dir() -> Path:
    """``$STATE_DIRECTORY`` when systemd sets it (first entry), else ``./.mevwatch``."""
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    return Path(".mevwatch")


def _private_file(path: Path) -> None:
    """Create ``path`` 0600 if absent (SQLite would create it 0644 minus the umask) and make it 0600."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _is_corrupt(exc: sqlite3.Error) -> bool:
    """SQLITE_CORRUPT and SQLITE_NOTADB; a locked, read-only or full DB is an OperationalError, not this."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


class _Corrupt(Exception):
    pass


class StateDB:
    """One SQLite connection, used from the event loop thread and the blocking pool (serialized).

    ``recover_corrupt``: move a corrupt DB aside and start empty (the daemon) instead of failing
    (the tool commands, which must not change what the daemon will find).
    """

    def __init__(self, path: Path, recover_corrupt: bool = False) -> None:
        self.path = path
        self._lock = threading.RLock()
        self.write_errors_total = 0
        self.last_error: str = ""
        #: where a corrupt DB found at open was moved to (None: it was not)
        self.moved_aside: Path | None = None
        #: wall time of the first failed write of the current streak (None: writes work)
        self.failing_since: float | None = None
        self._streak_start = 0
        try:
            self._prepare_dir(path.parent)
            try:
                self._db = self._connect(path)
            except _Corrupt as exc:
                if not recover_corrupt:
                    raise StateError(f"state DB {path} is not usable: it is corrupt ({exc})") from None
                self.moved_aside = self._move_aside(path)
                log.error("state_db_corrupt", path=str(path), error=str(exc), moved_to=str(self.moved_aside),
                          action="started with an empty state DB")
                self._db = self._connect(path)
        except _Corrupt as exc:
            raise StateError(f"state DB {path} is not usable: it is corrupt ({exc})") from None
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"state DB {path} is not usable: {exc}") from None

    @staticmethod
    def _prepare_dir(state_dir: Path) -> None:
        if not state_dir.is_dir():
            state_dir.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # another process made it first: its mode stays
                state_dir.mkdir(mode=DIR_MODE)  # the umask can only take bits away from 0700
        probe = state_dir / ".mevwatch-write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()

    @staticmethod
    def _check(path: Path) -> None:
        """Raise _Corrupt when SQLite finds ``path`` damaged. Read-only: a corrupt DB and its WAL stay as
        they were (a tool command changes nothing; the daemon moves them aside whole)."""
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        try:
            problems = [str(r[0]) for r in db.execute("PRAGMA quick_check(5)").fetchall()]
        except sqlite3.Error as exc:
            if _is_corrupt(exc):
                raise _Corrupt(str(exc)) from None
            raise
        finally:
            db.close()
        if problems != ["ok"]:
            raise _Corrupt("; ".join(problems))

    @classmethod
    def _connect(cls, path: Path) -> sqlite3.Connection:
        if path.exists():
            cls._check(path)
        _private_file(path)
        for suffix in _SIDE_FILES:  # SQLite gives the WAL and shm files the DB file's mode
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{path}{suffix}", FILE_MODE)
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=5.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
        except sqlite3.Error as exc:
            db.close()
            if _is_corrupt(exc):
                raise _Corrupt(str(exc)) from None
            raise
        return db

    @staticmethod
    def _move_aside(path: Path) -> Path:
        """Rename the DB (and its WAL and shm) to ``<name>.corrupt-<UTC time>``: kept for a post-mortem."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        for suffix in _SIDE_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.rename(f"{path}{suffix}", f"{target}{suffix}")
        os.rename(path, target)
        return target

    @classmethod
    def open_dir(cls, state_dir: Path, recover_corrupt: bool = False) -> StateDB:
        return cls(state_dir / "state.db", recover_corrupt)

    def migrate(self, component: str, steps: Sequence[str]) -> int:
        """Apply the not yet applied ``steps`` of ``component`` in order; return the new version."""
        with self._lock:
            row = self._db.execute(
                "SELECT version FROM schema_versions WHERE component = ?", (component,)
            ).fetchone()
            current = int(row[0]) if row else 0
            if current > len(steps):
                raise StateError(
                    f"state DB schema of {component!r} is version {current}, newer than this mevwatch "
                    f"({len(steps)}); refusing to downgrade"
                )
            for version, script in enumerate(steps[current:], start=current + 1):
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    for stmt in _split_sql(script):
                        self._db.execute(stmt)
                    self._db.execute(
                        "INSERT INTO schema_versions(component, version) VALUES (?, ?) "
                        "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                        (component, version),
                    )
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._db.execute("ROLLBACK")
                    raise StateError(f"migration {component} v{version} failed: {exc}") from None
            return len(steps)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; failures are counted and re-raised as StateError."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._write_failed(exc)
                raise StateError(f"state DB write failed: {exc}") from None
            self._write_ok()

    def _write_failed(self, exc: sqlite3.Error) -> None:
        """Count it; log the first failure of a streak only (a full disk fails every write until freed)."""
        self.write_errors_total += 1
        self.last_error = str(exc)
        if self.failing_since is None:
            self.failing_since = time.time()
            self._streak_start = self.write_errors_total - 1
            log.error("state_db_write_failing", path=str(self.path), error=str(exc),
                      action="notifications are held in memory and sent; written once the DB writes again")

    def _write_ok(self) -> None:
        if self.failing_since is not None:
            log.info("state_db_write_recovered", path=str(self.path),
                     failed_writes=self.write_errors_total - self._streak_start,
                     after_s=round(time.time() - self.failing_since, 1))
            self.failing_since = None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                self.last_error = str(exc)
                raise StateError(f"state DB read failed: {exc}") from None

    def each_row(self, sql: str, params: Sequence[Any], handle: Callable[[tuple[Any, ...]], None]) -> int:
        """Call ``handle`` with each row of one query, in order, without holding every row at once (one
        statement: a consistent snapshot); returns the row count. For tables of 100,000 rows."""
        with self._lock:
            try:
                cursor = self._db.execute(sql, params)
                n = 0
                while batch := cursor.fetchmany(1024):
                    for row in batch:
                        handle(row)
                    n += len(batch)
                return n
            except sqlite3.Error as exc:
                self.last_error = str(exc)
                raise StateError(f"state DB read failed: {exc}") from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One write statement in its own transaction; returns the row count."""
        with self.transaction() as db:
            return db.execute(sql, params).rowcount

    @property
    def total_changes(self) -> int:
        """Rows written through this connection since it opened: a change detector costing no query."""
        return self._db.total_changes

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _split_sql(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


STATE_DB_MOVED_ASIDE = MetricSpec(
    "mevwatch_state_db_moved_aside", "counter", "Corrupt state DBs moved aside at start and replaced by an empty one")
STATE_DB_WRITABLE = MetricSpec(
    "mevwatch_state_db_writable", "gauge", "0 while writes to the state DB fail (full or unwritable disk), else 1")
STATE_METRICS: tuple[MetricSpec, ...] = (STATE_DB_MOVED_ASIDE, STATE_DB_WRITABLE)


def state_families(db: StateDB) -> list[Metric]:
    """The state DB's own series (its write errors are the supervisor's)."""
    return [STATE_DB_MOVED_ASIDE.counter(float(db.moved_aside is not None)),
            STATE_DB_WRITABLE.gauge(0.0 if db.failing_since is not None else 1.0)]
