"""The sample store: the latest snapshot of every collector instance, and nothing stale.

/metrics and the alert engine both read from here; there is no second copy of any value.
A snapshot older than 2x its collector's interval is dropped from every reader's view.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from mevwatch.families import Metric

__all__ = ["STALE_FACTOR", "SampleStore", "Snapshot", "SnapshotKey"]

SnapshotKey = tuple[str, str]  # (kind, instance)
STALE_FACTOR = 2.0
Listener = Callable[[SnapshotKey, "Snapshot"], None]


@dataclass(frozen=True, slots=True)
class Snapshot:
    families: tuple[Metric, ...]
    collected_at: float  # time.monotonic()
    wall_time: float  # time.time()
    max_age: float  # seconds after which the snapshot is stale (2x interval)
    seq: int = 0  # unique per put(): renderers cache a snapshot's text by it

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
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._snapshots: dict[SnapshotKey, Snapshot] = {}
        self._listeners: list[Listener] = []
        self._lazy: dict[SnapshotKey, tuple[Callable[[], Iterable[Metric]], float]] = {}
        self.version = 0  # bumped on every change; renderers cache on (version, fresh keys)

    def put(self, key: SnapshotKey, families: Iterable[Metric], interval: float) -> Snapshot:
        self._lazy.pop(key, None)
        self.version += 1
        snap = Snapshot(
            families if type(families) is tuple else tuple(families),
            self._clock(), time.time(), STALE_FACTOR * interval, self.version,
        )
        self._snapshots[key] = snap
        if self._listeners:
            for listener in tuple(self._listeners):
                listener(key, snap)
        return snap

    def put_lazy(self, key: SnapshotKey, build: Callable[[], Iterable[Metric]], interval: float) -> None:
        """Replace ``key``'s snapshot by what ``build()`` returns, called only when the snapshot is next
        read (get, fresh_items and everything built on them, or materialize()), and then only once.

        For values that change on every collector run but are read far less often (the supervisor's
        own metrics): many changes between two reads cost one build and one notification. Every
        reader builds pending snapshots first, so none sees the families from before the change.
        """
        self._lazy[key] = (build, interval)

    def materialize(self) -> None:
        """Build every pending lazy snapshot now (put them, listeners notified)."""
        while self._lazy:
            key, (build, interval) = next(iter(self._lazy.items()))
            del self._lazy[key]
            self.put(key, build(), interval)

    def touch(self, key: SnapshotKey) -> None:
        """Keep a live stream collector's last snapshot current without new data."""
        snap = self._snapshots.get(key)
        if snap is not None:
            self._snapshots[key] = Snapshot(snap.families, self._clock(), snap.wall_time, snap.max_age, snap.seq)

    def drop(self, key: SnapshotKey) -> None:
        self._lazy.pop(key, None)
        if self._snapshots.pop(key, None) is not None:
            self.version += 1

    def retain(self, keys: Iterable[SnapshotKey]) -> None:
        """Forget every snapshot whose collector no longer exists (after a reload)."""
        keep = set(keys)
        for key in [k for k in (*self._snapshots, *self._lazy) if k not in keep]:
            self.drop(key)

    def get(self, key: SnapshotKey) -> Snapshot | None:
        if key in self._lazy:
            self.materialize()
        snap = self._snapshots.get(key)
        if snap is None or not snap.fresh(self._clock()):
            return None
        return snap

    def fresh_items(self) -> list[tuple[SnapshotKey, Snapshot]]:
        if self._lazy:
            self.materialize()
        now = self._clock()
        return [(k, s) for k, s in self._snapshots.items() if s.fresh(now)]

    def cache_key(self) -> tuple[int, frozenset[SnapshotKey]]:
        fresh = frozenset(k for k, _ in self.fresh_items())  # first: it builds pending snapshots (version moves)
        return self.version, fresh

    def families(self) -> Iterator[Metric]:
        """Every family of every fresh snapshot, families of the same name merged."""
        return iter(merge_families(snap for _, snap in sorted(self.fresh_items(), key=lambda item: item[0])))

    def fresh_by_kind(self) -> dict[str, list[tuple[SnapshotKey, Snapshot]]]:
        """Fresh snapshots grouped by collector kind (a family name never spans two kinds)."""
        groups: dict[str, list[tuple[SnapshotKey, Snapshot]]] = {}
        for key, snap in sorted(self.fresh_items(), key=lambda item: item[0]):
            groups.setdefault(key[0], []).append((key, snap))
        return groups

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(key, snapshot)`` on every new snapshot; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)
