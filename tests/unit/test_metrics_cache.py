"""/metrics rendering: per-kind caching, merged instances, one EOF, stale snapshots dropped."""

from __future__ import annotations

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from mevwatch.daemon.http import MetricsCache
from mevwatch.daemon.store import SampleStore
from mevwatch.families import CounterMetricFamily, GaugeMetricFamily


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def gauge(name: str, inst: str, v: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, f"help of {name}", labels=["instance"])
    g.add_metric([inst], v)
    return g


def test_only_the_changed_kind_is_rendered_again() -> None:
    store = SampleStore()
    cache = MetricsCache(store)
    store.put(("alpha", "a"), [gauge("mevwatch_alpha", "a", 1)], interval=10)
    store.put(("beta", "b"), [gauge("mevwatch_beta", "b", 2)], interval=10)
    first = cache.get(openmetrics=False, gzipped=False).decode()
    assert cache.renders == 2
    assert cache.get(openmetrics=False, gzipped=False).decode() == first  # nothing changed: no render
    assert cache.renders == 2
    store.put(("alpha", "a"), [gauge("mevwatch_alpha", "a", 5)], interval=10)
    text = cache.get(openmetrics=False, gzipped=False).decode()
    assert cache.renders == 3  # alpha only
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert values == {"mevwatch_alpha": 5.0, "mevwatch_beta": 2.0}


def test_instances_of_one_kind_share_one_family_and_openmetrics_has_one_eof() -> None:
    store = SampleStore()
    cache = MetricsCache(store)
    for inst in ("x", "y"):
        c = CounterMetricFamily("mevwatch_rpc_requests", "requests", labels=["instance"])
        c.add_metric([inst], 3)
        store.put(("rpc", inst), [gauge("mevwatch_rpc_up", inst, 1), c], interval=10)
    store.put(("mevwatch", "self"), [gauge("mevwatch_self", "s", 1)], interval=10)
    text = cache.get(openmetrics=False, gzipped=False).decode()
    assert text.count("# TYPE mevwatch_rpc_up gauge") == 1
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert len(fams["mevwatch_rpc_up"].samples) == 2
    om = cache.get(openmetrics=True, gzipped=False).decode()
    assert om.count("# EOF") == 1
    assert om.endswith("# EOF\n")
    parsed = {f.name: f for f in parse_openmetrics(om)}  # type: ignore[no-untyped-call]  # strict: raises on duplicates
    assert len(parsed["mevwatch_rpc_requests"].samples) >= 2


def test_stale_kind_disappears_and_gzip_follows() -> None:
    import gzip

    clock = Clock()
    store = SampleStore(clock=clock)
    cache = MetricsCache(store)
    store.put(("slow", "a"), [gauge("mevwatch_slow", "a", 1)], interval=1)
    store.put(("fast", "a"), [gauge("mevwatch_fast", "a", 1)], interval=100)
    assert b"mevwatch_slow" in gzip.decompress(cache.get(openmetrics=False, gzipped=True))
    clock.t += 2.5  # > 2x the slow collector's interval
    body = gzip.decompress(cache.get(openmetrics=False, gzipped=True))
    assert b"mevwatch_slow" not in body
    assert b"mevwatch_fast" in body
