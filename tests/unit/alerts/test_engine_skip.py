"""The engine skips rules whose evaluation cannot change anything: no alert, no window, same series."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mevwatch.alerts.rules import alert_labels, fingerprint
from tests.unit.alerts._helpers import Harness, counter, gauge

BASE = """
  default_rules: false
  host: mev-host-1
  group_wait: 0s
  group_interval: 1s
  startup_grace: 0s
  rules:
    - name: RatioHigh
      metric: test_ratio
      op: ">"
      threshold: 0.9
      for: 2s
      summary: s
      runbook: memory-high
"""


@pytest.fixture
def harness(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Harness]:
    h = Harness(tmp_path, BASE + getattr(request, "param", ""))
    yield h
    h.close()


def test_an_idle_rule_is_evaluated_again_only_when_its_series_change(harness: Harness) -> None:
    harness.put(gauge("test_ratio", 0.5))
    assert harness.engine.evaluations == 1
    for _ in range(5):  # same value, new snapshots and ticks: nothing to evaluate
        harness.put(gauge("test_ratio", 0.5), gauge("other_metric", 1.0))
        harness.advance(1)
    assert harness.engine.evaluations == 1
    harness.put(gauge("test_ratio", 0.5, mountpoint="/data"))  # a new series set is a change
    assert harness.engine.evaluations == 2
    harness.put(gauge("test_ratio", 0.95, mountpoint="/data"))
    assert harness.engine.evaluations == 3
    assert list(harness.states().values()) == ["pending"]


def test_a_rule_holding_an_alert_is_evaluated_on_every_snapshot_and_tick(harness: Harness) -> None:
    harness.put(gauge("test_ratio", 0.95))
    harness.advance(1)
    harness.put(gauge("test_ratio", 0.95))
    assert harness.engine.evaluations == 3
    assert list(harness.states().values()) == ["pending"]
    harness.advance(1)  # unchanged value, but `for` has elapsed: the tick fires it
    assert list(harness.states().values()) == ["firing"]
    harness.put(gauge("test_ratio", 0.5))
    harness.advance(1)
    assert list(harness.states().values()) == ["resolved"]
    n = harness.engine.evaluations
    harness.advance(1)  # a resolved alert is still an alert of the rule (retention, re-sends)
    assert harness.engine.evaluations == n + 1


def test_a_collector_going_stale_re_evaluates_its_rules(harness: Harness) -> None:
    harness.put(gauge("test_ratio", 0.5), key=("memory", "default"), interval=0.01)
    harness.put(gauge("test_ratio", 0.95, mountpoint="/other"), key=("disk", "default"))
    assert list(harness.states().values()) == ["pending"]
    harness.advance(3)
    assert list(harness.states().values()) == ["firing"]
    n = harness.engine.evaluations
    time.sleep(0.05)  # the memory snapshot is now older than 2x its interval
    harness.advance(1)
    assert harness.engine.evaluations == n + 1
    assert "memory" not in {k[0] for k in harness.engine.samples}


@pytest.mark.parametrize("harness", ["""
    - name: NoProgress
      metric: test_blocks_total
      increase: 10s
      op: "<"
      threshold: 1
      summary: s
      runbook: memory-high
"""], indirect=True)
def test_a_window_rule_is_evaluated_on_every_tick_even_with_unchanged_series(harness: Harness) -> None:
    harness.put(counter("test_blocks", {"a": 1.0}))
    harness.advance(5)
    harness.put(counter("test_blocks", {"a": 2.0}))
    for _ in range(5):
        harness.advance(1)
        harness.put(counter("test_blocks", {"a": 2.0}))
    assert harness.states() == {}  # 1 block in the last 10 s
    for _ in range(6):  # the counter stands still; only time moves the increase out of the window
        harness.advance(1)
    assert [k for k, v in harness.states().items() if v == "firing"] == [
        "NoProgress" + str(sorted({"alertname": "NoProgress", "comm": "a", "host": "mev-host-1",
                                   "severity": "warning"}.items()))
    ]


def test_alert_labels_are_fresh_dicts_with_the_fingerprint_of_their_content(harness: Harness) -> None:
    [rule] = [r for r in harness.engine.rules if r.name == "RatioHigh"]
    series = (("__name__", "test_ratio"), ("mountpoint", "/data"))
    a = alert_labels(rule, series, "h")
    a["mutated"] = "yes"  # callers own the dict: the memoised copy must not change
    b = alert_labels(rule, series, "h")
    assert b == {"mountpoint": "/data", "host": "h", "alertname": "RatioHigh", "severity": "warning"}
    assert list(b) == ["mountpoint", "host", "alertname", "severity"]
    assert fingerprint(b) != fingerprint(a)
