"""The sample store: what changed, by key and sequence number; a consumer is woken, never called."""

from __future__ import annotations

import asyncio

from mevwatch.daemon.store import SampleStore, SnapshotKey
from mevwatch.families import GaugeMetricFamily, Metric

A: SnapshotKey = ("memory", "default")
B: SnapshotKey = ("disk", "default")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fams(v: float) -> list[Metric]:
    return [GaugeMetricFamily("t_value", "a value", value=v)]


def test_changes_since_a_sequence_number_name_each_key_once_and_dropped_keys_too() -> None:
    store = SampleStore()
    seq, keys = store.changes(0)
    assert (seq, keys) == (0, [])
    store.put(A, fams(1), 10)
    store.put(A, fams(2), 10)
    store.put(B, fams(3), 10)
    seq, keys = store.changes(0)
    assert sorted(keys) == sorted([A, B])
    assert store.changes(seq) == (seq, [])  # nothing new since
    store.drop(B)
    store.touch(A)  # keeping a snapshot fresh is not a change
    seq2, keys = store.changes(seq)
    assert keys == [B]
    assert store.get(B) is None
    store.retain([B])  # A's collector is gone after a reload
    assert store.changes(seq2)[1] == [A]
    assert store.fresh_items() == []


async def test_a_watcher_is_woken_in_its_own_task_not_called_by_the_writer() -> None:
    store = SampleStore()
    event = store.watch()
    seen: list[list[SnapshotKey]] = []

    async def consumer() -> None:
        since = 0
        while True:
            await event.wait()
            event.clear()
            since, keys = store.changes(since)
            seen.append(sorted(keys))

    task = asyncio.create_task(consumer())
    try:
        await asyncio.sleep(0)
        store.put(A, fams(1), 10)
        store.put(B, fams(1), 10)
        assert seen == []  # put only set a flag
        for _ in range(3):
            await asyncio.sleep(0)
        assert seen == [sorted([A, B])]  # two puts, one wake-up
        store.unwatch(event)
        store.put(A, fams(2), 10)
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(seen) == 1
    finally:
        task.cancel()


def test_a_snapshot_older_than_twice_its_interval_is_not_served() -> None:
    clock = Clock()
    store = SampleStore(clock=clock)
    store.put(A, fams(1), 1)
    store.put(B, fams(2), 100)
    clock.t += 2.5
    assert store.get(A) is None
    assert [k for k, _ in store.fresh_items()] == [B]
    assert [s.value for f in store.families() for s in f.samples] == [2]
