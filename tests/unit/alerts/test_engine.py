"""The rule state machine in the engine: for, hysteresis, keep_firing_for, increase, absent, quantile, restart."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from mevwatch.alerts.history import History
from mevwatch.alerts.rules import histogram_quantile, increase
from mevwatch.families import HistogramMetricFamily
from tests.unit.alerts._helpers import Harness, counter, gauge

BASE = """
  default_rules: false
  host: mev-host-1
  runbook_url: https://runbooks.example/mevwatch
  group_wait: 0s
  group_interval: 1s
  startup_grace: 0s
"""


@pytest.fixture
def harness(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Harness]:
    h = Harness(tmp_path, BASE + request.param)
    yield h
    h.close()


def rule(extra: str, name: str = "MemoryHigh", metric: str = "test_ratio") -> str:
    return f"""
  rules:
    - name: {name}
      metric: {metric}
      summary: "{{{{ $labels.host }}}}: {{{{ $value | humanizePercentage }}}}"
      runbook: memory-high
""" + "".join(f"      {line}\n" for line in extra.strip().splitlines())


@pytest.mark.parametrize("harness", [rule("op: '>'\nthreshold: 0.9\nfor: 10s")], indirect=True)
def test_pending_then_firing_after_for_and_pending_dropped_silently(harness: Harness) -> None:
    harness.put(gauge("test_ratio", 0.95))
    assert list(harness.states().values()) == ["pending"]
    harness.advance(5)
    harness.put(gauge("test_ratio", 0.5))  # stops matching while pending: dropped, never notified
    assert harness.states() == {}
    assert harness.db.query("SELECT COUNT(*) FROM alert_state") == [(0,)]
    harness.put(gauge("test_ratio", 0.95))
    harness.advance(9)
    assert list(harness.states().values()) == ["pending"]
    harness.advance(1)
    assert list(harness.states().values()) == ["firing"]
    [note] = harness.notifications()
    [alert] = note["alerts"]
    assert alert["labels"] == {"alertname": "MemoryHigh", "severity": "warning", "host": "mev-host-1"}
    assert alert["annotations"]["summary"] == "mev-host-1: 95%"
    assert alert["annotations"]["runbook_url"] == "https://runbooks.example/mevwatch#memory-high"
    assert note["version"] == "4"
    assert note["status"] == "firing"


@pytest.mark.parametrize("harness", [rule("op: '>'\nthreshold: 0.9\nclear: 0.8\nfor: 2s")], indirect=True)
def test_flapping_around_threshold_with_clear_and_for_notifies_at_most_once(harness: Harness) -> None:
    for i in range(40):
        harness.put(gauge("test_ratio", 0.91 if i % 2 else 0.89))
        harness.advance(0.5)
    notes = harness.notifications()
    assert len(notes) == 1
    assert notes[0]["status"] == "firing"
    harness.put(gauge("test_ratio", 0.79))  # below clear: resolves
    harness.advance(1)
    assert [n["status"] for n in harness.notifications()] == ["firing", "resolved"]


@pytest.mark.parametrize("harness", [rule("op: '>'\nthreshold: 0.9\nfor: 2s")], indirect=True)
def test_flapping_without_clear_never_outlasts_for(harness: Harness) -> None:
    for i in range(40):
        harness.put(gauge("test_ratio", 0.91 if i % 2 else 0.89))
        harness.advance(0.5)
    assert harness.notifications() == []


@pytest.mark.parametrize("harness", [rule("op: '>'\nthreshold: 0.9\nkeep_firing_for: 30s")], indirect=True)
def test_keep_firing_for_holds_the_alert_after_the_condition_stops(harness: Harness) -> None:
    harness.put(gauge("test_ratio", 0.95))
    assert list(harness.states().values()) == ["firing"]
    harness.advance(1)
    harness.put(gauge("test_ratio", 0.1))
    harness.advance(20)
    assert list(harness.states().values()) == ["firing"]
    harness.put(gauge("test_ratio", 0.95))  # matches again: the hold restarts
    harness.advance(25)
    harness.put(gauge("test_ratio", 0.1))
    harness.advance(29)
    assert list(harness.states().values()) == ["firing"]
    harness.advance(2)
    assert list(harness.states().values()) == ["resolved"]


@pytest.mark.parametrize(
    "harness", [rule("increase: 10m\nop: '>'\nthreshold: 0", name="OomKill", metric="oom_kills_total")],
    indirect=True,
)
def test_a_new_counter_series_on_a_reporting_collector_counts_from_zero(harness: Harness) -> None:
    harness.put(counter("oom_kills", {}))
    harness.advance(1)
    harness.put(counter("oom_kills", {"erigon": 1}))  # the first kill creates the series at 1
    [note] = harness.notifications()
    assert note["alerts"][0]["labels"]["comm"] == "erigon"
    assert note["alerts"][0]["value"] == 1
    harness.advance(601)
    harness.put(counter("oom_kills", {"erigon": 1}))
    assert [n["status"] for n in harness.notifications()] == ["firing", "resolved"]


@pytest.mark.parametrize(
    "harness", [rule("increase: 10m\nop: '>'\nthreshold: 0", name="OomKill", metric="oom_kills_total")],
    indirect=True,
)
def test_a_counter_seen_first_at_start_is_not_an_increase(harness: Harness) -> None:
    harness.put(counter("oom_kills", {"erigon": 7}))
    harness.advance(1)
    harness.put(counter("oom_kills", {"erigon": 7}))
    assert harness.notifications() == []


@pytest.mark.parametrize(
    "harness", [rule("rate: 10s\nop: '>'\nthreshold: 2", name="Errors", metric="errors_total")], indirect=True
)
def test_rate_over_a_window(harness: Harness) -> None:
    for i in range(12):
        harness.put(counter("errors", {"x": float(i)}))  # 1/s
        harness.advance(1)
    assert harness.states() == {}
    v = 12.0
    for _ in range(12):
        v += 3
        harness.put(counter("errors", {"x": v}))  # 3/s
        harness.advance(1)
    assert list(harness.states().values()) == ["firing"]


@pytest.mark.parametrize(
    "harness", [rule("absent: true\nmatchers: ['unit=\"mev-engine\"']", name="EngineMetricsAbsent",
                     metric="svc_up")],
    indirect=True,
)
def test_absent_fires_for_a_dead_collector_and_resolves_when_data_returns(harness: Harness) -> None:
    harness.put(gauge("svc_up", 1, unit="mev-engine"), key=("services", "default"), interval=0.05)
    harness.advance(1)
    assert harness.states() == {}
    import time

    time.sleep(0.15)  # the snapshot is now older than 2x its interval: the store drops it
    harness.advance(1)
    [(_, state)] = harness.states().items()
    assert state == "firing"
    [note] = harness.notifications()
    assert note["alerts"][0]["labels"]["unit"] == "mev-engine"
    harness.put(gauge("svc_up", 1, unit="mev-engine"), key=("services", "default"))
    harness.advance(2)
    assert [n["status"] for n in harness.notifications()] == ["firing", "resolved"]


def _hist(counts: dict[str, float], total: float) -> HistogramMetricFamily:
    fam = HistogramMetricFamily("lat_seconds", "latency", labels=["target"])
    fam.add_metric(["engine"], buckets=list(counts.items()), sum_value=total)
    return fam


@pytest.mark.parametrize(
    "harness", [rule("quantile: 0.99\nrate: 60s\nop: '>'\nthreshold: 0.015", name="EngineLatencyHigh",
                     metric="lat_seconds")],
    indirect=True,
)
def test_histogram_quantile_over_a_window(harness: Harness) -> None:
    harness.put(_hist({"0.005": 100, "0.01": 100, "0.025": 100, "+Inf": 100}, 1))
    harness.advance(1)
    harness.put(_hist({"0.005": 200, "0.01": 200, "0.025": 200, "+Inf": 200}, 2))  # all fast
    assert harness.states() == {}
    harness.advance(1)
    harness.put(_hist({"0.005": 200, "0.01": 210, "0.025": 300, "+Inf": 300}, 5))  # slow ones now
    [note] = harness.notifications()
    assert 0.015 < note["alerts"][0]["value"] <= 0.025
    assert note["alerts"][0]["labels"]["target"] == "engine"


@pytest.mark.parametrize(
    "harness", [rule("quantile: 0.75\nrate: 5m\nop: '>'\nthreshold: 10", name="EngineLatencyHigh",
                     metric="lat_seconds")],
    indirect=True,
)
def test_a_quantile_over_a_window_equals_one_computed_from_every_raw_point(harness: Harness) -> None:
    """Reference: each bucket's increase() over all the raw points it was put with, then histogram_quantile."""
    rng = random.Random(7)
    les = ("0.005", "0.01", "0.05", "0.1", "+Inf")
    counts = {"a": [0.0] * len(les), "b": [0.0] * len(les)}
    raw: dict[tuple[str, str], list[tuple[float, float]]] = {}
    prev = None
    compared = 0
    evaluated_earlier = 0
    distinct: set[float] = set()
    for i in range(700):
        harness.clock.t += rng.choice((0.97, 1.0, 1.04))
        now = harness.clock.t
        if i == 200:  # a series appearing on a collector already reporting started at 0, as a counter does
            counts["c"] = [0.0] * len(les)
            for le in les:
                raw[("c", le)] = [(prev, 0.0)] if prev is not None else []
        if i == 400:
            counts["a"] = [0.0] * len(les)  # its process restarted: a reset
        if i == 500:
            del counts["b"]  # gone: no longer evaluated
        for cs in counts.values():
            for _ in range(rng.choice((0, 1, 1, 3))):
                slot = rng.choice((0, 1, 1, 2, 2, 2, 3, 4))  # mostly under the highest bound: interpolated
                cs[slot:] = [c + 1 for c in cs[slot:]]
        fam = HistogramMetricFamily("lat_seconds", "latency", labels=["target"])
        for target, cs in counts.items():
            fam.add_metric([target], buckets=list(zip(les, cs, strict=True)), sum_value=0.0)
            for le, c in zip(les, cs, strict=True):
                raw.setdefault((target, le), []).append((now, c))
        harness.put(fam)
        harness.advance(0.0)  # the tick evaluates a windowed rule whose inputs did not change at its window's edges
        prev = now
        want = {}
        for target in counts:
            incs = [increase(raw[(target, le)], 300.0, now) for le in les]
            if None in incs:
                continue
            q = histogram_quantile(0.75, [(float(le), inc or 0.0) for le, inc in zip(les, incs, strict=True)])
            if not math.isnan(q):
                want[(("target", target),)] = q
                distinct.add(q)
        # evaluated now or, when neither an input changed nor a point left the window since, earlier, to the
        # same values
        at, got = harness.engine.last_values["EngineLatencyHigh"]
        assert at <= now
        evaluated_earlier += at < now
        assert got == want, i
        compared += len(want)
    assert compared > 1500
    assert evaluated_earlier > 10  # rounds with no new count in any series: the rule was not evaluated again
    assert len(distinct) > 100  # the quantile moved with every window, not stuck at a bucket's bound


