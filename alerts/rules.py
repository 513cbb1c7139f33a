"""Pure rule evaluation: series selection, increase/rate over a window, histogram quantiles, state machine.

Everything here takes the time as an argument, so it is tested without clocks or I/O.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from array import array
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, overload

from mevwatch.alerts.matchers import matches_all
from mevwatch.alerts.rule import Rule
from mevwatch.alerts.templates import render_template

__all__ = [
    "RESOLVED_RETENTION",
    "Alert",
    "History",
    "LabelSet",
    "evaluate_rule",
    "fingerprint",
    "histogram_quantile",
    "increase",
    "step",
]

LabelSet = tuple[tuple[str, str], ...]
State = Literal["pending", "firing", "resolved"]
RESOLVED_RETENTION = 900.0  # resolved alerts are kept (and re-sent to Alertmanager) for 15 minutes


def labelset(labels: Mapping[str, str]) -> LabelSet:
    return tuple(sorted(labels.items()))


def fingerprint(labels: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:16]


@dataclass(slots=True)
class Alert:
    """One series of one rule, in the state DB across restarts. Times are Unix seconds."""

    rule: str
    fingerprint: str
    labels: dict[str, str]
    annotations: dict[str, str]
    state: State
    value: float
    active_at: float
    fired_at: float | None = None
    resolved_at: float | None = None
    last_match_at: float = 0.0

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "warning")


class _Points(Sequence[tuple[float, float]]):
    """Read-only (time, value) view of a History's live part."""

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
        j = self._h.start + (i if i >= 0 else n + i)
        return self._h.times[j], self._h.values[j]

    def __iter__(self) -> Iterator[tuple[float, float]]:
        h = self._h
        return zip(h.times[h.start:], h.values[h.start:], strict=True)


@dataclass(slots=True)
class History:
    """Recent (time, value) points of one counter series, for increase and rate.

    Two float arrays (16 bytes a point rather than a tuple of two floats in a deque, ~100): at a 1 s
    interval a 10-minute window holds 600 points per series, and a histogram has a series per bucket.
    A point that only extends a run of equal values replaces the run's last point: increase over
    any window reads the same values without the run's middle.
    """

    times: array[float] = field(default_factory=lambda: array("d"))
    values: array[float] = field(default_factory=lambda: array("d"))
    start: int = 0  # points before this index have left the window

    @property
    def points(self) -> Sequence[tuple[float, float]]:
        return _Points(self)

    def last_time(self) -> float | None:
        return self.times[-1] if len(self.times) > self.start else None

    def add(self, t: float, v: float, keep: float) -> None:
        n = len(self.times) - self.start
        if n and (t <= self.times[-1] or (n >= 2 and self.values[-1] == v and self.values[-2] == v)):
            self.times[-1], self.values[-1] = t, v
        else:
            self.times.append(t)
            self.values.append(v)
            n += 1
        # keep one point older than the window as the baseline
        while n > 2 and self.times[self.start + 1] <= t - keep:
            self.start += 1
            n -= 1
        if self.start > 64 and self.start * 2 > len(self.times):
            del self.times[:self.start]
            del self.values[:self.start]
            self.start = 0


