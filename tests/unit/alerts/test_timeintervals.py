"""Escalation levels limited to time windows (Alertmanager's time_intervals), on a controlled clock."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mevwatch.alerts.timeintervals import TimeInterval
from mevwatch.daemon.config import ConfigError, load_config_text
from tests.unit.alerts._helpers import Clock, Harness, gauge


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


BUSINESS = TimeInterval.model_validate({"times": [{"start_time": "09:00", "end_time": "17:00"}],
                                        "weekdays": ["monday:friday"], "location": "Europe/London"})


@pytest.mark.parametrize(("at", "inside"), [
    # Wednesday 1 July 2026, London on summer time (UTC+1): 09:00-17:00 there is 08:00-16:00 UTC
    ("2026-07-01T07:59:59", False), ("2026-07-01T08:00:00", True),
    ("2026-07-01T15:59:59", True), ("2026-07-01T16:00:00", False),
    # Wednesday 7 January 2026, London on GMT: the same window is 09:00-17:00 UTC
    ("2026-01-07T08:59:59", False), ("2026-01-07T09:00:00", True), ("2026-01-07T16:59:00", True),
    ("2026-01-07T17:00:00", False),
    # Friday 17:00 London is the end; Saturday and Sunday never; Monday from 09:00
    ("2026-07-03T15:59:00", True), ("2026-07-04T10:00:00", False), ("2026-07-05T10:00:00", False),
    ("2026-07-06T08:00:00", True),
])
def test_business_hours_window_edges_in_a_time_zone(at: str, inside: bool) -> None:
    assert BUSINESS.contains(utc(at)) is inside


def test_days_of_month_months_and_years_as_alertmanager_reads_them() -> None:
    last_days = TimeInterval.model_validate({"days_of_month": ["-2:-1"]})
    assert [last_days.contains(utc(f"2026-02-{d}T12:00:00")) for d in (26, 27, 28)] == [False, True, True]
    assert [last_days.contains(utc(f"2026-03-{d}T12:00:00")) for d in (29, 30, 31)] == [False, True, True]
    day31 = TimeInterval.model_validate({"days_of_month": ["31"]})
    assert not day31.contains(utc("2026-04-30T12:00:00"))  # a 30-day month has no day 31
    assert day31.contains(utc("2026-05-31T12:00:00"))
    q1 = TimeInterval.model_validate({"months": ["january:march"], "years": ["2026"]})
    assert q1.contains(utc("2026-03-31T23:59:59"))
    assert not q1.contains(utc("2026-04-01T00:00:00"))
    assert not q1.contains(utc("2027-01-15T00:00:00"))
    night = TimeInterval.model_validate({"times": [{"start_time": "22:00", "end_time": "24:00"},
                                                   {"start_time": "00:00", "end_time": "06:00"}]})
    assert night.contains(utc("2026-07-01T23:59:59"))
    assert night.contains(utc("2026-07-01T00:00:00"))
    assert not night.contains(utc("2026-07-01T06:00:00"))
    assert TimeInterval.model_validate({}).contains(utc("2026-07-01T12:00:00"))  # no field: always


ESCALATION = """  default_rules: false
  startup_grace: 0s
  group_wait: 0s
  rules:
    - {name: NodeDown, metric: node_up, op: "==", threshold: 0, severity: critical, summary: "down",
       runbook: peer-loss}
  receivers:
    - {name: oncall, log_configs: [{}]}
    - {name: lead, log_configs: [{}]}
    - {name: director, log_configs: [{}]}
  time_intervals:
    - name: business-hours
      time_intervals:
        - times: [{start_time: "09:00", end_time: "17:00"}]
          weekdays: ["monday:friday"]
          location: Europe/London
  receiver: oncall
  escalation:
    - {after: 15m, receiver: lead}
    - {after: 1h, receiver: director, active_time_intervals: [business-hours]}
