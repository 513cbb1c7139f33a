"""The engine evaluates the rules whose inputs changed, every rule on the tick, and never on a writer's stack."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mevwatch.alerts.router import rfc3339
from mevwatch.alerts.rules import RESOLVED_RETENTION, Alert, alert_labels, fingerprint
from tests.unit.alerts._helpers import RATIO_HIGH_RULE, Harness, LoopClock, counter, gauge, increase_rule

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


def test_a_threshold_rule_is_evaluated_when_its_series_change_and_on_a_tick_only_when_its_for_is_due(
    harness: Harness,
) -> None:
    harness.put(gauge("test_ratio", 0.5))
    assert harness.engine.evaluations == 1
    harness.put(gauge("test_ratio", 0.5), gauge("other_metric", 1.0))  # its input did not change
    harness.put(gauge("other_metric", 2.0), key=("other", "default"))
    assert harness.engine.evaluations == 1
    for _ in range(3):  # below the threshold and no alert: time alone cannot change its verdict
        harness.advance(1)
        assert harness.engine.evaluations == 1
    harness.put(gauge("test_ratio", 0.5, mountpoint="/data"))  # a new series set is a change
    assert harness.engine.evaluations == 2
    harness.put(gauge("test_ratio", 0.95, mountpoint="/data"))
    assert harness.engine.evaluations == 3
    assert list(harness.states().values()) == ["pending"]
    harness.advance(1)  # pending for 1 s of its 2 s `for`: nothing is due
    assert harness.engine.evaluations == 3
    harness.advance(1)  # `for` has passed: the tick evaluates the rule and fires the alert
    assert harness.engine.evaluations == 4
    assert list(harness.states().values()) == ["firing"]
    for _ in range(3):  # firing, and its value stands still: time alone moves nothing
        harness.advance(1)
    assert harness.engine.evaluations == 4


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
    harness.advance(1)  # resolved, below the threshold: nothing moves until the retention is over
    assert harness.engine.evaluations == n
    harness.advance(RESOLVED_RETENTION)  # then the tick evaluates the rule, which forgets the alert
    assert harness.engine.evaluations == n + 1
    assert harness.states() == {}
    harness.advance(1)
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


@pytest.mark.parametrize("harness", [increase_rule("NoProgress", "test_blocks_total", "<", 1)], indirect=True)
def test_a_window_rule_fires_on_a_tick_when_the_increase_leaves_its_window_with_unchanged_series(
    harness: Harness,
) -> None:
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




@pytest.mark.parametrize("harness", [increase_rule("Kills", "test_kills_total", ">", 0)], indirect=True)
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


@pytest.mark.parametrize("harness", [increase_rule("Kills", "test_kills_total", ">", -1)], indirect=True)
def test_an_increase_above_a_negative_bound_fires_on_the_tick_after_the_second_point(harness: Harness) -> None:
    # One point has no increase; the second point of the same value makes it 0, which is > -1. The same
    # series again is no change, so the tick evaluates it.
    harness.put(counter("test_kills", {"a": 2.0}))
    assert harness.states() == {}
    harness.advance(1)
    harness.put(counter("test_kills", {"a": 2.0}))
    harness.advance(1)
    assert list(harness.states().values()) == ["firing"]


@pytest.mark.parametrize("harness", [increase_rule("Kills", "test_kills_total", ">", 0)], indirect=True)
def test_a_counter_that_went_negative_raises_nothing(harness: Harness) -> None:
    harness.put(counter("test_kills", {"a": 5.0}))
    harness.advance(1)
    harness.put(counter("test_kills", {"a": -3.0}))  # counted as a reset to -3: the increase is negative
    harness.advance(1)
    assert harness.states() == {}


@pytest.mark.looptime(start=12.3)
async def test_the_tick_is_on_the_loop_clock_grid_of_its_interval(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    harness = Harness(tmp_path, BASE, clock=LoopClock(1_700_000_000.0))
    ticks: list[float] = []
    tick = harness.engine.tick

    def recording(keep_fresh: bool = False) -> None:
        ticks.append(loop.time())
        tick(keep_fresh)

    harness.engine.tick = recording  # type: ignore[method-assign]
    await harness.engine.start()
    try:
        await asyncio.sleep(0.5)
        harness.store.put(("test", "default"), [gauge("test_ratio", 0.95)], 3600.0)  # pending from 12.8
        await asyncio.sleep(3.0)
        # the first tick, and the one due when `for` (2 s) has passed, at 14.8: each on the 1 s grid,
        # where runs of the same grid wake too
        assert ticks == pytest.approx([13.0, 15.0], abs=1e-9)
        assert list(harness.states().values()) == ["firing"]
    finally:
        await harness.engine.stop()
        harness.close()


def _kills(harness: Harness) -> int:
    return sum(1 for n in harness.engine.alerts["Kills"].values() if n.state == "firing")


@pytest.mark.parametrize("harness", [increase_rule("Kills", "test_kills_total", ">", 0)], indirect=True)
def test_a_window_rule_is_evaluated_by_the_tick_only_at_its_windows_edges(harness: Harness) -> None:
    harness.advance(1)  # the first tick after the (zero) startup grace evaluates both rules
    n = harness.engine.evaluations
    for _ in range(3):  # no series of its counter: nothing for its window to age
        harness.advance(1)
    assert harness.engine.evaluations == n
    harness.put(counter("test_kills", {"a": 2.0}))  # t0: a new series, one point, no increase yet
    assert harness.engine.evaluations == n + 1
    harness.advance(1)
    assert harness.engine.evaluations == n + 1
    harness.put(counter("test_kills", {"a": 2.0}))  # t0 + 1: the same value, but now it has an increase (0)
    assert harness.engine.evaluations == n + 2
    for _ in range(9):  # nothing leaves the 10 s window before t0 + 11
        harness.advance(1)
    assert harness.engine.evaluations == n + 2
    harness.advance(1)  # t0 + 11: the point of t0 + 1 is the baseline, the series leaves the selection
    assert harness.engine.evaluations == n + 3
    for _ in range(5):  # a single point: no edge left
        harness.advance(1)
    assert harness.engine.evaluations == n + 3
    harness.put(counter("test_kills", {"a": 3.0}))  # t0 + 16: a kill, at once
    assert harness.engine.evaluations == n + 4
    assert _kills(harness) == 1
    harness.advance(9)
    assert _kills(harness) == 1
    assert harness.engine.evaluations == n + 4
    harness.advance(1)  # t0 + 26: the kill left the window: the tick at its edge resolves it
    assert harness.engine.evaluations == n + 5
    assert _kills(harness) == 0


ABSENT_GRACE = """
  default_rules: false
  host: mev-host-1
  group_wait: 0s
  startup_grace: 5s
  rules:
    - name: EngineGone
      metric: test_engine_up
      absent: true
      for: 2s
      summary: s
      runbook: memory-high
