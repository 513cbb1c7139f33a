"""Pure rule evaluation: series selection, increase/rate over a window, histogram quantiles, state machine.

Everything here takes the time as an argument, so it is tested without clocks or I/O.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from mevwatch.alerts.history import History
from mevwatch.alerts.matchers import matches_all
from mevwatch.alerts.rule import Rule
from mevwatch.alerts.templates import render_template

__all__ = [
    "DUE_TOLERANCE",
    "RESOLVED_RETENTION",
    "Alert",
    "LabelSet",
    "bucket_of",
    "evaluate_rule",
    "fingerprint",
    "histogram_quantile",
    "increase",
    "labels_fingerprint",
    "merged_without",
    "step",
]

LabelSet = tuple[tuple[str, str], ...]
State = Literal["pending", "firing", "resolved"]
RESOLVED_RETENTION = 900.0  # resolved alerts are kept (and re-sent to Alertmanager) for 15 minutes
#: how early a time-driven verdict may be taken: an alert pending since a run's slot fires on the tick ``for``
#: later, on the same grid, as Prometheus' does ``for`` after the evaluation that first matched. The slot is
#: stamped in Unix time with the offset read at the run, the tick reads the wall clock itself: the two
#: differ by the µs between clock reads and by the wall clock's slew over ``for`` (up to 0.5 ms a second
#: under NTP), so that "``for`` has passed" tested exactly comes a tick late (bench/stack.py saw every
#: page of three rounds one evaluation_interval late). The supervisor's SLOT_TOLERANCE, for the same grid.
DUE_TOLERANCE = 0.05


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
    bucket_histories: Mapping[tuple[str, LabelSet], History] | None = None,
) -> dict[LabelSet, float]:
    """Value of every series the rule selects (before comparing with the threshold).

    ``samples`` maps sample names to {labels: value}; ``histories`` holds counter points by
    (sample name, labels) for increase/rate; ``bucket_histories`` the points of a histogram's buckets
    by (``_bucket`` sample name, labels but ``le``) for a quantile over a window, their ``le`` as columns.
    The series are merged over the rule's ``without`` labels (with ``when``, before they are paired).
    """
    values = _evaluate(rule, samples, histories, now, bucket_histories)
    return merged_without(values, rule.without) if rule.without and rule.when is None else values


def merged_without(values: Mapping[LabelSet, float], drop: Iterable[str]) -> dict[LabelSet, float]:
    """``values`` with the labels ``drop`` left out and the series that then coincide merged into their highest
    value (PromQL ``max without (...)``: NaN only when every merged value is NaN)."""
    gone = frozenset(drop)
    out: dict[LabelSet, float] = {}
    for ls, v in values.items():
        key = tuple(kv for kv in ls if kv[0] not in gone)
        have = out.get(key)
        if have is None or have != have or v > have:
            out[key] = v
    return out


def _evaluate(
    rule: Rule, samples: Mapping[str, Series], histories: Mapping[tuple[str, LabelSet], History], now: float,
    bucket_histories: Mapping[tuple[str, LabelSet], History] | None,
) -> dict[LabelSet, float]:
    window = rule.window
    if rule.quantile is not None:
        name = rule.metric + "_bucket"
        if window:
            return _quantiles_over_window(rule, samples.get(name, {}), bucket_histories or {}, name, window, now)
        groups: dict[LabelSet, list[tuple[float, float]]] = {}
        for ls, v in samples.get(name, {}).items():
            labels = dict(ls)
            le = labels.pop("le", None)
            if le is None or not matches_all(rule.matchers, labels):
                continue
            groups.setdefault(labelset(labels), []).append((float(le), v))
        out = {ls: histogram_quantile(rule.quantile, bs) for ls, bs in groups.items()}
        return {ls: v for ls, v in out.items() if not math.isnan(v)}
    selected: dict[LabelSet, float] = {}
    for ls, v in samples.get(rule.metric, {}).items():
        if rule.matchers and not matches_all(rule.matchers, dict(ls)):
            continue
        if window:
            hist = histories.get((rule.metric, ls))
            inc = hist.increase(window, now) if hist else None
            if inc is None:
                continue
            v = inc / window if rule.rate else inc
        selected[ls] = v
    if rule.when is not None:
        # PromQL `max without (...) (...) and on (...) condition`: the series are merged before they are paired
        merged = merged_without(selected, rule.without) if rule.without else selected
        return _paired(rule, merged, samples, histories, now)
    if rule.absent:
        if selected:
            return {}
        return {labelset({m.name: m.value for m in rule.matchers if m.op == "="}): 1.0}
    return selected


def bucket_of(ls: LabelSet) -> tuple[LabelSet, str] | None:
    """A bucket sample's labels as (its histogram series' labels, its ``le``); None without ``le``."""
    for i, (k, v) in enumerate(ls):
        if k == "le":
            return ls[:i] + ls[i + 1:], v
    return None


def _quantiles_over_window(
    rule: Rule, buckets: Series, histories: Mapping[tuple[str, LabelSet], History], name: str, window: float,
    now: float,
) -> dict[LabelSet, float]:
    """The rule's quantile of each histogram series it selects over its window: every bucket's increase, read
    from the series' history (one per histogram series, a bucket per column), for the series present now."""
    assert rule.quantile is not None
    present: dict[LabelSet, None] = {}
    for ls in buckets:
        split = bucket_of(ls)
        if split is not None:
            present[split[0]] = None
    out: dict[LabelSet, float] = {}
    for series in present:
        if rule.matchers and not matches_all(rule.matchers, dict(series)):
            continue
        hist = histories.get((name, series))
        incs = None if hist is None else hist.increases(window, now)
        if hist is None or incs is None:
            continue
        v = histogram_quantile(rule.quantile, zip(map(float, hist.columns), incs, strict=True))
        if not math.isnan(v):
            out[series] = v
    return out


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
            inc = hist.increase(float(cond.increase), now) if hist else None
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


