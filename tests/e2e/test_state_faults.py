"""The daemon against a damaged state dir: a corrupt state DB, a loose umask."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.daemon import RunningDaemon, sample_value


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


CONFIG = """\
collectors:
  - process:
      interval: 0.5s
"""


def test_corrupt_state_db_is_moved_aside_and_the_daemon_serves(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    db = sqlite3.connect(state / "state.db")
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [("a" * 200,)] * 200)
    db.commit()
    db.close()
    with open(state / "state.db", "r+b") as f:  # a torn write over a b-tree page
        f.seek(4096 * 2)
        f.write(b"\xff" * 4096)
    damaged = (state / "state.db").read_bytes()
    with _umask(0), RunningDaemon(tmp_path, CONFIG) as daemon:  # the loosest umask there is
        daemon.wait_for("mevwatch_process_resident_memory_bytes")  # its first run is in
        text = daemon.get()
        assert sample_value(text, "mevwatch_state_db_moved_aside_total") == 1.0
        assert sample_value(text, "mevwatch_collector_success", collector="process") == 1.0
    aside = list(state.glob("state.db.corrupt-*[0-9]Z"))
    assert len(aside) == 1
    assert aside[0].read_bytes() == damaged
    log = daemon.log.read_text()
    assert log.count('"state_db_corrupt"') == 1
    assert str(aside[0]) in log
    fresh = sqlite3.connect(state / "state.db")
    assert fresh.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    fresh.close()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        if (state / name).exists():
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name


def test_state_dir_created_private_under_umask_000(tmp_path: Path) -> None:
    with _umask(0), RunningDaemon(tmp_path, CONFIG) as daemon:
        daemon.wait_for("mevwatch_process_resident_memory_bytes")
        assert sample_value(daemon.get(), "mevwatch_state_db_moved_aside_total") == 0.0
        state = tmp_path / "state"
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
        assert "state.db" in modes
        assert set(modes.values()) == {0o600}, modes