@pytest.mark.parametrize("harness", [rule("op: '>'\nthreshold: 0.9")], indirect=True)
def test_restart_neither_repages_nor_forgets(harness: Harness) -> None:
    harness.put(gauge("test_ratio", 0.95))
    assert len(harness.notifications()) == 1
    harness.restart()
    assert list(harness.states().values()) == ["firing"]
    harness.put(gauge("test_ratio", 0.96))
    harness.advance(5)
    assert len(harness.notifications()) == 1  # no re-page after the restart
    harness.put(gauge("test_ratio", 0.5))
    harness.advance(2)
    assert [n["status"] for n in harness.notifications()] == ["firing", "resolved"]


def test_restored_alert_is_not_resolved_before_its_collector_reports(tmp_path: Path) -> None:
    harness = Harness(tmp_path, BASE.replace("startup_grace: 0s", "startup_grace: 60s") + rule("threshold: 0.9"))
    harness.put(gauge("test_ratio", 0.95))
    harness.restart()
    harness.advance(30)  # no data yet after the restart: still firing, nothing sent
    assert list(harness.states().values()) == ["firing"]
    assert len(harness.notifications()) == 1
    harness.advance(31)  # grace over and still no data: the series is gone, the alert resolves
    assert [n["status"] for n in harness.notifications()] == ["firing", "resolved"]
    harness.close()