"""


def _receivers(h: Harness) -> list[str]:
    """Receivers paged, in the order they were first paged (repeat notifications left out)."""
    return list(dict.fromkeys(n["receiver"] for n in h.notifications() if n["status"] == "firing"))


def test_an_escalation_level_limited_to_business_hours_waits_for_the_window(tmp_path: Path) -> None:
    h = Harness(tmp_path, ESCALATION, Clock(utc("2026-07-03T15:30:00")))  # Friday 16:30 in London
    h.put(gauge("node_up", 0, endpoint="erigon"))
    assert _receivers(h) == ["oncall"]
    h.advance(15 * 60)
    assert _receivers(h) == ["oncall", "lead"]  # L2 has no window
    h.advance(45 * 60)  # Friday 17:30 London: L3's hour is up, but its window closed at 17:00
    h.advance(2 * 86400)  # the whole weekend
    assert _receivers(h) == ["oncall", "lead"]
    h.clock.t = utc("2026-07-06T07:59:59")  # Monday 08:59:59 London
    h.engine.tick()
    assert _receivers(h) == ["oncall", "lead"]
    h.advance(1)  # Monday 09:00 London: the window opens and the still-firing alert escalates
    assert _receivers(h) == ["oncall", "lead", "director"]
    h.close()


def test_the_level_escalates_at_its_delay_inside_the_window(tmp_path: Path) -> None:
    h = Harness(tmp_path, ESCALATION, Clock(utc("2026-07-01T09:00:00")))  # Wednesday 10:00 London
    h.put(gauge("node_up", 0, endpoint="erigon"))
    h.advance(3599)
    assert _receivers(h) == ["oncall", "lead"]
    h.advance(1)
    assert _receivers(h) == ["oncall", "lead", "director"]
    h.close()


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config_text("collectors: []\nalerts:\n" + text, "m.yaml")
    return [str(i) for i in exc.value.issues]


@pytest.mark.parametrize(("interval", "line", "path", "message"), [
    ('{times: [{start_time: "17:00", end_time: "09:00"}]}', 6,
     "alerts.time_intervals[0].time_intervals[0].times[0].end_time", "must be after start_time"),
    ('{times: [{start_time: "9am", end_time: "17:00"}]}', 6,
     "alerts.time_intervals[0].time_intervals[0].times[0].start_time", "is not HH:MM"),
    ('{weekdays: ["monday:fryday"]}', 6, "alerts.time_intervals[0].time_intervals[0].weekdays", "expected a name"),
    ('{days_of_month: ["0"]}', 6, "alerts.time_intervals[0].time_intervals[0].days_of_month", "0 is no day"),
    ('{days_of_month: ["10:5"]}', 6, "alerts.time_intervals[0].time_intervals[0].days_of_month",
     "starts after it ends"),
    ('{months: ["13"]}', 6, "alerts.time_intervals[0].time_intervals[0].months", "out of range 1..12"),
    ('{location: "Mars/Olympus"}', 6, "alerts.time_intervals[0].time_intervals[0].location",
     "not a known IANA time zone"),
    ('{hours: ["9:17"]}', 6, "alerts.time_intervals[0].time_intervals[0].hours", "unknown key"),
])
def test_a_bad_interval_names_file_line_and_field(interval: str, line: int, path: str, message: str) -> None:
    [err] = _errors(f"  time_intervals:\n    - name: w\n      time_intervals:\n        - {interval}\n")
    assert err.startswith(f"m.yaml:{line}: {path}: "), err
    assert message in err


def test_an_unknown_interval_name_is_refused() -> None:
    errs = _errors("  receivers: [{name: a, log_configs: [{}]}, {name: b, log_configs: [{}]}]\n  receiver: a\n"
                   "  escalation: [{after: 1h, receiver: b, active_time_intervals: [office]}]\n")
    assert "escalation[0].active_time_intervals[0]: unknown time interval 'office'" in errs[0]


def test_check_config_exits_2_on_a_bad_interval(tmp_path: Path) -> None:
    cfg = tmp_path / "mevwatch.yaml"
    cfg.write_text("collectors: []\nalerts:\n  time_intervals:\n    - name: w\n      time_intervals:\n"
                   "        - {weekdays: [\"someday\"]}\n")
    p = subprocess.run([sys.executable, "-m", "mevwatch", "check-config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert f"{cfg}:6: alerts.time_intervals[0].time_intervals[0].weekdays" in p.stderr
