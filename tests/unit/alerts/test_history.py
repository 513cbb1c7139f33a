"""The alert engine's per-series counter history: compact, bounded, and exact for increase and rate."""

from __future__ import annotations

import random

import pytest

from mevwatch.alerts.rules import History, increase


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
            assert increase(h.points, window, t) == increase(every, window, t), (t, window)


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
    assert len(h.times) <= 2 * len(h.points) + 64  # dropped points do not pile up in the arrays


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