def label_of_series(series_of: Series, series: LabelSet, label: str) -> str | None:
    """``label`` of the first series (in label order) of ``series_of`` that carries every label of ``series`` and
    whose value is not 0: ``{{ $metric.NAME | label "LABEL" }}``, as Prometheus' ``query`` of NAME on the alert's
    labels ``!= 0``, ``first``. A state set (1 for the reason or state that holds, 0 for every other) names
    the one that holds; an info series (value 1) is always found."""
    own = {kv for kv in series if kv[0] != "__name__"}
    for ls in sorted(series_of):
        if own.issubset(ls) and series_of[ls] != 0:
            return dict(ls).get(label)
    return None


def alert_labels(rule: Rule, series: LabelSet, host: str) -> dict[str, str]:
    return labels_fingerprint(rule, series, host)[0]


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


def labels_fingerprint(rule: Rule, series: LabelSet, host: str) -> tuple[dict[str, str], str]:
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

    ``now`` is the time of the data ``values`` come from (the engine passes the sample time of the
    collection that woke the rule, or the tick's time): an alert is pending from the collection that
    first matched and fires once ``for`` has passed since, at the first evaluation at or after it.
    Returns the alerts whose state changed (pending alerts that stop matching are removed
    silently and not returned; resolved alerts older than the retention are removed).
    Alerts in ``hold`` (restored after a restart, no fresh data yet) are not resolved for lack of data.
    ``samples`` (the rule's inputs) fill ``{{ $metric.NAME }}`` in its texts for the alert's own series.
    """
    changed: list[Alert] = []
    seen: set[str] = set()
    values_fps: set[str] = set()
    texts = rule.texts
    reads_samples = any("$metric" in t for t in texts.values())
    for series, value in values.items():
        labels, fp = labels_fingerprint(rule, series, host)
        values_fps.add(fp)
        a = alerts.get(fp)
        active = a is not None and a.state != "resolved"
        if rule.absent or rule.passes(value, active):
            seen.add(fp)
            if a is None or a.state == "resolved":
                a = Alert(rule.name, fp, labels, {}, "pending", value, active_at=now)
                alerts[fp] = a
            # the texts are a function of the labels, the value and the {{ $metric.NAME }} samples: rendered
            # again only when one of them may have moved (a pending or firing alert is stepped every tick),
            # and for an alert restored from the state DB (the rule's texts may have changed since)
            stale = not a.annotations or a.value != value or reads_samples or fp in hold
            a.value = value
            # an evaluation woken by a collection may carry a time before the tick that last saw the series
            a.last_match_at = max(a.last_match_at, now)
            if stale:
                def lookup(name: str, series: LabelSet = series) -> float | None:
                    return None if samples is None else samples.get(name, {}).get(series)

                def label_of(name: str, label: str, series: LabelSet = series) -> str | None:
                    return None if samples is None else label_of_series(samples.get(name, {}), series, label)

                a.annotations = {
                    **{name: render_template(text, labels, value, lookup, rule.threshold, rule.for_,
                                             window=rule.text_window, label_of=label_of)
                       for name, text in texts.items()},
                    "runbook_url": f"{runbook_url}#{rule.runbook}",
                }
            if a.state == "pending" and now - a.active_at >= rule.for_ - DUE_TOLERANCE:
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
            a.resolved_at = max(now, a.fired_at or now)  # never before it fired (see last_match_at)
            changed.append(a)
        elif a.resolved_at is not None and now - a.resolved_at > RESOLVED_RETENTION:
            del alerts[fp]
    return changed
