"""render_text and render_openmetrics write exactly what prometheus_client 0.26 writes, for every family shape."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics import exposition as om
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from mevwatch.blocking import BlockingPool
from mevwatch.collectors.base import CollectorContext
from mevwatch.collectors.registry import get_kind
from mevwatch.daemon import exposition
from mevwatch.daemon.exposition import render_openmetrics, render_text
from mevwatch.families import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    Sample,
    Timestamp,
)


class _View:
    """The registry shape prometheus_client's writers read families from."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Any]:
        return self.families


def reference(families: Iterable[Metric]) -> bytes:
    return generate_latest(_View(families))


def reference_openmetrics(families: Iterable[Metric]) -> bytes:
    """prometheus_client's OpenMetrics body, without its closing ``# EOF`` (render_openmetrics leaves it out)."""
    text: bytes = om.generate_latest(_View(families))  # type: ignore[no-untyped-call]
    assert text.endswith(b"# EOF\n")
    return text[: -len(b"# EOF\n")]


def _metric(name: str, documentation: str, typ: str, samples: list[Sample], unit: str = "") -> Metric:
    m = Metric(name, documentation, typ, unit)
    m.samples = samples
    return m


def _valid_shapes() -> list[Metric]:
    """Families both parsers accept back: every type, escaping, special floats, timestamps, units."""
    doc = 'Help with \\ backslash,\nnewline, "quotes" and ünïcode'
    gauge = GaugeMetricFamily("test_ratio", doc, labels=["path", "mode"])
    gauge.add_metric(['/data/"quoted"\\dir\nx', "rw"], 0.5)
    gauge.add_metric(["/ünïcode", "ro"], math.nan)
    gauge.add_metric(["/inf", "ro"], math.inf)
    gauge.add_metric(["/-inf", "ro"], -math.inf)
    gauge.add_metric(["/big", "ro"], 123456789012.0)
    gauge.add_metric(["/huge", "ro"], 1e300)
    gauge.add_metric(["/small", "ro"], 1e-9)
    gauge.add_metric(["/neg", "ro"], -1234567.5)
    gauge.add_metric(["/zero", "ro"], 0.0)
    gauge.add_metric(["/int", "ro"], 7)
    gauge.add_metric(["/ts", "ro"], 1.0, timestamp=1_700_000_000.123)
    gauge.add_metric(["/tsobj", "ro"], 2.0, timestamp=Timestamp(1_700_000_000, 5))
    counter = CounterMetricFamily("test_events", "Events", labels=["kind"])
    counter.add_metric(["a"], 3.0, created=1_600_000_001.0)
    counter.add_metric(["b"], 0.0, created=1_600_000_002.25, timestamp=Timestamp(1_700_000_000, 500_000_000))
    plain_counter = CounterMetricFamily("test_plain_events_total", "Plain events", value=12.0)
    created_counter = CounterMetricFamily("test_single", "Single", value=1.0, created=1_600_000_000.5)
    unit_gauge = GaugeMetricFamily("test_size", "Size", value=4096.0, unit="bytes")
    unit_counter = CounterMetricFamily("test_busy_seconds_total", "Busy", value=1.5, unit="seconds")
    hist = HistogramMetricFamily("test_latency_seconds", "Latency", labels=["target"])
    hist.add_metric(["a"], [("0.1", 1.0), ("1.0", 3.0), ("+Inf", 4.0)], sum_value=2.5)
    hist.add_metric(["b"], [("0.1", 0.0), ("1.0", 0.0), ("+Inf", 0.0)], sum_value=0.0)
    single_hist = HistogramMetricFamily("test_single_hist", "One", buckets=[("5.0", 1.0), ("+Inf", 2.0)], sum_value=6.0)
    ghist = _metric(
        "test_queue",
        "Queue",
        "gaugehistogram",
        [
            Sample("test_queue_bucket", {"le": "1.0"}, 2.0),
            Sample("test_queue_bucket", {"le": "+Inf"}, 5.0),
            Sample("test_queue_gcount", {}, 5.0),
            Sample("test_queue_gsum", {}, 7.0),
        ],
    )
    summary = _metric(
        "test_call_seconds",
        "Calls",
        "summary",
        [
            Sample("test_call_seconds", {"m": "get", "quantile": "0.5"}, 0.1),
            Sample("test_call_seconds", {"m": "get", "quantile": "0.99"}, 0.9),
            Sample("test_call_seconds_count", {"m": "get"}, 10),
            Sample("test_call_seconds_sum", {"m": "get"}, 1.5),
        ],
    )
    info = InfoMetricFamily("test_build", "Build", value={"version": "1.2.3", "python": "3.11.7"})
    labelled_info = InfoMetricFamily("test_peer", "Peer", labels=["peer"])
    labelled_info.add_metric(["x"], {"client": 'geth "v1"'})
    state_samples = [Sample("test_state", {"test_state": s}, v) for s, v in (("down", 0), ("up", 1))]
    states = _metric("test_state", "State", "stateset", state_samples)
    unknown = _metric("test_unknown", "Unknown", "untyped", [Sample("test_unknown", {}, 42.0)])
    empty = GaugeMetricFamily("test_empty", "No samples", labels=["x"])
    nolabels = GaugeMetricFamily("test_plain", "Plain", value=7.0)
    return [
        gauge, counter, plain_counter, created_counter, unit_gauge, unit_counter, hist, single_hist, ghist,
        summary, info, labelled_info, states, unknown, empty, nolabels,
    ]  # fmt: skip


