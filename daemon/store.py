"""The sample store: the latest snapshot of every collector instance, and nothing stale.

/metrics and the alert engine both read from here. A snapshot older than 2x its collector's
interval is dropped from every reader's view. The store records which keys changed (put or
dropped) by sequence number; the alert engine reads that change set in its own task.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from mevwatch.families import Metric

__all__ = ["STALE_FACTOR", "SampleStore", "Snapshot", "SnapshotKey"]

SnapshotKey = tuple[str, str]  # (kind, instance)
STALE_FACTOR = 2.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    families: tuple[Metric, ...]
    collected_at: float  # time.monotonic()
    wall_time: float  # time.time()
    max_age: float  # seconds after which the snapshot is stale (2x interval)
    seq: int = 0  # unique per put(): the render cache keeps a kind's text by its snapshots' seq
    # Unix time the collection was made (a poll run's slot, see Supervisor), which the alert engine
    # counts `for` from; None: when it was put
    sampled_at: float | None = None

    def fresh(self, now: float) -> bool:
        return now - self.collected_at <= self.max_age


def merge_families(snapshots: Iterable[Snapshot]) -> list[Metric]:
    """The families of ``snapshots``, those of the same name (several instances) merged into one."""
    merged: dict[str, Metric] = {}
    for snap in snapshots:
        for fam in snap.families:
            have = merged.get(fam.name)
            if have is None:
                copy = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                copy.samples = list(fam.samples)
                merged[fam.name] = copy
            else:
                have.samples.extend(fam.samples)
    return list(merged.values())


class SampleStore:
    """The latest snapshot per collector instance, and what changed, by key and sequence number.

    Writers (the supervisor, the alert engine's own metrics) put; nothing runs on their stack
    but the bookkeeping. A consumer that acts on changes (the alert engine) waits on its event
    from watch() in its own task and reads changes() there; readers (/metrics, the landing page,
    diagnose) only read.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._snapshots: dict[SnapshotKey, Snapshot] = {}
        self._changed_at: dict[SnapshotKey, int] = {}  # seq of each key's last put or drop
        self._watchers: list[asyncio.Event] = []
        self.seq = 0  # bumped on every put and drop

    def put(self, key: SnapshotKey, families: Iterable[Metric], interval: float,
            sampled_at: float | None = None) -> Snapshot:
        self.seq += 1
        snap = Snapshot(tuple(families), self._clock(), time.time(), STALE_FACTOR * interval, self.seq, sampled_at)
        self._snapshots[key] = snap
        self._changed(key)
        return snap

    def _changed(self, key: SnapshotKey) -> None:
        self._changed_at[key] = self.seq
        for event in self._watchers:
            event.set()

    def touch(self, key: SnapshotKey) -> None:
        """Keep a live stream collector's last snapshot current without new data (not a change)."""
        snap = self._snapshots.get(key)
        if snap is not None:
            self._snapshots[key] = Snapshot(snap.families, self._clock(), snap.wall_time, snap.max_age, snap.seq,
                                             snap.sampled_at)

    def drop(self, key: SnapshotKey) -> None:
        if self._snapshots.pop(key, None) is not None:
            self.seq += 1
            self._changed(key)

    def retain(self, keys: Iterable[SnapshotKey]) -> None:
        """Forget every snapshot whose collector no longer exists (after a reload)."""
        keep = set(keys)
        for key in [k for k in self._snapshots if k not in keep]:
            self.drop(key)

    def changes(self, since: int) -> tuple[int, list[SnapshotKey]]:
        """The keys put or dropped after sequence number ``since``, and the sequence number now
        (pass it as ``since`` next time). Read each key's snapshot with get(): None when dropped."""
        if since >= self.seq:
            return self.seq, []
        return self.seq, [k for k, at in self._changed_at.items() if at > since]

    def watch(self) -> asyncio.Event:
        """An event set on every put and drop, for one consumer: it waits on it in its own task,
        clears it and reads changes(). The writer only sets a flag."""
        event = asyncio.Event()
        self._watchers.append(event)
        return event

    def unwatch(self, event: asyncio.Event) -> None:
        if event in self._watchers:
            self._watchers.remove(event)

    def get(self, key: SnapshotKey) -> Snapshot | None:
        snap = self._snapshots.get(key)
        if snap is None or not snap.fresh(self._clock()):
            return None
        return snap

    def stale_in(self, key: SnapshotKey) -> float | None:
        """Seconds until ``key``'s snapshot goes stale unless it is put or touched again (negative: it is
        stale); None when the store holds none."""
        snap = self._snapshots.get(key)
        if snap is None:
            return None
        return snap.collected_at + snap.max_age - self._clock()

    def fresh_items(self) -> list[tuple[SnapshotKey, Snapshot]]:
        now = self._clock()
        return [(k, s) for k, s in self._snapshots.items() if s.fresh(now)]

    def families(self) -> Iterator[Metric]:
        """Every family of every fresh snapshot, families of the same name merged."""
        return iter(merge_families(snap for _, snap in sorted(self.fresh_items(), key=lambda item: item[0])))

    def fresh_by_kind(self) -> dict[str, list[tuple[SnapshotKey, Snapshot]]]:
        """Fresh snapshots grouped by collector kind (a family name never spans two kinds)."""
        groups: dict[str, list[tuple[SnapshotKey, Snapshot]]] = {}
        for key, snap in sorted(self.fresh_items(), key=lambda item: item[0]):
            groups.setdefault(key[0], []).append((key, snap))
        return groups
