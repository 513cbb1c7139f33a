"""render_text writes exactly what prometheus_client's generate_latest writes, for every family shape."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.samples import Sample, Timestamp

from mevwatch.collectors.base import CollectorContext, get_kind
from mevwatch.daemon.blocking import BlockingPool
from mevwatch.daemon.exposition import render_text


class _View:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def reference(families: Iterable[Metric]) -> bytes:
    return generate_latest(_View(families))


def _shapes() -> list[Metric]:
    gauge = GaugeMetricFamily("test_ratio", 'Help with \\ backslash,\nnewline and "quotes"', labels=["path", "mode"])
    gauge.add_metric(['/data/"quoted"\\dir\nx', "rw"], 0.5)
    gauge.add_metric(["/ünïcode", "ro"], math.nan)
    gauge.add_metric(["/inf", "ro"], math.inf)
    gauge.add_metric(["/-inf", "ro"], -math.inf)
    gauge.add_metric(["/big", "ro"], 123456789012.0)
    gauge.add_metric(["/small", "ro"], 1e-9)
    gauge.add_metric(["/neg", "ro"], -1234567.5)
    gauge.add_metric(["/ts", "ro"], 1.0, timestamp=1_700_000_000.123)
    counter = CounterMetricFamily("test_events", "Events", labels=["kind"], created=1_600_000_000.5)
    counter.add_metric(["a"], 3.0, created=1_600_000_001.0)
    counter.add_metric(["b"], 0.0, timestamp=Timestamp(1_700_000_000, 500_000_000))
    hist = HistogramMetricFamily(
        "test_latency_seconds", "Latency", buckets=[("0.1", 1.0), ("1.0", 3.0), ("+Inf", 4.0)], sum_value=2.5
    )
    ghist = GaugeHistogramMetricFamily("test_queue", "Queue", buckets=[("1.0", 2.0), ("+Inf", 5.0)], gsum_value=7.0)
    summary = SummaryMetricFamily("test_call_seconds", "Calls", labels=["m"])
    summary.add_metric(["get"], count_value=10, sum_value=1.5)
    info = InfoMetricFamily("test_build", "Build", value={"version": "1.2.3", "python": "3.11.7"})
    states = StateSetMetricFamily("test_state", "State", value={"up": True, "down": False})
    unknown = UnknownMetricFamily("test_unknown", "Unknown", value=42.0)
    odd = Metric("test.dotted:name", "Dotted", "gauge")
    odd.samples = [Sample("test.dotted:name", {"label.with-dash": "v"}, 1.0)]
    empty = GaugeMetricFamily("test_empty", "No samples", labels=["x"])
    nolabels = GaugeMetricFamily("test_plain", "Plain", value=7.0)
    return [gauge, counter, hist, ghist, summary, info, states, unknown, odd, empty, nolabels]


def test_every_family_shape_renders_as_prometheus_client_does() -> None:
    families = _shapes()
    assert render_text(families) == reference(families)
    # Second render: served from the remembered prefixes, still identical.
    assert render_text(families) == reference(families)


def test_the_same_series_with_a_new_value_renders_the_new_value() -> None:
    for v in (1.0, 2.0, 0.25):
        fam = GaugeMetricFamily("test_value", "V", labels=["a"])
        fam.add_metric(["x"], v)
        assert render_text([fam]) == reference([fam])


def test_labels_in_another_order_render_sorted() -> None:
    a = Metric("test_order", "O", "gauge")
    a.samples = [Sample("test_order", {"b": "2", "a": "1"}, 1.0), Sample("test_order", {"a": "1", "b": "3"}, 2.0)]
    assert render_text([a]) == reference([a])
    assert b'test_order{a="1",b="2"} 1.0\n' in render_text([a])


def test_no_families_is_empty() -> None:
    assert render_text([]) == reference([]) == b""


def test_a_non_string_label_value_fails_like_prometheus_client() -> None:
    bad = Metric("test_bad", "B", "gauge")
    bad.samples = [Sample("test_bad", {"a": 1}, 1.0)]  # type: ignore[dict-item]
    with pytest.raises(AttributeError):
        reference([bad])
    with pytest.raises(AttributeError):
        render_text([bad])


def test_the_host_collectors_families_render_identically() -> None:
    async def collect() -> list[Metric]:
        pool = BlockingPool(2)
        families: list[Metric] = []
        try:
            for kind in ("memory", "disk", "cpu", "process"):
                cls = get_kind(kind)
                assert cls is not None
                collector = cls(CollectorContext(kind, "t", 15.0, 10.0, pool=pool), cls.Options.model_validate({}))
                await collector.collect()  # type: ignore[attr-defined]
                families += list(await collector.collect())  # type: ignore[attr-defined]
        finally:
            pool.shutdown()
        return families

    families = asyncio.run(collect())
    assert len(families) > 20
    assert render_text(families) == reference(families)
