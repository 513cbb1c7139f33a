"""The sample store: lazily built snapshots are built once per read, never seen stale."""

from __future__ import annotations

from mevwatch.daemon.store import SampleStore, Snapshot, SnapshotKey
from mevwatch.families import GaugeMetricFamily, Metric

KEY: SnapshotKey = ("mevwatch", "self")


class Builder:
    def __init__(self) -> None:
        self.value = 0.0
        self.calls = 0

    def __call__(self) -> list[Metric]:
        self.calls += 1
        return [GaugeMetricFamily("t_lazy", "lazily built", value=self.value)]


def _value(snap: Snapshot | None) -> float | None:
    return None if snap is None else float(snap.families[0].samples[0].value)


def test_lazy_snapshot_is_built_once_for_many_changes_and_never_read_stale() -> None:
    store = SampleStore()
    seen: list[tuple[SnapshotKey, float | None]] = []
    store.subscribe(lambda key, snap: seen.append((key, _value(snap))))
    build = Builder()
    for v in (1.0, 2.0, 3.0):
        build.value = v
        store.put_lazy(KEY, build, 10.0)
    assert build.calls == 0
    assert seen == []
    assert _value(store.get(KEY)) == 3.0
    assert build.calls == 1
    assert seen == [(KEY, 3.0)]
    # read again without a change: nothing built
    assert [k for k, _ in store.fresh_items()] == [KEY]
    assert build.calls == 1
    # a change after a read moves the renderers' cache key before anything is built
    before = store.cache_key()
    build.value = 4.0
    store.put_lazy(KEY, build, 10.0)
    assert store.cache_key() != before
    assert [s.samples[0].value for s in store.families()] == [4.0]
    assert build.calls == 2
    assert seen[-1] == (KEY, 4.0)


def test_materialize_builds_pending_snapshots_and_an_eager_put_replaces_a_pending_one() -> None:
    store = SampleStore()
    build = Builder()
    build.value = 1.0
    store.put_lazy(KEY, build, 10.0)
    store.materialize()
    assert build.calls == 1
    store.put_lazy(KEY, build, 10.0)
    store.put(KEY, [GaugeMetricFamily("t_lazy", "eager", value=9.0)], 10.0)
    assert _value(store.get(KEY)) == 9.0
    assert build.calls == 1  # the eager put superseded the pending build


def test_drop_and_retain_forget_pending_snapshots() -> None:
    store = SampleStore()
    build = Builder()
    store.put_lazy(KEY, build, 10.0)
    store.drop(KEY)
    assert store.get(KEY) is None
    store.put_lazy(("other", "x"), build, 10.0)
    store.retain([KEY])
    assert store.fresh_items() == []
    assert build.calls == 0
