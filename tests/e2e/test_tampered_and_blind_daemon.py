"""Two things an on-call must see, told the same on every screen by a real daemon: one ``sed -i`` on a watched
file (one change, one page listing every kind that changed and who wrote it), and a host where mevwatch has
nothing to look at (no integrity baseline, no watched file, no backup, no log source): each blind spot is a
MonitoringGap alert on the page, on ``/`` and in diagnose, never a green screen."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.screens import paged_daemon, screens_agree


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


def test_nothing_to_watch_is_a_monitoring_gap_on_every_screen(tmp_path: Path) -> None:
    gone = tmp_path / "not-there"  # nothing of what the config names exists
    collectors = f"""collectors:
  - integrity: {{interval: 1s, files: ['{gone}/etc/mev/config.yaml']}}
  - backups: {{interval: 1s, patterns: ['{gone}/backup/mev-full-*']}}
  - logwatch: {{interval: 1s, journal: {{enabled: false}}, sources: [{{name: mev, paths: ['{gone}/log/mev.log']}}]}}
"""
    with paged_daemon(tmp_path, collectors, GAPS) as (d, hook):
        baseline = screens_agree(d, hook, "MonitoringGapIntegrityBaseline")
        assert baseline.alert["annotations"]["summary"] == (
            "No integrity baseline on mev-host-1: no change to a watched file can be detected")
        watched = screens_agree(d, hook, "MonitoringGapIntegrityNothingWatched")
        assert "nothing is watched" in watched.alert["annotations"]["summary"]
        backup = screens_agree(d, hook, "MonitoringGapBackupMissing", status="missing")
        assert f"{gone}/backup/mev-full-*" in backup.alert["annotations"]["summary"]
        logs = screens_agree(d, hook, "MonitoringGapLogSource", source="mev")
        assert logs.alert["annotations"]["summary"] == (
            "Log source mev is missing on mev-host-1: its patterns count nothing")
        for seen in (baseline, watched, backup, logs):
            assert seen.alert["labels"]["severity"] == "warning"
            assert seen.alert["annotations"]["runbook_url"].endswith("#monitoring-gap")
        # the collectors themselves run fine: only the alerts say the host is not watched
        assert '<span class="verdict WARN" id="verdict">WARN</span> 4 firing' in d.get("/")