def test_increase_counts_resets_and_needs_two_points() -> None:
    assert increase([(0, 5)], 60, 10) is None
    assert increase([(0, 5), (10, 8)], 60, 10) == 3
    assert increase([(0, 5), (10, 8), (20, 2)], 60, 20) == 5  # reset: 8 -> 2 counts 2
    # baseline is the last point at or before the window start
    assert increase([(0, 1), (50, 4), (100, 10)], 60, 100) == 9
    assert increase([(0, 1), (50, 4), (100, 10)], 40, 100) == 6
    h = History()
    for t in range(100):
        h.add(float(t), float(t), keep=10)
    assert len(h.points) <= 12
    assert h.points[0][0] <= 89


def test_histogram_quantile_matches_prometheus() -> None:
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.9, buckets) == pytest.approx(0.5)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.75)
    assert math.isnan(histogram_quantile(0.5, [(math.inf, 0.0)]))
    assert math.isnan(histogram_quantile(0.5, [(0.1, 3.0)]))  # no +Inf bucket


def test_an_upgrade_that_merges_a_label_continues_the_firing_alert_without_a_resolved_page(tmp_path: Path) -> None:
    # NodeDown fired on a series with a reason label; the upgraded rule merges it (`without: [reason]`), so the
    # restored alert's labels are no series' any more: it continues as the merged series, its times kept
    before = rule("op: '=='\nthreshold: 1\nfor: 0s", name="NodeDown", metric="t_down")
    harness = Harness(tmp_path, BASE.replace("startup_grace: 0s", "startup_grace: 30s") + before)
    harness.advance(31)
    harness.put(gauge("t_down", 1, endpoint="erigon", reason="refused"))
    [old] = harness.engine.all_alerts()
    assert old.state == "firing"
    assert old.labels["reason"] == "refused"
    assert [n["status"] for n in harness.notifications()] == ["firing"]
    fired_at = old.fired_at
    harness.yaml = BASE.replace("startup_grace: 0s", "startup_grace: 30s") + before + "      without: [reason]\n"
    harness.restart()
    harness.put(gauge("t_down", 1, endpoint="erigon", reason="timeout"))
    harness.advance(31)  # past the grace: a restored alert no series confirmed would resolve now
    harness.advance(120)
    [alert] = harness.engine.all_alerts()
    assert alert.state == "firing"
    assert "reason" not in alert.labels
    assert alert.fired_at == fired_at
    assert [n["status"] for n in harness.notifications()] == ["firing"]  # no resolved page, no second page
    harness.restart()  # and it is in the state DB under its new identity
    assert [(a.fingerprint, a.state) for a in harness.engine.all_alerts()] == [(alert.fingerprint, "firing")]
    harness.close()
