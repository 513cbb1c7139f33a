"""The engine evaluates the rules whose inputs changed, every rule on the tick, and never on a writer's stack."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mevwatch.alerts.rules import alert_labels, fingerprint
from tests.unit.alerts._helpers import RATIO_HIGH_RULE, Harness, counter, gauge

BASE = """
  default_rules: false
  host: mev-host-1
  group_wait: 0s
  group_interval: 1s
  startup_grace: 0s
  rules:
""" + RATIO_HIGH_RULE


@pytest.fixture
def harness(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Harness]:
    h = Harness(tmp_path, BASE + getattr(request, "param", ""))
    yield h
    h.close()


def test_a_rule_is_evaluated_when_its_series_change_and_on_every_tick(harness: Harness) -> None:
    harness.put(gauge("test_ratio", 0.5))
    assert harness.engine.evaluations == 1
    harness.put(gauge("test_ratio", 0.5), gauge("other_metric", 1.0))  # its input did not change
    harness.put(gauge("other_metric", 2.0), key=("other", "default"))
    assert harness.engine.evaluations == 1
    for n in (2, 3, 4):  # the tick evaluates every rule
        harness.advance(1)
        assert harness.engine.evaluations == n
    harness.put(gauge("test_ratio", 0.5, mountpoint="/data"))  # a new series set is a change
    assert harness.engine.evaluations == 5
    harness.put(gauge("test_ratio", 0.95, mountpoint="/data"))
    assert harness.engine.evaluations == 6
    assert list(harness.states().values()) == ["pending"]


async def test_evaluation_runs_in_the_engines_task_and_its_own_metrics_do_not_loop(harness: Harness) -> None:
    await harness.engine.start()
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        n = harness.engine.evaluations
        harness.store.put(("test", "default"), [gauge("test_ratio", 0.95)], 3600.0)
        assert harness.engine.evaluations == n  # nothing ran on the putter's stack
        for _ in range(5):
            await asyncio.sleep(0)
        assert harness.engine.evaluations == n + 1
        assert list(harness.states().values()) == ["pending"]
        # the state change put the engine's metrics once; reading them back evaluated nothing more
        # and put nothing: the store stands still until the next tick or collector run
        seq = harness.store.seq
        for _ in range(20):
            await asyncio.sleep(0)
        assert harness.store.seq == seq
        pending = [s.value for f in harness.store.families() for s in f.samples
                   if s.name == "mevwatch_alerts" and s.labels == {"state": "pending", "severity": "warning"}]
        assert pending == [1.0]
    finally:
        await harness.engine.stop()


def test_a_rule_holding_an_alert_is_evaluated_on_every_snapshot_and_tick(harness: Harness) -> None:
    harness.put(gauge("test_ratio", 0.95))
    harness.advance(1)
    harness.put(gauge("test_ratio", 0.95))
    assert harness.engine.evaluations == 2  # the same value again is no change: the tick evaluates it
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


WINDOW_RULE = """
    - name: Kills
      metric: test_kills_total
      increase: 10s
      op: "{op}"
      threshold: {threshold}
      summary: s
      runbook: memory-high
"""


@pytest.mark.parametrize("harness", [WINDOW_RULE.format(op=">", threshold=0)], indirect=True)
def test_an_increase_fires_when_the_counter_moves_and_resolves_when_it_leaves_the_window(harness: Harness) -> None:
    harness.put(counter("test_kills", {"a": 2.0}))
    for _ in range(5):
        harness.advance(1)
        harness.put(counter("test_kills", {"a": 2.0}))
    assert harness.states() == {}
    n = harness.engine.evaluations
    harness.put(counter("test_kills", {"a": 3.0}))
    assert harness.engine.evaluations == n + 1  # at once, not at the next tick
    assert list(harness.states().values()) == ["firing"]
    harness.advance(11)  # the kill leaves the window: resolved by the tick, as before
    assert list(harness.states().values()) == ["resolved"]


@pytest.mark.parametrize("harness", [WINDOW_RULE.format(op=">", threshold=-1)], indirect=True)
def test_an_increase_above_a_negative_bound_fires_on_the_tick_after_the_second_point(harness: Harness) -> None:
    # One point has no increase; the second point of the same value makes it 0, which is > -1. The same
    # series again is no change, so the tick evaluates it.
    harness.put(counter("test_kills", {"a": 2.0}))
    assert harness.states() == {}
    harness.advance(1)
    harness.put(counter("test_kills", {"a": 2.0}))
    harness.advance(1)
    assert list(harness.states().values()) == ["firing"]


@pytest.mark.parametrize("harness", [WINDOW_RULE.format(op=">", threshold=0)], indirect=True)
def test_a_counter_that_went_negative_raises_nothing(harness: Harness) -> None:
    harness.put(counter("test_kills", {"a": 5.0}))
    harness.advance(1)
    harness.put(counter("test_kills", {"a": -3.0}))  # counted as a reset to -3: the increase is negative
    harness.advance(1)
    assert harness.states() == {}


@pytest.mark.looptime(start=12.3)
async def test_the_tick_is_on_the_loop_clock_grid_of_its_interval(harness: Harness) -> None:
    loop = asyncio.get_running_loop()
    ticks: list[float] = []
    tick = harness.engine.tick

    def recording() -> None:
        ticks.append(loop.time())
        tick()

    harness.engine.tick = recording  # type: ignore[method-assign]
    await harness.engine.start()
    try:
        await asyncio.sleep(3.5)  # from 12.3: the ticks of the 1 s grid, where runs of the same grid wake too
        assert ticks == pytest.approx([13.0, 14.0, 15.0], abs=1e-9)
    finally:
        await harness.engine.stop()