def _odd_shapes() -> list[Metric]:
    """Shapes the parsers do not read back as built.

    A ':' in a name (prometheus_client's OpenMetrics writer turns it into '_' in sample lines), names
    outside the classic alphabet (families cannot be built so; the renderers escape them anyway),
    negative histogram buckets.
    """
    colon = GaugeMetricFamily("test:recorded", "Colon in the name", value=1.0)
    odd = Metric("test_dotted", "Dotted", "gauge")
    odd.name = "test.dotted:name"
    odd.samples = [Sample("test.dotted:name", {"label.with-dash": "v", "9lead": "d", "__reserved": "r"}, 1.0)]
    negative = HistogramMetricFamily("test_neg", "Negative", buckets=[("-1.0", 1.0), ("+Inf", 2.0)], sum_value=0.5)
    return [colon, odd, negative]


def test_every_family_shape_renders_as_prometheus_client_does() -> None:
    families = _valid_shapes() + _odd_shapes()
    for _ in range(2):  # the second render comes from the remembered prefixes and headers
        assert render_text(families) == reference(families)
        assert render_openmetrics(families) == reference_openmetrics(families)


def _key(name: str, labels: dict[str, str], value: float) -> tuple[str, tuple[tuple[str, str], ...], str]:
    return name, tuple(sorted(labels.items())), repr(float(value))  # repr: NaN equals NaN


def test_the_parsers_read_back_the_same_samples() -> None:
    families = _valid_shapes()
    expected = {_key(s.name, s.labels, s.value) for fam in families for s in fam.samples}
    assert len(expected) > 40
    text = render_text(families).decode()
    assert {_key(s.name, s.labels, s.value) for f in parse_text(text) for s in f.samples} == expected
    body = render_openmetrics(families).decode() + "# EOF\n"
    parsed = list(parse_openmetrics(body))  # type: ignore[no-untyped-call]
    assert {_key(s.name, s.labels, s.value) for f in parsed for s in f.samples} == expected
    # Names, types and units survive the OpenMetrics round trip too.
    assert {(f.name, f.type, f.unit) for f in parsed} == {
        (f.name, "unknown" if f.type == "untyped" else f.type, f.unit) for f in families
    }
    timestamps = {s.labels.get("path"): s.timestamp for f in parsed for s in f.samples if s.timestamp is not None}
    assert str(timestamps["/tsobj"]) == "1700000000.000000005"


def test_the_same_series_with_a_new_value_renders_the_new_value() -> None:
    for v in (1.0, 2.0, 0.25):
        fam = GaugeMetricFamily("test_value", "V", labels=["a"])
        fam.add_metric(["x"], v)
        assert render_text([fam]) == reference([fam])
        assert render_openmetrics([fam]) == reference_openmetrics([fam])
        assert f'test_value{{a="x"}} {v}\n'.encode() in render_openmetrics([fam])


@pytest.mark.parametrize(
    "values",
    [
        [1.5, 1.5, 2.0, 2.0],
        [0.0, -0.0, -0.0, 0.0],
        [3.0, -0.0, 0.0, -0.0],
        [7, 7.0, True, 1.0, 1, False, 0],
        [math.nan, math.nan, math.inf, math.inf, -math.inf, -math.inf],
        [1234567.0, 1234567, 1234567.0, -1234567.0, 1e-9, 1e-9, 1e300, 2**63, 2**63],
        [0.5, 250.0, 99.0, 101.0, 100.0, 100, 0.1 + 0.2],
    ],
)
def test_a_series_rendered_again_writes_each_new_value(values: list[float]) -> None:
    for v in values:
        fam = GaugeMetricFamily("test_again", "A", labels=["a"])
        fam.add_metric(["x"], v)
        plain = GaugeMetricFamily("test_again_plain", "P", value=v)
        assert render_text([fam, plain]) == reference([fam, plain])