def increase(points: Iterable[tuple[float, float]], window: float, now: float) -> float | None:
    """Counter increase over ``(now - window, now]``, counting resets like Prometheus (no extrapolation).

    The baseline is the last point at or before the window start, or the first point inside it.
    Needs two points; None otherwise.
    """
    start = now - window
    pts = list(points)
    base = 0
    for i, (t, _) in enumerate(pts):
        if t <= start:
            base = i
    use = [p for p in pts[base:] if p[0] <= now]
    if len(use) < 2:
        return None
    total = 0.0
    prev = use[0][1]
    for _, v in use[1:]:
        total += v - prev if v >= prev else v  # a drop is a counter reset: the new value is all increase
        prev = v
    return total


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (le, count) buckets; NaN when empty."""
    bs = sorted(buckets)
    if not bs or bs[-1][0] != math.inf:
        return math.nan
    total = bs[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in bs:
        if count >= rank:
            if le == math.inf:
                return prev_le if len(bs) > 1 else math.nan
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return bs[-2][0] if len(bs) > 1 else math.nan


Series = Mapping[LabelSet, float]


def evaluate_rule(
    rule: Rule,
    samples: Mapping[str, Series],
    histories: Mapping[tuple[str, LabelSet], History],
    now: float,
) -> dict[LabelSet, float]:
    """Value of every series the rule selects (before comparing with the threshold).

    ``samples`` maps sample names to {labels: value}; ``histories`` holds counter points by
    (sample name, labels) for increase/rate.
    """
    window = rule.window
    if rule.quantile is not None:
        groups: dict[LabelSet, list[tuple[float, float]]] = {}
        name = rule.metric + "_bucket"
        for ls, v in samples.get(name, {}).items():
            labels = dict(ls)
            le = labels.pop("le", None)
            if le is None or not matches_all(rule.matchers, labels):
                continue
            if window:
                hist = histories.get((name, ls))
                inc = increase(hist.points, window, now) if hist else None
                if inc is None:
                    continue
                v = inc
            groups.setdefault(labelset(labels), []).append((float(le), v))
        out = {ls: histogram_quantile(rule.quantile, bs) for ls, bs in groups.items()}
        return {ls: v for ls, v in out.items() if not math.isnan(v)}
    selected: dict[LabelSet, float] = {}
    for ls, v in samples.get(rule.metric, {}).items():
        if rule.matchers and not matches_all(rule.matchers, dict(ls)):
            continue
        if window:
            hist = histories.get((rule.metric, ls))
            inc = increase(hist.points, window, now) if hist else None
            if inc is None:
                continue
            v = inc / window if rule.rate else inc
        selected[ls] = v
    if rule.when is not None:
        return _paired(rule, selected, samples, histories, now)
    if rule.absent:
        if selected:
            return {}
        return {labelset({m.name: m.value for m in rule.matchers if m.op == "="}): 1.0}
    return selected


def _paired(
    rule: Rule, selected: dict[LabelSet, float], samples: Mapping[str, Series],
    histories: Mapping[tuple[str, LabelSet], History], now: float,
) -> dict[LabelSet, float]:
    """``when``: the selected series whose pair (same labels but the ignored ones) passes the condition (PromQL
    ``and ignoring(...)``); for an absent rule, the passing condition series without a pair (``unless``)."""
    cond = rule.when
    assert cond is not None
    ignored = set(cond.ignoring)

    def key(ls: LabelSet) -> LabelSet:
        return tuple((k, v) for k, v in ls if k not in ignored and k != "__name__")

    values: dict[LabelSet, float] = {}
    for ls, v in samples.get(cond.metric, {}).items():
        if cond.increase:  # the counter's increase over the window, as for a rule's own `increase`
            hist = histories.get((cond.metric, ls))
            inc = increase(hist.points, float(cond.increase), now) if hist else None
            if inc is None:
                continue
            v = inc
        values[ls] = v
    passing = {
        key(ls): (ls, v) for ls, v in values.items() if cond.passes(v) and matches_all(cond.matchers, dict(ls))
    }
    if rule.absent:  # each passing series without a pair, with its own labels and value, as `unless` keeps them
        have = {key(ls) for ls in selected}
        return {tuple(kv for kv in ls if kv[0] != "__name__"): v for k, (ls, v) in passing.items() if k not in have}
    return {ls: v for ls, v in selected.items() if key(ls) in passing}


def alert_labels(rule: Rule, series: LabelSet, host: str) -> dict[str, str]:
    return _labels_fingerprint(rule, series, host)[0]


@functools.lru_cache(maxsize=8192)
def _identity(
    name: str, severity: str, rule_labels: tuple[tuple[str, str], ...], series: LabelSet, host: str
) -> tuple[tuple[tuple[str, str], ...], str]:
    labels = {k: v for k, v in series if k != "__name__"}
    labels.setdefault("host", host)
    labels.update(rule_labels)
    labels["alertname"] = name
    labels["severity"] = severity
    return tuple(labels.items()), fingerprint(labels)


def _labels_fingerprint(rule: Rule, series: LabelSet, host: str) -> tuple[dict[str, str], str]:
    """``alert_labels`` and their fingerprint, memoised: a rule sees the same series on every evaluation
    and the hash of their JSON was most of the engine's time per tick."""
    items, fp = _identity(rule.name, rule.severity, tuple(rule.labels.items()), series, host)
    return dict(items), fp


def step(
    rule: Rule,
    values: Mapping[LabelSet, float],
    alerts: dict[str, Alert],
    now: float,
    host: str,
    runbook_url: str,
    hold: Container[str] = (),
    samples: Mapping[str, Series] | None = None,
) -> list[Alert]:
    """Advance the state machine of ``rule``'s alerts (in ``alerts``, by fingerprint) to ``now``.

    Returns the alerts whose state changed (pending alerts that stop matching are removed
    silently and not returned; resolved alerts older than the retention are removed).
    Alerts in ``hold`` (restored after a restart, no fresh data yet) are not resolved for lack of data.
    ``samples`` (the rule's inputs) fill ``{{ $metric.NAME }}`` in its texts for the alert's own series.
    """
    changed: list[Alert] = []
    seen: set[str] = set()
    values_fps: set[str] = set()
    for series, value in values.items():
        labels, fp = _labels_fingerprint(rule, series, host)
        values_fps.add(fp)
        a = alerts.get(fp)
        active = a is not None and a.state != "resolved"
        if rule.absent or rule.passes(value, active):
            seen.add(fp)
            if a is None or a.state == "resolved":
                a = Alert(rule.name, fp, labels, {}, "pending", value, active_at=now)
                alerts[fp] = a
            a.value = value
            a.last_match_at = now
            def lookup(name: str, series: LabelSet = series) -> float | None:
                return None if samples is None else samples.get(name, {}).get(series)

            a.annotations = {
                "summary": render_template(rule.summary, labels, value, lookup),
                "description": render_template(rule.description, labels, value, lookup),
                "runbook_url": f"{runbook_url}#{rule.runbook}",
            }
            if a.state == "pending" and now - a.active_at >= rule.for_:
                a.state = "firing"
                a.fired_at = now
                changed.append(a)
    for fp, a in list(alerts.items()):
        if a.rule != rule.name or fp in seen or (fp in hold and a.state != "resolved" and fp not in values_fps):
            continue
        if a.state == "pending":
            del alerts[fp]
        elif a.state == "firing":
            if rule.keep_firing_for and now - a.last_match_at < rule.keep_firing_for:
                continue
            a.state = "resolved"
            a.resolved_at = now
            changed.append(a)
        elif a.resolved_at is not None and now - a.resolved_at > RESOLVED_RETENTION:
            del alerts[fp]
    return changed
