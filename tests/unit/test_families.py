"""mevwatch.families builds the same families as prometheus_client 0.26, without importing it."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import prometheus_client.metrics_core as pc
import pytest
from prometheus_client.samples import Sample as PcSample
from prometheus_client.samples import Timestamp as PcTimestamp
from prometheus_client.utils import floatToGoString

from mevwatch import families
from mevwatch.families import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    Sample,
    Timestamp,
    float_to_go_string,
)

Build = Callable[[Any], Any]  # called with the module providing the family classes

CASES: dict[str, Build] = {
    "gauge value": lambda m: m.GaugeMetricFamily("t_g", "G", value=1.5),
    "gauge labels": lambda m: _add(m.GaugeMetricFamily("t_g", "G", labels=["a", "b"]), (["x", "y"], 2.0)),
    "gauge unit": lambda m: m.GaugeMetricFamily("t_size", "S", value=3.0, unit="bytes"),
    "gauge unit already in name": lambda m: m.GaugeMetricFamily("t_size_bytes", "S", value=3.0, unit="bytes"),
    "gauge timestamp": lambda m: _add(m.GaugeMetricFamily("t_g", "G", labels=["a"]), (["x"], 1.0, 1700.5)),
    "gauge short labels": lambda m: _add(m.GaugeMetricFamily("t_g", "G", labels=["a", "b"]), (["x"], 1.0)),
    "counter value": lambda m: m.CounterMetricFamily("t_c", "C", value=4.0),
    "counter _total stripped": lambda m: m.CounterMetricFamily("t_c_total", "C", value=4.0),
    "counter created": lambda m: m.CounterMetricFamily("t_c_total", "C", value=4.0, created=1600.25),
    "counter labels created": lambda m: _add(
        m.CounterMetricFamily("t_c", "C", labels=["k"]), (["a"], 1.0, 1600.0), (["b"], 2.0, None, 1700.0)
    ),
    "counter unit": lambda m: m.CounterMetricFamily("t_busy_total", "B", value=1.0, unit="seconds"),
    "info value": lambda m: m.InfoMetricFamily("t_build", "B", value={"version": "1", "py": "3.11"}),
    "info labels": lambda m: _add(m.InfoMetricFamily("t_peer", "P", labels=["peer"]), (["p1"], {"client": "geth"})),
    "histogram buckets": lambda m: m.HistogramMetricFamily(
        "t_h", "H", buckets=[("0.1", 1.0), ("1.0", 2.0), ("+Inf", 3.0)], sum_value=1.25
    ),
    "histogram no sum": lambda m: m.HistogramMetricFamily("t_h", "H", buckets=[("1.0", 2.0), ("+Inf", 3.0)]),
    "histogram negative buckets": lambda m: m.HistogramMetricFamily(
        "t_h", "H", buckets=[("-1.0", 1.0), ("+Inf", 3.0)], sum_value=-2.0
    ),
    "histogram labels": lambda m: _add(
        m.HistogramMetricFamily("t_h", "H", labels=["target"], unit="seconds"),
        (["a"], [("0.5", 1.0), ("+Inf", 1.0)], 0.2),
        (["b"], [("0.5", 0.0), ("+Inf", 0.0)], 0.0, 1700.0),
    ),
    "metric untyped": lambda m: m.Metric("t_u", "U", "untyped"),
    "metric with unit": lambda m: m.Metric("t_m", "M", "gauge", "ratio"),
}


def _add(fam: Any, *calls: tuple[Any, ...]) -> Any:
    for args in calls:
        fam.add_metric(*args)
    return fam


def _shape(fam: Any) -> tuple[Any, ...]:
    return fam.name, fam.documentation, fam.type, fam.unit, [tuple(s) for s in fam.samples]


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_family_is_built_as_prometheus_client_builds_it(case: str) -> None:
    ours, theirs = CASES[case](families), CASES[case](pc)
    assert _shape(ours) == _shape(theirs)
    assert repr(ours) == repr(theirs)
    assert type(ours).__name__ == type(theirs).__name__


def test_samples_have_prometheus_clients_fields() -> None:
    assert Sample._fields == PcSample._fields
    assert tuple(Sample("n", {}, 1.0)) == tuple(PcSample("n", {}, 1.0))


def test_a_counter_keeps_created_per_series() -> None:
    fam = CounterMetricFamily("test_jobs_total", "Jobs", labels=["queue"])
    fam.add_metric(["a"], 3.0, created=100.0)
    fam.add_metric(["b"], 1.0)
    assert fam.name == "test_jobs"
    assert [(s.name, s.labels, s.value) for s in fam.samples] == [
        ("test_jobs_total", {"queue": "a"}, 3.0),
        ("test_jobs_created", {"queue": "a"}, 100.0),
        ("test_jobs_total", {"queue": "b"}, 1.0),
    ]
    # Each sample has its own label dict: changing one leaves the other alone.
    fam.samples[0].labels["queue"] = "changed"
    assert fam.samples[1].labels == {"queue": "a"}


@pytest.mark.parametrize(
    "build",
    [
        lambda: GaugeMetricFamily("t_g", "G", value=1.0, labels=["a"]),
        lambda: CounterMetricFamily("t_c", "C", value=1.0, labels=["a"]),
        lambda: InfoMetricFamily("t_i", "I", value={"a": "b"}, labels=["a"]),
        lambda: HistogramMetricFamily("t_h", "H", buckets=[("+Inf", 1.0)], labels=["a"]),
        lambda: HistogramMetricFamily("t_h", "H", sum_value=1.0),
        lambda: Metric("t_m", "M", "counterish"),
    ],
)
def test_contradictory_arguments_raise_value_error(build: Callable[[], Metric]) -> None:
    with pytest.raises(ValueError, match=r"specify at most one|without buckets|Invalid metric type"):
        build()


@pytest.mark.parametrize(
    "name", ["", "1leading_digit", "has-dash", "has.dot", "has space", "ünïcode", "trailing_newline\n", "a{b}"]
)
def test_an_invalid_metric_name_raises_value_error(name: str) -> None:
    builds: list[Callable[[], Metric]] = [
        lambda: GaugeMetricFamily(name, "G", value=1.0),
        lambda: CounterMetricFamily(name, "C"),
        lambda: InfoMetricFamily(name, "I"),
        lambda: HistogramMetricFamily(name, "H"),
        lambda: Metric(name, "M", "gauge"),
    ]
    for build in builds:
        with pytest.raises(ValueError, match="metric name"):
            build()


def test_an_invalid_unit_makes_an_invalid_name() -> None:
    with pytest.raises(ValueError, match="metric name"):
        GaugeMetricFamily("test_size", "S", unit="k-bytes")


def test_valid_names_are_accepted() -> None:
    for name in ("a", "_a", ":a", "test:recorded_rule", "A9_z", "mevwatch_collector_success"):
        assert GaugeMetricFamily(name, "G").name == name


def test_a_name_is_matched_once_then_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = families.METRIC_NAME_RE

    class Counting:
        def fullmatch(self, name: str) -> object:
            calls.append(name)
            return real.fullmatch(name)

    monkeypatch.setattr(families, "METRIC_NAME_RE", Counting())
    monkeypatch.setattr(families, "_valid_names", set())
    for _ in range(3):
        GaugeMetricFamily("test_remembered", "R", value=1.0)
        CounterMetricFamily("test_remembered_total", "R", value=1.0)  # family name test_remembered as well
    with pytest.raises(ValueError, match="invalid"):
        GaugeMetricFamily("test-invalid", "R")
    with pytest.raises(ValueError, match="invalid"):
        GaugeMetricFamily("test-invalid", "R")  # an invalid name is not remembered as valid
    assert calls == ["test_remembered", "test-invalid", "test-invalid"]


def test_families_have_slots() -> None:
    fam = GaugeMetricFamily("test_slots", "S", value=1.0)
    with pytest.raises(AttributeError):
        fam.extra = 1  # type: ignore[attr-defined]
    assert not hasattr(fam, "__dict__")


def test_equality_is_by_value() -> None:
    a = GaugeMetricFamily("test_eq", "E", value=1.0)
    b = GaugeMetricFamily("test_eq", "E", value=1.0)
    c = GaugeMetricFamily("test_eq", "E", value=2.0)
    assert a == b
    assert a != c
    assert a != pc.GaugeMetricFamily("test_eq", "E", value=1.0)  # as prometheus_client: only its own class


def test_add_sample_appends_a_sample() -> None:
    m = Metric("test_raw", "R", "summary")
    m.add_sample("test_raw_count", {"a": "b"}, 3, timestamp=12.5)
    assert m.samples == [Sample("test_raw_count", {"a": "b"}, 3, 12.5)]


@pytest.mark.parametrize(
    "value",
    [0.0, -0.0, 1.0, 0.5, 1e-9, 1e-300, 123456.0, 1234567.0, 123456789012.0, 1e16, 1e300, -1234567.5, -1e20,
     math.inf, -math.inf, math.nan, 7, True, 2**63],
)  # fmt: skip
def test_float_formatting_is_prometheus_clients(value: float) -> None:
    assert float_to_go_string(value) == floatToGoString(value)  # type: ignore[no-untyped-call]


def test_timestamps_are_prometheus_clients() -> None:
    for sec, nsec in ((1_700_000_000, 5), (0, 0), (-3, 250_000_000), (1.9, 999_999_999)):
        ours, theirs = Timestamp(sec, nsec), PcTimestamp(sec, nsec)
        assert (str(ours), repr(ours), float(ours)) == (str(theirs), repr(theirs), float(theirs))
    assert Timestamp(1, 2) == Timestamp(1, 2)
    assert Timestamp(1, 2) < Timestamp(1, 3) < Timestamp(2, 0)
    assert Timestamp(2, 0) > Timestamp(1, 999)
    with pytest.raises(ValueError, match="nanoseconds"):
        Timestamp(1, 1e9)


def test_the_daemon_runs_without_prometheus_client() -> None:
    code = (
        "import mevwatch.daemon.cli, mevwatch.daemon.runtime, mevwatch.daemon.supervisor, "
        "mevwatch.collectors.process, sys; assert 'prometheus_client' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
