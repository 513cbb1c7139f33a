"""The daemon against a damaged state dir: a corrupt state DB, a loose umask, a full filesystem."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.daemon import RunningDaemon, sample_value
from tests.support.webhook import WebhookReceiver


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
        daemon.wait_value("mevwatch_collector_success", 1.0, collector="process")  # collectors run
        assert sample_value(daemon.get(), "mevwatch_state_db_moved_aside_total") == 1.0
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


ALERTING = """\
collectors:
  - process: {{interval: 300ms}}
alerts:
  default_rules: false
  startup_grace: 1s
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1s
  outbox: {{retry_initial: 100ms, retry_max: 300ms}}
  receivers:
    - name: hook
      webhook_configs: [{{url: "{url}", timeout: 1s}}]
  receiver: hook
  rules:
    - name: MevwatchThreads
      metric: mevwatch_process_threads
      op: ">"
      threshold: 0
      summary: "threads"
      runbook: collector-failing
"""


@pytest.mark.root
def test_full_state_fs_the_daemon_keeps_notifying_and_logs_once(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)], check=True)
    receiver = WebhookReceiver().start()
    try:
        with RunningDaemon(tmp_path, ALERTING.format(url=receiver.url)) as d:
            receiver.wait_delivered(1, timeout=15)
            filler = state / "filler"
            with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
                while f.write(b"\0" * 4096):
                    pass
            d.wait_for("mevwatch_state_db_writable", timeout=10)
            deadline = time.monotonic() + 15
            while sample_value(d.get(), "mevwatch_state_db_writable") != 0.0:
                assert time.monotonic() < deadline, "the DB never reported unwritable"
                time.sleep(0.1)
            during = len(receiver.delivered())
            receiver.wait_delivered(during + 3, timeout=15)  # repeats keep going out on a full disk
            filler.unlink()
            deadline = time.monotonic() + 15
            while sample_value(d.get(), "mevwatch_state_db_writable") != 1.0:
                assert time.monotonic() < deadline, "the DB never recovered"
                time.sleep(0.1)
            receiver.wait_delivered(len(receiver.delivered()) + 1, timeout=15)
        ids = [r.headers["X-Mevwatch-Notification-Id"] for r in receiver.delivered()]
        assert len(ids) == len(set(ids))  # nothing sent twice
        log = d.log.read_text()
        assert log.count('"state_db_write_failing"') == 1
        assert log.count('"state_db_write_recovered"') == 1
        assert "Traceback" not in log
        assert '"level": "error"' not in log.replace('"event": "state_db_write_failing", "level": "error"', "")
    finally:
        receiver.stop()
        subprocess.run(["umount", "-l", str(state)], check=False)