def test_a_family_rendered_again_shows_each_change_of_its_series() -> None:
    def fam(*rows: tuple[str, float]) -> GaugeMetricFamily:
        f = GaugeMetricFamily("test_block", "B", labels=["a"])
        for label, v in rows:
            f.add_metric([label], v)
        return f

    first = fam(("x", 1.0), ("y", 0.0))
    assert render_text([first]) == reference([first])
    for changed in (fam(("x", 1.0), ("z", 0.0)), fam(("x", 1.0), ("y", -0.0)), fam(("x", 1.0)),
                    fam(("x", 1.0), ("y", 0.0), ("w", 2.0)), fam(("x", 1.0), ("y", 0.0))):
        assert render_text([changed]) == reference([changed])
    assert b'test_block{a="y"} -0.0' in render_text([fam(("x", 1.0), ("y", -0.0))])


def test_series_that_share_label_names_or_values_are_told_apart() -> None:
    samples = [
        Sample("test_swap", {"a": "b"}, 1.0),
        Sample("test_swap", {"b": "a"}, 2.0),
        Sample("test_swap", {"c": "b"}, 6.0),
        Sample("test_swap", {"a": "b", "c": "d"}, 3.0),
        Sample("test_swap", {"a": "c", "b": "d"}, 4.0),
        Sample("test_swap", {}, 5.0),
    ]
    fam = _metric("test_swap", "S", "gauge", samples)
    for _ in range(2):
        assert render_text([fam]) == reference([fam])
    assert (
        b'test_swap{b="a"} 2.0\ntest_swap{c="b"} 6.0\ntest_swap{a="b",c="d"} 3.0\ntest_swap{a="c",b="d"} 4.0\n'
        in render_text([fam])
    )


def test_labels_in_another_order_render_sorted() -> None:
    samples = [Sample("test_order", {"b": "2", "a": "1"}, 1.0), Sample("test_order", {"a": "1", "b": "3"}, 2.0)]
    a = _metric("test_order", "O", "gauge", samples)
    assert render_text([a]) == reference([a])
    assert render_openmetrics([a]) == reference_openmetrics([a])
    assert b'test_order{a="1",b="2"} 1.0\n' in render_text([a])
    assert b'test_order{a="1",b="2"} 1.0\n' in render_openmetrics([a])


def test_no_families_is_empty() -> None:
    assert render_text([]) == reference([]) == b""
    assert render_openmetrics([]) == reference_openmetrics([]) == b""


def _family_errors(family: str) -> float:
    for sample in exposition.exposition_families()[0].samples:
        if sample.labels == {"family": family}:
            return sample.value
    return 0.0


def test_a_family_that_cannot_render_is_left_out_and_counted() -> None:
    """prometheus-client fails the whole exposition (as node_exporter without ContinueOnError would);
    mevwatch leaves that one family out, serves the others, and counts it."""
    bad = _metric("test_bad", "B", "gauge", [Sample("test_bad", {"a": 1}, 1.0)])  # type: ignore[dict-item]
    good = _metric("test_good", "G", "gauge", [Sample("test_good", {"a": "1"}, 2.0)])
    for ref in (reference, reference_openmetrics):
        with pytest.raises(AttributeError):
            ref([bad])
    for render, ref in ((render_text, reference), (render_openmetrics, reference_openmetrics)):
        before = _family_errors("test_bad")
        assert render([good, bad, good]) == ref([good]) * 2
        assert _family_errors("test_bad") == before + 1


def test_an_exemplar_is_refused_rather_than_dropped() -> None:
    fam = _metric("test_ex", "E", "counter", [Sample("test_ex_total", {}, 1.0, exemplar=object())])
    before = _family_errors("test_ex")
    assert render_openmetrics([fam]) == b""
    assert _family_errors("test_ex") == before + 1


def test_undecodable_bytes_in_a_label_value_are_shown_escaped() -> None:
    name = "/etc/mev/x\udcff\n\"q"  # os.listdir's str for the bytes x, 0xff, newline, quote
    fam = _metric("test_path", "P", "gauge", [Sample("test_path", {"path": name}, 1.0)])
    for render, parse in ((render_text, parse_text), (render_openmetrics, parse_openmetrics)):
        body = render([fam]) + (b"# EOF\n" if render is render_openmetrics else b"")
        body.decode("utf-8")  # valid UTF-8
        [parsed] = [f for f in parse(body.decode()) if f.name == "test_path"]
        assert parsed.samples[0].labels["path"] == "/etc/mev/x\\xff\n\"q"


def test_the_host_collectors_families_render_identically() -> None:
    async def collect() -> list[Metric]:
        pool = BlockingPool(2)
        families: list[Metric] = []
        try:
            for kind in ("memory", "filesystems", "cpu", "process"):
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
    assert render_openmetrics(families) == reference_openmetrics(families)
    parse_openmetrics(render_openmetrics(families).decode() + "# EOF\n")  # type: ignore[no-untyped-call]
