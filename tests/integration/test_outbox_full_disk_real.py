"""The state filesystem fills up (a real 1 MiB tmpfs, filled for real): notifications still go out.

Before, every notification stopped, with a traceback every second, until space returned. Now the
outbox holds what it cannot write in memory and sends it; the failure is one log line per streak
and a metric; when space returns everything held is written, nothing lost and nothing sent twice.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from mevwatch.alerts.config import OutboxConfig, WebhookConfig
from mevwatch.alerts.outbox import Outbox, OutboxEntry
from mevwatch.alerts.sinks.webhook import NOTIFICATION_ID_HEADER, WebhookSink
from mevwatch.daemon.state import StateDB, state_families
from tests.support.families import family_value
from tests.support.webhook import WebhookReceiver

pytestmark = pytest.mark.root

FAST = OutboxConfig(retry_initial=0.05, retry_max=0.2, give_up_after=600)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "state"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(fs: Path) -> Path:
    filler = fs / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError:
            pass
    return filler


def _entries(prefix: str, n: int) -> list[OutboxEntry]:
    return [OutboxEntry(f"{prefix}{i}", "hook/webhook/0", {"status": "firing", "n": f"{prefix}{i}"})
            for i in range(n)]


async def _until(what: str, pred: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s")
        await asyncio.sleep(0.02)


async def test_full_state_fs_holds_sends_and_writes_back_without_loss_or_doubles(small_fs: Path) -> None:
    receiver = WebhookReceiver().start()
    db = StateDB.open_dir(small_fs)
    sink = WebhookSink("hook", 0, WebhookConfig(url=receiver.url, timeout=1.0))
    box = Outbox(db, [sink], FAST)
    await box.start()
    try:
        with structlog.testing.capture_logs() as logs:
            # one notification is in the DB, its receiver down, when the disk fills up
            receiver.statuses.extend([503] * 3)
            box.enqueue(_entries("before-", 1))
            await _until("a failed attempt", lambda: box.failed["hook/webhook/0"] >= 1)
            filler = _fill(small_fs)

            box.enqueue(_entries("full-", 5))  # cannot be written: held, not raised
            assert box.held() >= 5
            got = await receiver.wait_delivered_async(6)
            assert db.failing_since is not None
            assert family_value(state_families(db), "mevwatch_state_db_writable") == 0.0
            receiver.statuses.extend([500] * 4)  # a streak of retries, still on a full disk
            box.enqueue(_entries("retry-", 2))
            got = await receiver.wait_delivered_async(8)
            assert box.depth() == {}
            errors_during = db.write_errors_total
            assert errors_during >= 3

            filler.unlink()  # space is back
            box.enqueue(_entries("after-", 1))
            got = await receiver.wait_delivered_async(9)
            await _until("everything held written back", lambda: box.held() == 0)
        ids = [r.headers[NOTIFICATION_ID_HEADER] for r in got]
        want = [e.id for p, n in (("before-", 1), ("full-", 5), ("retry-", 2), ("after-", 1)) for e in _entries(p, n)]
        assert sorted(ids) == sorted(want)  # every one, once
        await asyncio.sleep(0.5)  # a delivered entry must not come back from the DB
        assert len(receiver.delivered()) == 9
        assert db.query("SELECT COUNT(*) FROM alert_outbox") == [(0,)]
        assert db.failing_since is None
        assert family_value(state_families(db), "mevwatch_state_db_writable") == 1.0
        events = [e["event"] for e in logs]
        assert events.count("state_db_write_failing") == 1  # one line for the whole streak
        assert events.count("state_db_write_recovered") == 1
        assert not [e for e in logs if e.get("log_level") == "error" and e["event"] != "state_db_write_failing"]
        assert not [e for e in logs if "exc_info" in e or "exception" in e]
    finally:
        await box.stop()
        db.close()
        receiver.stop()


async def test_held_notifications_are_written_when_space_returns_before_they_are_sent(small_fs: Path) -> None:
    receiver = WebhookReceiver()  # down: nothing can be delivered
    db = StateDB.open_dir(small_fs)
    sink = WebhookSink("hook", 0, WebhookConfig(url=receiver.url, timeout=0.5))
    box = Outbox(db, [sink], FAST)
    await box.start()
    try:
        filler = _fill(small_fs)
        box.enqueue(_entries("held-", 3))
        await _until("retries on the held ones", lambda: box.failed["hook/webhook/0"] >= 3)
        assert db.query("SELECT COUNT(*) FROM alert_outbox") == [(0,)]
        filler.unlink()
        await _until("written back", lambda: box.held() == 0)
        rows = db.query("SELECT id, attempts FROM alert_outbox ORDER BY id")
        assert [r[0] for r in rows] == ["held-0", "held-1", "held-2"]
        assert rows[0][1] >= 3  # with its retry state (the others wait behind it, in order)
        receiver.start()
        got = await receiver.wait_delivered_async(3)
        await asyncio.sleep(0.3)
        assert sorted(r.headers[NOTIFICATION_ID_HEADER] for r in receiver.delivered()) == [
            "held-0", "held-1", "held-2"]
        assert len(got) == 3
        assert db.query("SELECT COUNT(*) FROM alert_outbox") == [(0,)]
    finally:
        await box.stop()
        db.close()
        receiver.stop()


async def test_a_refusal_on_a_full_disk_still_reaches_the_fallback_once(small_fs: Path) -> None:
    pager, backup = WebhookReceiver().start(), WebhookReceiver().start()
    pager.statuses.extend([400] * 10)
    db = StateDB.open_dir(small_fs)
    sinks = [WebhookSink("pager", 0, WebhookConfig(url=pager.url, timeout=1.0)),
             WebhookSink("backup", 0, WebhookConfig(url=backup.url, timeout=1.0))]
    box = Outbox(db, sinks, FAST, fallback={"pager": ["backup"]})
    await box.start()
    try:
        filler = _fill(small_fs)
        alert = {"status": "firing", "labels": {"alertname": "RpcEndpointDown"}, "annotations": {}}
        box.enqueue([OutboxEntry("n1", "pager/webhook/0", {"status": "firing", "alerts": [alert]})])
        [got] = await backup.wait_delivered_async(1)  # the dead letter and its resend held in memory, still sent
        assert got.json()["alerts"][0]["annotations"]["undelivered_to"] == "pager/webhook/0"
        assert db.query("SELECT COUNT(*) FROM alert_dead_letters") == [(0,)]
        filler.unlink()
        await _until("the dead letter written back (the workers retry every second)", lambda: box.held() == 0)
        assert [d["id"] for d in box.dead_letters()] == ["n1"]
        await asyncio.sleep(0.3)  # the delivered resend must not come back from the DB
        assert len(backup.delivered()) == 1
        assert db.query("SELECT COUNT(*) FROM alert_outbox") == [(0,)]
    finally:
        await box.stop()
        db.close()
        pager.stop()
        backup.stop()
