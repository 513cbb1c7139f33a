"""The alert engine's counter history: the recent points of a counter series, or of one histogram series'
buckets, for increase and rate over a window."""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

__all__ = ["CUT_EVERY", "History"]

# Points that left the window are cut from the arrays once this many piled up. 16 rather than 64: 200
# endpoints' latency histograms at 1 s in process (the engine fed as in bench/rpc.py, malloc_trim every
# minute as the daemon does) levelled at +2.8 MiB RSS from minute 1 instead of +3.5 MiB (less free heap
# left between the arrays by each cut's shrink and regrowth).
CUT_EVERY = 16
_OFFSET_MAX = (1 << 16) - 1  # an integral counter's increase since its origin, kept in two bytes ("H")
_REBASE_AT = 1 << 15  # past this the origin moves up to the oldest live point (one counter per point)


class _Points(Sequence[tuple[float, float]]):
    """Read-only (time, running increase) view of a History's first counter over its live part."""

    __slots__ = ("_h",)

    def __init__(self, h: History) -> None:
        self._h = h

    def __len__(self) -> int:
        return len(self._h.times) - self._h.start

    @overload
    def __getitem__(self, i: int) -> tuple[float, float]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[float, float]]: ...

    def __getitem__(self, i: int | slice) -> tuple[float, float] | list[tuple[float, float]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError("History index out of range")
        h = self._h
        j = h.start + (i if i >= 0 else n + i)
        return h.times[j], h.value(0, j)

    def __iter__(self) -> Iterator[tuple[float, float]]:
        h = self._h
        return ((h.times[j], h.value(0, j)) for j in range(h.start, len(h.times)))


class History:
    """Recent points of counters read at the same times: one counter series, or the buckets of one histogram
    series (a histogram's buckets always come in one snapshot). Per point its time, once, and per counter its
    running increase since the first point (a drop is a reset: the new value is all increase, as in Prometheus).

    Keeping the running increase rather than the raw value makes the increase over any window the difference
    of two points found by bisection, not a walk over the window: the 5-minute quantile rule over 200
    endpoints' buckets read 720,000 points per evaluation that way (bench/rpc.py). A point that only extends
    a run of equal values replaces the run's last point: increase over any window reads the same values
    without the run's middle.

    Compact, because at a 1 s interval the 5-minute latency-quantile rule over 200 endpoints holds 4,600
    bucket counters of 300 points each (bench/rpc.py: 1.38 M points, 22 MB as a float array of times and one
    of values per counter, and the daemon's RSS rose for 9 minutes while they filled; now about 3 MB): a
    histogram series' times are kept once for its buckets, and counters whose values are whole numbers (bucket
    counts) keep their running increases as two-byte offsets from per-counter origins that move up as the
    window moves (exact: read back as the same floats). A history with a fractional value, or with a counter
    rising by more than ~16,000 within its live points, keeps floats. The values are one array, a row per
    point, so a histogram's leaves Python's small-object allocator within its first dozen points, not when the
    window is half full (those freed blocks stayed in the RSS). Points that left the window are cut every
    ``CUT_EVERY`` points: the arrays hold the window and at most that many points more.
    """

    __slots__ = ("_before", "_origin", "_raw", "_turn", "columns", "start", "times", "values", "width")

    def __init__(self, columns: Sequence[str] = ("",)) -> None:
        self.columns = tuple(columns)  # what each counter is (a histogram's `le`); one unnamed counter by default
        self.width = width = len(self.columns)
        self.times: array[float] = array("d")
        # a row per point: per counter its offset from its origin ("H"), or its running increase ("d")
        self.values: array[Any] = array("H")
        self._origin = [0.0] * width
        self.start = 0  # points before this index have left the window
        self._raw = [0.0] * width  # each counter's value at the newest point
        self._before = [0.0] * width  # its value at the point before (a point at the same time replaces the newest)
        self._turn = 0  # the counter whose origin is looked at with the next point

    @property
    def points(self) -> Sequence[tuple[float, float]]:
        """(time, running increase) of the first counter's live points."""
        return _Points(self)

    def value(self, column: int, i: int) -> float:
        """Running increase of counter ``column`` at the point of array index ``i`` (negative: from the end)."""
        x: float = self.values[(i if i >= 0 else len(self.times) + i) * self.width + column] + self._origin[column]
        return x

    def _row(self, i: int) -> list[float]:
        """Running increases of every counter at the point of array index ``i`` (negative: from the end)."""
        w = self.width
        j = (i if i >= 0 else len(self.times) + i) * w
        return [x + o for x, o in zip(self.values[j:j + w], self._origin, strict=True)]

    def last_time(self) -> float | None:
        return self.times[-1] if len(self.times) > self.start else None

    def add(self, t: float, v: float, keep: float) -> None:
        """A point of a one-counter history."""
        self.add_row(t, (v,), keep)

    def add_row(self, t: float, raw: Iterable[float], keep: float) -> None:
        """A point of every counter at time ``t`` (their current values, in column order); points older than
        ``keep`` before ``t`` leave the window, but for one kept as the baseline."""
        vs = [*raw]
        times, values, w = self.times, self.values, self.width
        n = len(times) - self.start
        if n and t <= times[-1]:  # the same time again: the newest point is replaced
            if n >= 2:
                accs = [a + _counted(r, v) for a, r, v in zip(self._row(-2), self._before, vs, strict=True)]
            else:
                accs = vs
            del values[-w:]
            times[-1] = t
            self._append(accs)
        else:
            last = self._raw
            prev = self._row(-1) if n else []
            accs = [a + _counted(r, v) for a, r, v in zip(prev, last, vs, strict=True)] if n else vs
            if n >= 2 and accs == prev and values[-w:] == values[-2 * w:-w]:
                times[-1] = t  # every counter extends a run of equal values
            else:
                times.append(t)
                self._append(accs)
                n += 1
            self._before = last
        self._raw = vs
        # keep one point older than the window as the baseline
        while n > 2 and times[self.start + 1] <= t - keep:
            self.start += 1
            n -= 1
        if self.start >= CUT_EVERY:
            self._cut()
        self._rebase()

    def _append(self, accs: list[float]) -> None:
        """Append a row of running increases, as offsets while every one is a whole number that fits."""
        values, origin = self.values, self._origin
        if values.typecode == "H":
            if not values:
                if all(float(a).is_integer() for a in accs):  # not NaN nor infinite either
                    self._origin = [float(a) for a in accs]
                    values.extend([0] * self.width)
                    return
            else:
                offs = [a - o for a, o in zip(accs, origin, strict=True)]
                # whole numbers in range (NaN is not), and read back as the same floats
                if (min(offs) >= 0.0 and max(offs) <= _OFFSET_MAX and all(map(float.is_integer, offs))
                        and [o + d for o, d in zip(origin, offs, strict=True)] == accs):
                    values.extend(map(int, offs))
                    return
            self._widen()
        self.values.extend(accs)

    def _widen(self) -> None:
        origin, w = self._origin, self.width
        self.values = array("d", [x + origin[i % w] for i, x in enumerate(self.values)])
        self._origin = [0.0] * w

    def _cut(self) -> None:
        del self.times[:self.start]
        del self.values[:self.start * self.width]
        self.start = 0

    def _rebase(self) -> None:
        """Move one counter's origin up to its oldest live point when its offsets near what two bytes hold (a
        history whose counter rose by half of that within its live points keeps floats instead). One counter
        per point, so a histogram's buckets, which rise together, are not all copied with the same snapshot."""
        values, w = self.values, self.width
        c = self._turn
        self._turn = (c + 1) % w
        if values.typecode == "d" or not values or values[c - w] <= _REBASE_AT:
            return
        if self.start:
            self._cut()
        base = values[c]
        if values[c - w] - base > _REBASE_AT // 2:
            self._widen()
            return
        values[c::w] = array("H", [x - base for x in values[c::w]])
        self._origin[c] += base

    def next_edge(self, window: float, now: float) -> float | None:
        """When ``increases(window)`` next moves with time alone: the time at which the point after the
        baseline becomes the baseline (the window's start passes it); None when no point will."""
        times, lo, hi = self.times, self.start, len(self.times)
        j = max(bisect.bisect_right(times, now - window, lo, hi), lo + 1)
        return times[j] + window if j < hi else None

    def increase(self, window: float, now: float) -> float | None:
        """The first counter's increase over ``(now - window, now]`` (as ``increase()``), by bisection."""
        incs = self.increases(window, now)
        return None if incs is None else incs[0]

    def increases(self, window: float, now: float) -> list[float] | None:
        """Every counter's increase over ``(now - window, now]``, in column order; None without two points.

        The baseline is the last point at or before the window start, or the first point inside it."""
        times, lo, hi = self.times, self.start, len(self.times)
        end = bisect.bisect_right(times, now, lo, hi) - 1
        base = max(bisect.bisect_right(times, now - window, lo, hi) - 1, lo)
        if end - base < 1:
            return None
        values, w = self.values, self.width
        return [float(e - b) for e, b in zip(values[end * w:(end + 1) * w], values[base * w:(base + 1) * w],
                                             strict=True)]


def _counted(before: float, after: float) -> float:
    """What a counter's move from ``before`` to ``after`` adds: a drop is a reset, the new value all increase."""
    return after - before if after >= before else after