"""


def test_absent_over_a_metric_that_never_came_fires_after_the_startup_grace_on_ticks_alone(tmp_path: Path) -> None:
    harness = Harness(tmp_path, ABSENT_GRACE)
    try:
        for _ in range(4):  # in the grace: the collectors' first runs may still come
            harness.advance(1)
        assert harness.states() == {}
        harness.advance(1)  # the grace is over: the first tick after it evaluates every rule
        assert list(harness.states().values()) == ["pending"]
        harness.advance(1)
        assert list(harness.states().values()) == ["pending"]
        harness.advance(1)  # no snapshot came: only the tick moves it to firing after `for`
        assert list(harness.states().values()) == ["firing"]
    finally:
        harness.close()


KEEP_FIRING = RATIO_HIGH_RULE.replace("RatioHigh", "RatioHeld").replace("for: 2s", "for: 0s\n      keep_firing_for: 5s")


@pytest.mark.parametrize("harness", [KEEP_FIRING], indirect=True)
def test_keep_firing_for_runs_from_the_last_tick_that_saw_the_condition_hold(harness: Harness) -> None:
    def held() -> list[str]:
        return [v for k, v in harness.states().items() if k.startswith("RatioHeld")]

    harness.put(gauge("test_ratio", 0.95))
    assert held() == ["firing"]
    for _ in range(60):  # the value stands still for a minute: only the ticks see the condition hold
        harness.advance(1)
    harness.put(gauge("test_ratio", 0.5))
    for _ in range(4):
        harness.advance(1)
        assert held() == ["firing"]
    harness.advance(1)  # 5 s after the last tick on which it held, on a tick with no new snapshot
    assert held() == ["resolved"]


# --- `for` counts from the collection's sample time ------------------------------------------


def _ratio_high(harness: Harness) -> list[Alert]:
    return [a for a in harness.engine.all_alerts() if a.rule == "RatioHigh"]


def test_for_counts_from_the_sample_time_of_the_collection_that_first_matched(harness: Harness) -> None:
    # A run at its slot lands a few ms later; the tick is on the same grid as the slots. Counted from when
    # the engine took the snapshot in, `for` (2 s) would run out just after the tick at slot + 2, and the
    # alert fire a tick later; counted from the slot, it fires on that tick.
    slot = harness.clock.t
    harness.clock.t = slot + 0.004
    harness.put(gauge("test_ratio", 0.95), interval=1.0, sampled_at=slot)
    [alert] = _ratio_high(harness)
    assert (alert.state, alert.active_at, alert.last_match_at) == ("pending", slot, slot)
    harness.clock.t = slot + 1.0
    harness.engine.tick()
    harness.clock.t = slot + 1.004
    harness.put(gauge("test_ratio", 0.95), interval=1.0, sampled_at=slot + 1.0)  # the same value: no change
    assert alert.state == "pending"
    harness.clock.t = slot + 2.0
    harness.engine.tick()
    assert (alert.state, alert.fired_at) == ("firing", slot + 2.0)
    [note] = harness.notifications()
    assert note["alerts"][0]["startsAt"] == rfc3339(slot + 2.0)


def test_a_collection_that_moves_the_state_stamps_it_with_its_sample_time(harness: Harness) -> None:
    slot = harness.clock.t
    harness.clock.t = slot + 0.004
    harness.put(gauge("test_ratio", 0.95), interval=1.0, sampled_at=slot)
    harness.clock.t = slot + 2.004  # the run at slot + 2 changed the value: it fires the alert, as of its slot
    harness.put(gauge("test_ratio", 0.96), interval=1.0, sampled_at=slot + 2.0)
    [alert] = _ratio_high(harness)
    assert (alert.state, alert.active_at, alert.fired_at) == ("firing", slot, slot + 2.0)
    harness.clock.t = slot + 3.004  # the run at slot + 3 no longer matches: resolved as of that run
    harness.put(gauge("test_ratio", 0.5), interval=1.0, sampled_at=slot + 3.0)
    assert (alert.state, alert.resolved_at) == ("resolved", slot + 3.0)


def test_a_collection_older_than_its_interval_counts_from_when_the_engine_took_it_in(harness: Harness) -> None:
    # its run (or the hand-over) was late: how long the condition held before the engine saw it is not known,
    # and counting from the run's slot could page on one look at the host
    now = harness.clock.t
    harness.put(gauge("test_ratio", 0.95), interval=1.0, sampled_at=now - 1.5)
    [alert] = _ratio_high(harness)
    assert alert.active_at == now
    harness.advance(1)
    assert alert.state == "pending"
    harness.advance(1)
    assert (alert.state, alert.fired_at) == ("firing", now + 2.0)


def test_a_sample_time_in_the_future_is_not_trusted(harness: Harness) -> None:
    # a stepped clock: counting from a time to come would page late (or, for a time far ahead, never)
    now = harness.clock.t
    harness.put(gauge("test_ratio", 0.95), interval=1.0, sampled_at=now + 30.0)
    [alert] = _ratio_high(harness)
    assert (alert.active_at, alert.last_match_at) == (now, now)
    harness.advance(2)
    assert (alert.state, alert.fired_at) == ("firing", now + 2.0)


def test_a_resolution_is_never_stamped_before_the_firing(harness: Harness) -> None:
    # the tick at slot + 2 fires the alert on the run at slot; the run at slot + 2, landing just after
    # the tick, no longer matches: resolved, but not before it fired
    slot = harness.clock.t
    harness.put(gauge("test_ratio", 0.95), interval=1.0, sampled_at=slot)
    harness.clock.t = slot + 2.001
    harness.engine.tick()
    [alert] = _ratio_high(harness)
    assert (alert.state, alert.fired_at) == ("firing", slot + 2.001)
    harness.clock.t = slot + 2.004
    harness.put(gauge("test_ratio", 0.5), interval=1.0, sampled_at=slot + 2.0)
    assert (alert.state, alert.resolved_at) == ("resolved", slot + 2.001)
