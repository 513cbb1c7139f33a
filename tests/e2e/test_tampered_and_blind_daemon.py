"""Two things an on-call must see, told the same on every screen by a real daemon: one ``sed -i`` on a watched
file (one change, one page listing every kind that changed and who wrote it), and a host where mevwatch has
nothing to look at (no integrity baseline, no watched file, no backup, no log source): each blind spot is a
warning on ``/`` and in diagnose from the first evaluation, and a MonitoringGap page once its ``for`` has
passed, never a green screen."""

from __future__ import annotations

import html
import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import RunningDaemon
from tests.support.fullstack import wait_until
from tests.support.screens import (
    mevwatch_cli,
    paged_daemon,
    pager_alerts_config,
    screens_agree,
    verdicts_agree,
)


def test_one_sed_in_place_is_one_page_listing_every_kind(tmp_path: Path) -> None:
    sed = shutil.which("sed")
    if sed is None:
        pytest.skip("no sed")
    watched = tmp_path / "etc-mev"
    watched.mkdir()
    config = watched / "config.yaml"
    config.write_text("strategy: conservative\nmax_gas_gwei: 80\n")
    collectors = (f"collectors:\n  - integrity: {{interval: 1s, files: ['{config}'], auto_baseline: true,"
                  " debounce: 20ms}\n")
    with paged_daemon(tmp_path, collectors) as (d, hook):
        d.wait_value("mevwatch_integrity_baseline_present", 1)
        d.wait_value("mevwatch_integrity_files_watched", 1)
        # sed -i writes a new file and renames it over the old one: new content and a new inode
        edit = subprocess.Popen([sed, "-i", "s/conservative/aggressive/", str(config)])
        assert edit.wait(timeout=10) == 0
        screens = screens_agree(d, hook, "IntegrityViolation", path=str(config))
        assert screens.alert["labels"]["severity"] == "critical"
        summary = screens.alert["annotations"]["summary"]
        # as root fanotify saw sed write the file that became it (sed may have exited before /proc was read)
        from mevwatch.collectors._integrity_writers import WriterLog
        probe = WriterLog()
        listening = probe.open()
        probe.close()
        writer = rf"pid {edit.pid} \((sed|exited)\), .+" if listening else r"unknown \(.+\)"
        kinds = re.fullmatch(rf"{re.escape(str(config))} changed \(([a-z,]+)\) on mev-host-1, last written by {writer}",
                             summary)
        assert kinds is not None, summary
        assert {"content", "inode"} <= set(kinds.group(1).split(",")), summary
        alerts = json.loads(d.get("/api/v1/alerts"))["data"]["alerts"]
        mine = [a for a in alerts if a["labels"]["alertname"] == "IntegrityViolation"]
        assert len(mine) == 1, [a["labels"] for a in mine]  # one change, one alert
        paged = {a["fingerprint"] for r in hook.delivered() for a in r.json()["alerts"]
                 if a["labels"]["alertname"] == "IntegrityViolation"}
        assert paged == {mine[0]["fingerprint"]}


GAPS = ["MonitoringGapIntegrityBaseline", "MonitoringGapIntegrityNothingWatched", "MonitoringGapBackupMissing",
        "MonitoringGapLogSource"]
BLIND_NOW = "blind now: counts as WARN; pages once it has lasted 10m"


