"""The alert engine's per-series counter history: compact, bounded, and exact for increase and rate."""

from __future__ import annotations

import random
import sys

import pytest

from mevwatch.alerts.history import CUT_EVERY, History
from mevwatch.alerts.rules import increase


def counter_walk(rng: random.Random, n: int) -> list[tuple[float, float]]:
    """A counter sampled every second: long flat runs, bursts, and an occasional reset."""
    out, v = [], 0.0
    for t in range(n):
        r = rng.random()
        if r < 0.01:
            v = 0.0  # restart of the counted process
        elif r < 0.3:
            v += rng.randint(1, 5)
        out.append((float(t), v))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_increase_reads_the_same_as_with_every_point_kept(seed: int) -> None:
    rng = random.Random(seed)
    keep = 120.0
    h = History()
    every: list[tuple[float, float]] = []
    for t, v in counter_walk(rng, 1000):
        h.add(t, v, keep)
        every.append((t, v))
        for window in (5.0, 30.0, 60.0, keep):
            assert h.increase(window, t) == increase(every, window, t), (t, window)


def test_a_flat_counter_keeps_two_points_whatever_the_window() -> None:
    h = History()
    for t in range(5000):
        h.add(float(t), 7.0, keep=3600.0)
    assert list(h.points) == [(0.0, 7.0), (4999.0, 7.0)]
    h.add(5000.0, 8.0, keep=3600.0)
    assert increase(h.points, 60.0, 5000.0) == 1.0


def test_a_changing_counter_holds_one_window_and_the_arrays_are_compacted() -> None:
    h = History()
    for t in range(10_000):
        h.add(float(t), float(t), keep=600.0)
    assert 600 <= len(h.points) <= 602
    assert h.points[0][0] <= 10_000 - 1 - 600  # the baseline older than the window is kept
    assert len(h.times) <= len(h.points) + CUT_EVERY  # dropped points do not pile up in the arrays


def test_a_repeated_time_replaces_the_last_point() -> None:
    h = History()
    h.add(1.0, 1.0, keep=60.0)
    h.add(2.0, 2.0, keep=60.0)
    h.add(2.0, 5.0, keep=60.0)
    assert list(h.points) == [(1.0, 1.0), (2.0, 5.0)]


def test_points_view_indexes_like_a_sequence() -> None:
    h = History()
    for t in range(5):
        h.add(float(t), float(t * t), keep=60.0)
    pts = h.points
    assert len(pts) == 5
    assert pts[0] == (0.0, 0.0)
    assert pts[-1] == (4.0, 16.0)
    assert pts[1:3] == [(1.0, 1.0), (2.0, 4.0)]
    with pytest.raises(IndexError):
        pts[5]
    with pytest.raises(IndexError):
        pts[-6]
    assert not History().points


def test_the_increase_counts_a_reset_and_a_counter_going_negative_as_increase_does() -> None:
    walk = [(0.0, 5.0), (1.0, 8.0), (2.0, 2.0), (3.0, 2.0), (4.0, 2.0), (5.0, -3.0), (5.0, 4.0), (6.0, 4.0)]
    h = History()
    for i, (t, v) in enumerate(walk):
        h.add(t, v, keep=60.0)
        # a repeated time replaces the point before it, as it does in the history
        seen = [p for j, p in enumerate(walk[: i + 1]) if j + 1 > i or walk[j + 1][0] != p[0]]
        for window in (0.5, 1.0, 2.5, 60.0):
            assert h.increase(window, t) == increase(seen, window, t), (i, window)
    assert h.increase(60.0, 6.0) == 3.0 + 2.0 + 2.0  # 5 -> 8, reset to 2, 2 -> 4 (at t=5, replacing -3)
    assert History().increase(60.0, 0.0) is None


def histogram_walk(rng: random.Random, n: int, bounds: int) -> list[tuple[float, list[float]]]:
    """Cumulative bucket counts of a latency histogram probed about once a second, with one restart."""
    out, counts, t = [], [0.0] * bounds, 0.0
    for i in range(n):
        t += rng.choice((0.98, 1.0, 1.03))
        if i == n // 2:
            counts = [0.0] * bounds  # the probing process restarted
        for _ in range(rng.choice((0, 1, 1, 2))):
            slot = rng.randrange(bounds)
            counts = [c + 1 if j >= slot else c for j, c in enumerate(counts)]
        out.append((t, counts))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_a_histogram_history_reads_each_bucket_as_its_own_counter_history_would(seed: int) -> None:
    rng = random.Random(seed)
    keep, les = 300.0, ("0.005", "0.01", "0.1", "+Inf")
    h = History(les)
    each = [History() for _ in les]
    every: list[list[tuple[float, float]]] = [[] for _ in les]
    for t, counts in histogram_walk(rng, 1200, len(les)):
        h.add_row(t, counts, keep)
        for c, v in enumerate(counts):
            each[c].add(t, v, keep)
            every[c].append((t, v))
        for window in (30.0, keep):
            want = [e.increase(window, t) for e in each]
            assert want == [increase(pts, window, t) for pts in every]
            assert h.increases(window, t) == (None if None in want else want), (t, window)
    assert h.values.itemsize == 2  # whole counts in two bytes each


def test_a_histogram_history_holds_its_window_in_about_two_bytes_a_bucket() -> None:
    # the shape of the rpc latency histogram probed every second under a 5-minute quantile rule (bench/rpc.py)
    les = (*(f"{b:g}" for b in range(22)), "+Inf")
    h = History(les)
    keep = 300.0
    for t in range(3600):
        h.add_row(float(t), [float(t // 2 if j < 5 else t) for j in range(len(les))], keep)
    assert 300 <= len(h.points) <= 302
    assert len(h.times) <= len(h.points) + CUT_EVERY
    held = sys.getsizeof(h.times) + sys.getsizeof(h.values)  # with what the arrays over-allocate
    assert held <= (300 + CUT_EVERY) * (8 + 2 * len(les)) * 1.15
    assert h.increases(keep, 3599.0) == [150.0] * 5 + [300.0] * (len(les) - 5)


def test_offsets_move_up_with_the_window_and_stay_exact() -> None:
    h, every = History(), []
    for t in range(40_000):  # 120,000 counted: past what two bytes hold, many times over
        v = 1e6 + 3.0 * t
        h.add(float(t), v, keep=60.0)
        every.append((float(t), v))
        if t % 997 == 0 or t > 39_990:
            assert h.increase(60.0, float(t)) == increase(every[-70:], 60.0, float(t))
    assert h.values.itemsize == 2
    assert h.points[-1] == (39_999.0, 1e6 + 3.0 * 39_999)


@pytest.mark.parametrize("walk", [
    [0.5, 1.25, 3.0, 3.0, 7.75],  # a counter of seconds
    [0.0, 10.0, 70_000.0, 70_001.0, 70_005.0],  # more within the window than two bytes hold
    [5.0, 8.0, -10.0, 4.0, 4.0],  # a reset to a negative value: below the first point's
    [0.0, 1.0, float("inf"), 2.0, 3.0],
])
def test_a_counter_two_bytes_do_not_hold_keeps_floats_and_reads_as_before(walk: list[float]) -> None:
    h, every = History(), []
    for t, v in enumerate(walk):
        h.add(float(t), v, keep=60.0)
        every.append((float(t), v))
        assert h.increase(60.0, float(t)) == increase(every, 60.0, float(t))
    assert h.values.typecode == "d"
