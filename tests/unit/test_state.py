"""State DB: WAL, per-component migrations, and a full or unwritable disk as a clear error."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mevwatch.daemon.state import StateDB, StateError

STEPS = ["CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)", "ALTER TABLE t ADD COLUMN n INTEGER DEFAULT 0"]


def test_wal_and_migrations_are_versioned_per_component(tmp_path: Path) -> None:
    db = StateDB.open_dir(tmp_path)
    assert db.query("PRAGMA journal_mode")[0][0] == "wal"
    assert db.migrate("a", STEPS[:1]) == 1
    assert db.migrate("a", STEPS) == 2  # only the new step runs
    assert db.migrate("b", ["CREATE TABLE u (x)"]) == 1
    db.execute("INSERT INTO t (k, v, n) VALUES (?, ?, ?)", ("x", b"1", 3))
    db.close()
    again = StateDB.open_dir(tmp_path)
    assert again.migrate("a", STEPS) == 2
    assert again.query("SELECT n FROM t WHERE k = 'x'") == [(3,)]
    with pytest.raises(StateError, match="newer than this mevwatch"):
        again.migrate("a", STEPS[:1])
    again.close()


def test_failed_migration_rolls_back(tmp_path: Path) -> None:
    db = StateDB.open_dir(tmp_path)
    with pytest.raises(StateError, match="migration c v1 failed"):
        db.migrate("c", ["CREATE TABLE ok (x); CREATE TABLE broken ("])
    assert db.query("SELECT name FROM sqlite_master WHERE name = 'ok'") == []
    assert db.query("SELECT version FROM schema_versions WHERE component = 'c'") == []


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StateError, match="not usable"):
        StateDB.open_dir(blocker / "state")


def _damaged_pages(path: Path) -> None:
    """A real DB of several pages, then one b-tree page overwritten (a torn write, a bad sector)."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [("a" * 200,)] * 200)
    db.commit()
    db.close()
    with open(path, "r+b") as f:
        f.seek(4096 * 2)
        f.write(b"\xff" * 4096)


def _not_a_db(path: Path) -> None:
    path.write_bytes(b"this is not sqlite" * 100)


@pytest.mark.parametrize("damage", [_not_a_db, _damaged_pages])
def test_corrupt_state_db_is_a_clear_error_for_the_tools(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    damage(tmp_path / "state.db")
    before = (tmp_path / "state.db").read_bytes()
    with pytest.raises(StateError, match="not usable: it is corrupt"):
        StateDB.open_dir(tmp_path)
    assert (tmp_path / "state.db").read_bytes() == before  # a tool command changes nothing


@pytest.mark.parametrize("damage", [_not_a_db, _damaged_pages])
def test_corrupt_state_db_is_moved_aside_and_replaced(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    damage(tmp_path / "state.db")
    (tmp_path / "state.db-wal").write_bytes(b"wal of the broken DB")
    before = (tmp_path / "state.db").read_bytes()
    db = StateDB.open_dir(tmp_path, recover_corrupt=True)
    assert db.moved_aside is not None
    assert re.fullmatch(r"state\.db\.corrupt-\d{8}T\d{6}Z", db.moved_aside.name)
    assert db.moved_aside.read_bytes() == before  # kept as it was, for a post-mortem
    assert Path(f"{db.moved_aside}-wal").read_bytes() == b"wal of the broken DB"
    assert db.migrate("a", STEPS) == 2  # the new DB works
    db.execute("INSERT INTO t (k, v) VALUES ('k', x'00')")
    db.close()
    again = StateDB.open_dir(tmp_path, recover_corrupt=True)  # a healthy DB is kept
    assert again.moved_aside is None
    assert again.query("SELECT k FROM t") == [("k",)]
    aside = {p.name for p in tmp_path.glob("state.db.corrupt-*")}
    assert {db.moved_aside.name, db.moved_aside.name + "-wal"} <= aside <= {
        db.moved_aside.name + s for s in ("", "-wal", "-shm")}
    again.close()


def test_state_dir_and_db_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        db = StateDB.open_dir(tmp_path / "a" / "state")
        db.migrate("a", STEPS)
        db.execute("INSERT INTO t (k, v) VALUES ('k', x'00')")  # the WAL and shm files exist now
        files = [tmp_path / "a" / "state" / n for n in ("state.db", "state.db-wal", "state.db-shm")]
        assert stat.S_IMODE((tmp_path / "a" / "state").stat().st_mode) == 0o700
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == dict.fromkeys(
            (f.name for f in files), 0o600)
        db.close()
        # a DB left 0644 by an older mevwatch is made private when opened
        for f in files:
            if f.exists():
                f.chmod(0o644)
        StateDB.open_dir(tmp_path / "a" / "state").close()
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files if f.exists())
    finally:
        os.umask(old)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_at_run_time_is_counted_not_fatal(tiny_fs: Path) -> None:
    db = StateDB.open_dir(tiny_fs)
    db.migrate("fill", ["CREATE TABLE blobs (b BLOB)"])
    with open(tiny_fs / "filler", "wb", buffering=0) as f:  # take what is left
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError:
            pass
    messages = []
    for _ in range(20):
        try:
            db.execute("INSERT INTO blobs VALUES (?)", (os.urandom(32768),))
        except StateError as exc:
            messages.append(str(exc))
    errors = len(messages)
    assert errors >= 1
    assert all("full" in m or "disk" in m for m in messages), messages
    assert db.write_errors_total == errors
    (tiny_fs / "filler").unlink()  # space is back: writes work again without reopening
    db.execute("INSERT INTO blobs VALUES (?)", (b"ok",))
    assert db.query("SELECT count(*) FROM blobs WHERE b = ?", (b"ok",)) == [(1,)]
    db.close()


def test_sqlite_errors_are_not_leaked_raw(tmp_path: Path) -> None:
    db = StateDB.open_dir(tmp_path)
    with pytest.raises(StateError):
        db.execute("INSERT INTO missing_table VALUES (1)")
    with pytest.raises(StateError):
        db.query("SELECT * FROM missing_table")
    assert not isinstance(StateError("x"), sqlite3.Error)