def _pending_gaps(d: RunningDaemon) -> list[dict[str, Any]]:
    alerts = json.loads(d.get("/api/v1/alerts"))["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] in GAPS and a["state"] == "pending"]


def test_nothing_to_watch_is_a_monitoring_gap_on_every_screen(tmp_path: Path) -> None:
    gone = tmp_path / "not-there"  # nothing of what the config names exists
    collectors = f"""collectors:
  - integrity: {{interval: 1s, files: ['{gone}/etc/mev/config.yaml']}}
  - backups: {{interval: 1s, patterns: ['{gone}/backup/mev-full-*']}}
  - logwatch: {{interval: 1s, journal: {{enabled: false}}, sources: [{{name: mev, paths: ['{gone}/log/mev.log']}}]}}
"""
    # the shipped rules: each gap waits its 10m `for` before it pages, and is a warning on / and in diagnose once
    # it has lasted alerts.gap_settle (1m by default, 3s here)
    with paged_daemon(tmp_path, collectors, extra="  gap_settle: 3s\n") as (d, hook):
        started = time.monotonic()
        wait_until("every gap pending", lambda: len(_pending_gaps(d)) == len(GAPS), 10)
        wait_until("every gap counts", lambda: [g["verdict"]["status"] for g in _pending_gaps(d)] == ["WARN"] * 4, 15)
        landing = d.get("/")
        verdict = re.search(r'<span class="verdict [A-Z]+" id="verdict">.*?</p>', landing)
        assert verdict is not None
        assert verdict.group(0).startswith('<span class="verdict WARN" id="verdict">WARN</span> 0 firing, 4 pending '
                                           "alert(s) (4 of them a check that cannot be made: WARN now)"), verdict
        for gap in _pending_gaps(d):
            assert gap["verdict"] == {"status": "WARN", "reason": BLIND_NOW}
            row = re.search(rf'<tr id="alert-{gap["fingerprint"]}">.*?</tr>', landing)
            assert row is not None, gap["labels"]
            assert f'<td>pending<br><span class="WARN counts">{BLIND_NOW}</span></td>' in row.group(0)
            assert html.escape(gap["annotations"]["summary"]) in row.group(0)
        assert verdicts_agree(d) == "WARN"  # diagnose says so too, and exits 1
        diagnose = mevwatch_cli(d, "diagnose", "--json", "--url", d.url)
        assert diagnose.returncode == 1, diagnose.stdout + diagnose.stderr
        lines = json.loads(diagnose.stdout)["lines"]
        for name in GAPS:
            [line] = [ln for ln in lines if ln["check"].startswith(f"{name} (")]
            assert line["status"] == "WARN", line
            assert line["value"].startswith("pending: "), line
            assert line["value"].endswith(f" ({BLIND_NOW})"), line
            assert line["section"] == "monitoring-gap"
        summaries = {ln["value"] for ln in lines if ln["section"] == "monitoring-gap" and ln["status"] == "INFO"}
        assert "No integrity baseline on mev-host-1: no change to a watched file can be detected" in summaries
        assert "Log source mev is missing on mev-host-1: its patterns count nothing" in summaries
        assert time.monotonic() - started < 60  # far from the 10m `for`
        assert not [a for r in hook.requests for a in r.json()["alerts"] if a["labels"]["alertname"] in GAPS]

        # once the wait is over (here: the `for` taken off with a reload) each gap pages, told the same everywhere
        d.config.write_text(collectors + pager_alerts_config(hook, GAPS))
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        baseline = screens_agree(d, hook, "MonitoringGapIntegrityBaseline")
        assert baseline.alert["annotations"]["summary"] == (
            "No integrity baseline on mev-host-1: no change to a watched file can be detected")
        watched = screens_agree(d, hook, "MonitoringGapIntegrityNothingWatched")
        assert "nothing is watched" in watched.alert["annotations"]["summary"]
        backup = screens_agree(d, hook, "MonitoringGapBackupMissing")
        assert backup.alert["annotations"]["summary"] == (
            f"No backup file matches {gone}/backup/mev-full-* on mev-host-1 (missing): BackupStale cannot fire")
        logs = screens_agree(d, hook, "MonitoringGapLogSource", source="mev")
        assert logs.alert["annotations"]["summary"] == (
            "Log source mev is missing on mev-host-1: its patterns count nothing")
        for seen in (baseline, watched, backup, logs):
            assert seen.alert["labels"]["severity"] == "warning"
            assert seen.alert["annotations"]["runbook_url"].endswith("#monitoring-gap")
            assert seen.alert["verdict"] == {"status": "WARN", "reason": ""}
        # the collectors themselves run fine: only the alerts say the host is not watched
        assert '<span class="verdict WARN" id="verdict">WARN</span> 4 firing' in d.get("/")
        assert verdicts_agree(d) == "WARN"
