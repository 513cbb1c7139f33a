"""The state DB: SQLite in WAL mode under the state dir, with versioned migrations per component.

Each component (alert outbox, integrity baseline, log offsets, ...) owns its tables and
declares its own ordered list of migration scripts; ``schema_versions`` records how far each
component's schema has been migrated, so components evolve independently.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["StateDB", "StateError", "default_state_dir"]


class StateError(Exception):
    """The state dir or DB cannot be used (unwritable, full, corrupt)."""


def default_state_dir() -> Path:
    """``$STATE_DIRECTORY`` when systemd sets it (first entry), else ``./.mevwatch``."""
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    return Path(".mevwatch")


class StateDB:
    """One SQLite connection, used from the event loop thread and the blocking pool (serialized)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self.write_errors_total = 0
        self.last_error: str = ""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            probe = path.parent / ".mevwatch-write-probe"
            probe.write_bytes(b"ok")
            probe.unlink()
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"state DB {path} is not usable: {exc}") from None

    @classmethod
    def open_dir(cls, state_dir: Path) -> StateDB:
        return cls(state_dir / "state.db")

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
                self.write_errors_total += 1
                self.last_error = str(exc)
                raise StateError(f"state DB write failed: {exc}") from None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, params).fetchall())
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
