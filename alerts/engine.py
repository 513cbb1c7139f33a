"""The alert engine: evaluates rules when the store changes, and on a tick what time alone moves.

The engine's own task waits on the store's change event, reads the change set (which collector
instances put or dropped a snapshot) and evaluates the rules whose inputs (sample names) changed:
breach-to-page latency stays at the collector's own latency, and nothing runs on the stack of the
collector that put or of a reader. The tick does what time alone changes, and is armed at the earliest
time something is due rather than every ``evaluation_interval``: a pending alert's ``for``, a firing
alert's ``keep_firing_for``, a resolved alert's retention, the next edge of a rule's window, a held
snapshot going stale (``absent`` fires), the end of the startup grace, an escalation step; rounded up
to the ``evaluation_interval`` grid and at least every ``TICK_CAP``. Alert state lives in the state DB,
so a restart neither re-pages nor forgets.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from mevwatch.aio import cancel_and_wait, grid_after, grid_at
from mevwatch.alerts.config import AlertsConfig
from mevwatch.alerts.history import History
from mevwatch.alerts.outbox import LOST_WINDOW, Outbox
from mevwatch.alerts.router import Router
from mevwatch.alerts.rule import Rule
from mevwatch.alerts.rules import (
    DUE_TOLERANCE,
    RESOLVED_RETENTION,
    Alert,
    LabelSet,
    bucket_of,
    evaluate_rule,
    labels_fingerprint,
    labelset,
    step,
)
from mevwatch.alerts.silencing import MIGRATION as SILENCE_READ_MIGRATION
from mevwatch.alerts.silencing import clear_read, save_read
from mevwatch.alerts.sinks import Sink, build_sinks
from mevwatch.collectors.base import MetricSpec
from mevwatch.daemon.state import StateDB, StateError
from mevwatch.daemon.store import STALE_FACTOR, SampleStore, Snapshot, SnapshotKey
from mevwatch.families import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from mevwatch.redaction import redact_sink_url

if TYPE_CHECKING:
    from mevwatch.alerts.amsilences import AlertmanagerWatch

__all__ = ["ALERTS_KEY", "ENGINE_METRICS", "MIGRATIONS", "TICK_CAP", "AlertEngine"]

log = structlog.get_logger("mevwatch.alerts")

ALERTS_KEY: SnapshotKey = ("mevwatch", "alerts")
#: the longest the tick sleeps while nothing is due: the engine's own metrics are kept fresh, and silences
#: that `mevwatch silence` wrote from another process are read, at least this often
TICK_CAP = 15.0
#: the sample names a family of each class has: family name + one of these (anything else: every sample is read)
SAMPLE_SUFFIXES: dict[type[Metric], tuple[str, ...]] = {
    GaugeMetricFamily: ("",),
    CounterMetricFamily: ("_total", "_created"),
    HistogramMetricFamily: ("_bucket", "_count", "_sum"),
    InfoMetricFamily: ("_info",),
}
_MAX_FAMILIES = 65536  # family names are static in the code base; this only caps a runaway
STATES = ("pending", "firing")
SEVERITIES = ("info", "warning", "critical")
COUNT_KEYS = tuple((st, sev) for st in STATES for sev in SEVERITIES)
ALERTS = MetricSpec(
    "mevwatch_alerts", "gauge", "Active alerts by state (pending, firing) and severity", ("state", "severity"))
NOTIFICATIONS_SENT = MetricSpec(
    "mevwatch_notifications_sent", "counter", "Notifications a sink acknowledged", ("sink",))
NOTIFICATIONS_FAILED = MetricSpec(
    "mevwatch_notifications_failed", "counter", "Failed delivery attempts (each retry counts)", ("sink",))
NOTIFICATIONS_DEAD_LETTERED = MetricSpec(
    "mevwatch_notifications_dead_lettered", "counter",
    "Notifications given up on (refused with 4xx, or undeliverable too long)", ("sink",))
NOTIFICATIONS_RESENT_TO_FALLBACK = MetricSpec(
    "mevwatch_notifications_resent_to_fallback", "counter",
    "Notifications another sink gave up on (or left behind when a reload removed it), queued in full for this "
    "fallback sink", ("sink",))
NOTIFICATION_LOST = MetricSpec(
    "mevwatch_notification_lost_timestamp_seconds", "gauge",
    "When a notification was last given up on, by sink and what it carried (alert names and key labels, "
    "bounded); shown for an hour", ("sink", "lost"))
ALERT_OUTBOX_DEPTH = MetricSpec(
    "mevwatch_alert_outbox_depth", "gauge", "Notifications waiting in the outbox", ("sink",))
ALERT_OUTBOX_OLDEST_PENDING_AGE_SECONDS = MetricSpec(
    "mevwatch_alert_outbox_oldest_pending_age_seconds", "gauge",
    "Age of the oldest notification not yet acknowledged (0 when the outbox is empty)")
ALERT_RULES = MetricSpec("mevwatch_alert_rules", "gauge", "Alerting rules loaded")
ALERT_EVALUATION_ERRORS = MetricSpec(
    "mevwatch_alert_evaluation_errors", "counter", "Rule evaluations that failed with a bug")
SILENCES_ACTIVE = MetricSpec(
    "mevwatch_silences_active", "gauge",
    "Silences in effect: local ones, and those read from alerts.alertmanager_silences")
ALERTING = MetricSpec(
    "mevwatch_alerting", "info",
    "Alerting mode (standalone or fleet) and the host label mevwatch puts on its alerts (alerts.host)",
    ("alerts_host", "mode"))
ALERTMANAGER_UP = MetricSpec(
    "mevwatch_alertmanager_up", "gauge",
    "1 if the Alertmanager answered mevwatch's last request (alerts, silences or health), 0 if not", ("url",))
#: the outbox's per-sink counters: its counter key and the metric it is exposed as
NOTIFICATION_COUNTERS = (
    ("sent", NOTIFICATIONS_SENT),
    ("failed", NOTIFICATIONS_FAILED),
    ("dead_lettered", NOTIFICATIONS_DEAD_LETTERED),
    ("resent", NOTIFICATIONS_RESENT_TO_FALLBACK),
)
#: the alert engine's own metrics (docs/metrics.md, dashboards, contract test)
ENGINE_METRICS: tuple[MetricSpec, ...] = (
    ALERTS, NOTIFICATIONS_SENT, NOTIFICATIONS_FAILED, NOTIFICATIONS_DEAD_LETTERED, NOTIFICATIONS_RESENT_TO_FALLBACK,
    NOTIFICATION_LOST,
    ALERT_OUTBOX_DEPTH, ALERT_OUTBOX_OLDEST_PENDING_AGE_SECONDS, ALERT_RULES, ALERT_EVALUATION_ERRORS,
    SILENCES_ACTIVE, ALERTING,
    ALERTMANAGER_UP,
)

MIGRATIONS = [
    """
    CREATE TABLE alert_state (
        fingerprint TEXT PRIMARY KEY,
        rule TEXT NOT NULL,
        labels TEXT NOT NULL,
        annotations TEXT NOT NULL,
        state TEXT NOT NULL,
        value REAL NOT NULL,
        active_at REAL NOT NULL,
        fired_at REAL,
        resolved_at REAL,
        last_match_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE alert_history (
        at REAL NOT NULL,
        fingerprint TEXT NOT NULL,
        rule TEXT NOT NULL,
        state TEXT NOT NULL,
        severity TEXT NOT NULL,
        value REAL NOT NULL,
        labels TEXT NOT NULL,
        summary TEXT NOT NULL
    );
    CREATE INDEX alert_history_at ON alert_history (at)
    """,
    SILENCE_READ_MIGRATION,
]
HISTORY_RETENTION = 30 * 86400.0  # state changes kept for `mevwatch alerts history`


def trusted_sample_time(snap: Snapshot | None, now: float) -> float:
    """When ``snap``'s collection was made, as far as the engine trusts it: its sample time, unless that is
    in the future (a clock step: counting `for` from it would page late or never) or older than its
    collector's interval (a late run or hand-over: counting from it could page before the condition was
    seen for `for`); then, and for a snapshot without one or a dropped one (None), ``now``."""
    if snap is None or snap.sampled_at is None:
        return now
    if now - snap.max_age / STALE_FACTOR <= snap.sampled_at <= now:
        return snap.sampled_at
    return now


class AlertEngine:
    def __init__(self, cfg: AlertsConfig, store: SampleStore, state: StateDB,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.store = store
        self.state = state
        self.clock = clock
        self.rules: tuple[Rule, ...] = cfg.all_rules
        self.by_name: dict[str, list[Rule]] = {}
        self.windows: dict[str, float] = {}  # sample name -> the longest window over it: a history per series
        # a quantile rule's `_bucket` sample name -> its longest window: a history per histogram series
        self.bucket_windows: dict[str, float] = {}
        self._inputs: dict[str, tuple[str, ...]] = {}  # rule name -> the sample names it reads
        self._rule: dict[str, Rule] = {}
        # rule name -> (sample name, window) of each window its value reads: it moves with time alone
        self._windows_of: dict[str, tuple[tuple[str, float], ...]] = {}
        # sample name -> its shortest window: a series that had left it may come back with an unchanged value
        self._shortest: dict[str, float] = {}
        for r in self.rules:
            self._rule[r.name] = r
            inputs = self._inputs[r.name] = r.inputs
            name = inputs[0]
            for n in inputs:  # a `when` metric's change wakes the rule too
                self.by_name.setdefault(n, []).append(r)
            fed: list[tuple[str, float]] = [(name, r.window)] if r.window else []
            if r.window:
                windows = self.bucket_windows if r.quantile is not None else self.windows
                windows[name] = max(windows.get(name, 0.0), r.window)
            if r.when is not None and r.when.increase:  # a `when` over a counter's increase keeps its history
                self.windows[r.when.metric] = max(self.windows.get(r.when.metric, 0.0), float(r.when.increase))
                fed.append((r.when.metric, float(r.when.increase)))
            for n, w in fed:
                self._shortest[n] = min(self._shortest.get(n, w), w)
            if fed:
                self._windows_of[r.name] = tuple(fed)
        self._history_horizon = max([*self.windows.values(), *self.bucket_windows.values()], default=0.0) * 2 + 60.0
        self.samples: dict[SnapshotKey, dict[str, dict[LabelSet, float]]] = {}
        # the same series by sample name: a rule reads only the snapshots that carry its inputs
        self.by_input: dict[str, dict[SnapshotKey, dict[LabelSet, float]]] = {}
        self.seen_at: dict[SnapshotKey, float] = {}
        self.histories: dict[tuple[str, LabelSet], History] = {}
        # (`_bucket` sample name, labels but `le`) -> the history of that histogram series' buckets
        self.bucket_histories: dict[tuple[str, LabelSet], History] = {}
        self.alerts: dict[str, dict[str, Alert]] = {r.name: {} for r in self.rules}
        self.sinks: dict[str, list[Sink]] = {rc.name: build_sinks(rc, cfg.evaluation_interval) for rc in cfg.receivers}
        state.migrate("alerts_engine", MIGRATIONS)
        self.outbox = Outbox(state, [s for ss in self.sinks.values() for s in ss], cfg.outbox, clock,
                             cfg.fallback_receivers(), orphan_fallback=[cfg.receiver])
        self._sinks = sorted(s.name for ss in self.sinks.values() for s in ss)
        self.am_watch: AlertmanagerWatch | None = None
        am_urls = [u for rc in cfg.receivers for c in rc.alertmanager_configs for u in c.target_urls]
        silence_source = cfg.silence_source
        if am_urls or silence_source is not None:
            from mevwatch.alerts.amsilences import AlertmanagerWatch

            self.am_watch = AlertmanagerWatch(silence_source, am_urls, clock, mutes=cfg.silences_mute)
            for s in (s for ss in self.sinks.values() for s in ss):
                if s.kind == "alertmanager":
                    s.observer = self.am_watch.mark  # type: ignore[attr-defined]
        if silence_source is None:
            self._keep_silence_read()  # a read kept under an earlier config is no one's now
        self.router = Router(cfg, state, self.outbox, self.sinks, self.all_alerts, clock,
                             self.am_watch.mutes if cfg.silences_mute and self.am_watch else None)
        self.started_at = clock()
        self.seen_metrics: set[str] = set()
        self._unconfirmed: set[str] = set()  # restored alerts not yet re-evaluated on fresh data
        self._since = 0  # the store's sequence number up to which changes were evaluated
        self._wake: asyncio.Event | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._tick_timer: asyncio.TimerHandle | None = None
        self._tick_when = math.inf  # loop time the tick is armed for
        # rule name -> clock time at which time alone may next move its verdict (_set_due); absent: never
        self._due: dict[str, float] = {}
        self._router_due = float("-inf")  # when the router's tick has work (Router.next_due)
        self._routed_at = float("-inf")  # clock time of the router's last tick
        self._publish_due = float("-inf")  # when a value the engine's metrics show moves with time
        self._published_at = float("-inf")
        self._publish_soon = False  # a put of the engine's metrics is scheduled (the outbox changed)
        self.evaluations = 0
        self.eval_errors = 0
        # rule name -> (time, values) of its last evaluation: the daemon's verdicts for /api/v1/rules and diagnose
        self.last_values: dict[str, tuple[float, dict[LabelSet, float]]] = {}
        # ((DB changes, outbox memory changes), depth, oldest)
        self._outbox_at: tuple[tuple[int, int], dict[str, int], float | None, list[tuple[str, str, float]]] | None \
            = None
        self._pruned_at = float("-inf")  # last drop of histories beyond every window
        self._ticked_at = float("-inf")  # clock time of the last tick
        self._cap_when = math.inf  # loop time of the next keep-fresh tick (_arm)
        self._graced = False  # has a tick after the startup grace evaluated every rule?
        self._published: tuple[object, ...] | None = None  # the values of the engine's metrics last put
        # (family class, family name) -> may a sample of it be one a rule reads? Most families are not.
        self._wanted: dict[tuple[type[Metric], str], bool] = {}

    def all_alerts(self) -> Iterator[Alert]:
        # most rules hold no alert: the router walks this several times a round (bench/host.py)
        for per_rule in self.alerts.values():
            if per_rule:
                yield from per_rule.values()

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        restored = self._restore()
        self.started_at = self.clock()
        await self.outbox.start()
        if self.am_watch is not None:
            await self.am_watch.start(self._polled)
        self.router.update(a for a in restored if a.state in ("firing", "resolved"))
        self._wake = self.store.watch()
        self._wake.set()  # what the store already holds is the first change set
        self._drain_task = asyncio.create_task(self._drain(self._wake), name="alerts:changes")
        self.outbox.on_change = self._outbox_changed
        self._publish()
        self._arm(asyncio.get_running_loop())
        log.info("alert_engine_started", rules=len(self.rules), restored=len(restored),
                 receivers=len(self.sinks))

    async def stop(self) -> None:
        if self._wake is not None:
            self.store.unwatch(self._wake)
            self._wake = None
        if self._drain_task is not None:
            await cancel_and_wait(self._drain_task)
            self._drain_task = None
        if self._tick_timer is not None:
            self._tick_timer.cancel()
            self._tick_timer = None
            self._tick_when = math.inf
        self.outbox.on_change = None
        self.router.stop()
        if self.am_watch is not None:
            await self.am_watch.stop()
        await self.outbox.stop()
        self.store.drop(ALERTS_KEY)

    def _polled(self) -> None:
        """After each poll of the Alertmanagers: keep the silences read for readers of the state DB
        (``mevwatch alerts list``), look again at the groups a silence held back, and publish the
        reachability; the silences read may end or start sooner than the tick is armed for."""
        self._keep_silence_read()
        self._router_due = self._router_next(self.clock())
        self.router.recheck_held()
        self._publish()
        self._rearm()

    def _keep_silence_read(self) -> None:
        read = self.am_watch.last_read if self.am_watch is not None else None
        try:
            if read is None:
                clear_read(self.state)
            else:
                save_read(self.state, read)
        except StateError as exc:  # logged once per failing streak by the state DB; a reader then sees it age
            log.debug("silence_read_write_failed", error=str(exc))

    def _restore(self) -> list[Alert]:
        rows = self.state.query(
            "SELECT fingerprint, rule, labels, annotations, state, value, active_at, fired_at, resolved_at, "
            "last_match_at FROM alert_state"
        )
        out = []
        gone = []
        for r in rows:
            if str(r[1]) not in self.alerts:
                gone.append(str(r[0]))  # the rule was removed from the config
                continue
            a = Alert(str(r[1]), str(r[0]), json.loads(r[2]), json.loads(r[3]), r[4], float(r[5]), float(r[6]),
                      r[7], r[8], float(r[9]))
            self.alerts[a.rule][a.fingerprint] = a
            out.append(a)
            if a.state != "resolved":
                self._unconfirmed.add(a.fingerprint)
        now = self.clock()
        for name in {a.rule for a in out}:
            self._set_due(self._rule[name], self.alerts[name], {}, now, now)
        if gone:
            with self.state.transaction() as db:
                db.executemany("DELETE FROM alert_state WHERE fingerprint = ?", [(fp,) for fp in gone])
        return out

    # --- evaluation -------------------------------------------------------------------

    async def _drain(self, wake: asyncio.Event) -> None:
        """The engine's own task: woken by the store on every change, evaluates the change set (which may
        make something due sooner: a new pending alert's ``for``, a new snapshot's staleness)."""
        loop = asyncio.get_running_loop()
        while True:
            await wake.wait()
            wake.clear()
            try:
                self.evaluate_changes()
            except Exception:  # a bug here must never stop the engine
                self.eval_errors += 1
                self._publish_due = float("-inf")
                log.exception("alert_evaluation_failed")
            self._arm(loop)

    def evaluate_changes(self) -> None:
        """Ingest the snapshots put or dropped since the last call; evaluate the rules whose inputs changed."""
        self._since, keys = self.store.changes(self._since)
        if not keys:
            return
        now = self.clock()
        changed: dict[str, float] = {}  # sample name -> sample time of its newest change
        for key in keys:
            snap = self.store.get(key)
            at = trusted_sample_time(snap, now)
            for n in self._ingest(key, snap, now):
                changed[n] = max(at, changed.get(n, at))
        rules: dict[str, Rule] = {}
        ats: dict[str, float] = {}
        for n, at in changed.items():
            for r in self.by_name.get(n, ()):
                rules[r.name] = r
                ats[r.name] = max(at, ats.get(r.name, at))
        if rules:
            self._evaluate(rules.values(), now, ats)

    def _ingest(self, key: SnapshotKey, snap: Snapshot | None, now: float) -> set[str]:
        """Take in ``key``'s snapshot (None: gone); the sample names whose series differ from before."""
        names: dict[str, dict[LabelSet, float]] = {}
        by_name = self.by_name
        wanted = self._wanted
        for fam in snap.families if snap is not None else ():
            want = wanted.get((type(fam), fam.name))
            if want is None:
                want = self._family_wanted(fam)
            if want:
                for s in fam.samples:
                    if s.name in by_name:
                        names.setdefault(s.name, {})[labelset(s.labels)] = float(s.value)
        prev = self.samples.get(key)
        prev_at = self.seen_at.get(key)
        revived: set[str] = set()
        for name, series in names.items():
            before = prev.get(name, {}) if prev is not None else None
            # a series with no two points in its shortest window has no increase there: a new point,
            # even of the same value, gives it one, which is a change for its rules
            edge = now - self._shortest.get(name, 0.0)
            keep = self.bucket_windows.get(name)
            if keep and self._add_buckets(name, series, before, prev_at, now, keep, edge):
                revived.add(name)
            keep = self.windows.get(name)
            if not keep:
                continue
            for ls, v in series.items():
                hist = self.histories.get((name, ls))
                if hist is None:
                    hist = self.histories[(name, ls)] = History()
                    # A counter series that appears on a collector already reporting started at 0:
                    # its first kill/failure is an increase (Prometheus misses it).
                    if before is not None and prev_at is not None and ls not in before:
                        hist.add(prev_at, 0.0, keep)
                times = hist.times
                if len(times) - hist.start < 2 or times[-1] <= edge:
                    revived.add(name)
                hist.add(now, v, keep)
        old = prev or {}
        by_input = self.by_input
        for name in old.keys() - names.keys():
            per_key = by_input.get(name)
            if per_key is not None:
                per_key.pop(key, None)
                if not per_key:
                    del by_input[name]
        for name, series in names.items():
            by_input.setdefault(name, {})[key] = series
        if snap is None:
            self.samples.pop(key, None)
            self.seen_at.pop(key, None)
        else:
            self.samples[key] = names
            self.seen_at[key] = now
            self.seen_metrics.update(names)
        return {n for n in names.keys() | old.keys() if n in revived or names.get(n) != old.get(n)}

    def _add_buckets(self, name: str, series: dict[LabelSet, float], before: dict[LabelSet, float] | None,
                     prev_at: float | None, now: float, keep: float, edge: float) -> bool:
        """Add a point to the history of each histogram series in ``series`` (bucket samples of ``name``); is
        one of them one that had no two points since ``edge`` (a new point gives it an increase)?"""
        revived = False
        grouped: dict[LabelSet, tuple[LabelSet, dict[str, float]]] = {}
        for ls, v in series.items():
            split = bucket_of(ls)
            if split is not None:
                key, le = split
                entry = grouped.get(key)
                if entry is None:
                    entry = grouped[key] = (ls, {})
                entry[1][le] = v
        histories = self.bucket_histories
        for key, (first, buckets) in grouped.items():
            hist = histories.get((name, key))
            if hist is None or hist.columns != tuple(buckets):
                if hist is not None and set(hist.columns) == buckets.keys():
                    hist.add_row(now, [buckets[le] for le in hist.columns], keep)
                    continue
                # a new histogram series, or its buckets changed: a history of its own from here
                new = hist is None
                hist = histories[(name, key)] = History(tuple(buckets))
                # A histogram series that appears on a collector already reporting started at 0, as a counter does
                if new and before is not None and prev_at is not None and first not in before:
                    hist.add_row(prev_at, [0.0] * len(buckets), keep)
            times = hist.times
            if len(times) - hist.start < 2 or times[-1] <= edge:
                revived = True
            hist.add_row(now, buckets.values(), keep)
        return revived

    def _family_wanted(self, fam: Metric) -> bool:
        suffixes = SAMPLE_SUFFIXES.get(type(fam))
        want = suffixes is None or any(fam.name + sfx in self.by_name for sfx in suffixes)
        if len(self._wanted) < _MAX_FAMILIES:
            self._wanted[(type(fam), fam.name)] = want
        return want

    def _merged(self, name: str) -> dict[LabelSet, float]:
        per_key = self.by_input.get(name)
        if not per_key:
            return {}
        if len(per_key) == 1:
            return next(iter(per_key.values()))  # read only: evaluation never writes its samples
        out: dict[LabelSet, float] = {}
        for series in per_key.values():
            out.update(series)
        return out

    def _evaluate(self, rules: Iterable[Rule], now: float, ats: Mapping[str, float] | None = None) -> None:
        """Evaluate ``rules`` now and step their alerts; ``ats`` (rule name -> sample time of the change that
        woke it) is the time their states move at: pending from the collection that first matched, not
        from when the engine got to it. The tick's state moves at ``now``."""
        changed: list[Alert] = []
        dirty: dict[str, Alert | None] = {}
        hold = self._unconfirmed if self._unconfirmed else frozenset()
        for rule in rules:
            samples = {n: self._merged(n) for n in self._inputs[rule.name]}
            values = evaluate_rule(rule, samples, self.histories, now, self.bucket_histories)
            self.last_values[rule.name] = (now, values)
            self.evaluations += 1
            per_rule = self.alerts[rule.name]
            if hold and per_rule:
                for old, kept in self._continue_restored(rule, values, per_rule, hold):
                    dirty[old] = None
                    dirty[kept.fingerprint] = kept
            if not values and not per_rule:
                self._set_due(rule, per_rule, samples, now, now)
                continue  # nothing selected and no alert: no state to move (most rules, most of the time)
            at = ats.get(rule.name, now) if ats else now
            before = {fp: a.state for fp, a in per_rule.items()}
            changed += step(rule, values, per_rule, at, self.cfg.host, self.cfg.runbook_url, hold, samples)
            for fp in before.keys() | per_rule.keys():
                a = per_rule.get(fp)
                if a is None:
                    dirty[fp] = None
                elif before.get(fp) != a.state:
                    dirty[fp] = a
                if a is not None and a.last_match_at == at:
                    self._unconfirmed.discard(fp)
            self._set_due(rule, per_rule, samples, now, at)
        if dirty:
            self._persist(dirty)
        if changed:
            self._record_history(changed, now)
            for a in changed:
                log.info("alert_" + a.state, alertname=a.rule, labels=a.labels, value=a.value)
            self.router.update(changed)
            self._router_due = self._router_next(now)
        if dirty or changed:
            self._publish()

    def _continue_restored(self, rule: Rule, values: Mapping[LabelSet, float], per_rule: dict[str, Alert],
                           hold: Container[str]) -> list[tuple[str, Alert]]:
        """A restored alert whose labels the rule no longer gives (after an upgrade: a label now merged
        ``without``, a metric that no longer carries ``reason``) continues as the series whose labels it
        holds: re-keyed here, in the state DB and in the router's groups, with its times, so an upgrade in the
        middle of an incident neither resolves the page nor pages it again. Returns (old fingerprint, alert)."""
        held = [a for fp, a in per_rule.items() if fp in hold and a.state != "resolved"]
        if not held:
            return []
        fresh = [labels_fingerprint(rule, series, self.cfg.host) for series in values]
        new_fps = {fp for _, fp in fresh}
        held = [a for a in held if a.fingerprint not in new_fps]
        moved: list[tuple[str, Alert]] = []
        for labels, fp in fresh:
            if fp in per_rule:
                continue
            a = next((a for a in held if labels.items() <= a.labels.items()), None)
            if a is None:
                continue
            held.remove(a)
            old = a.fingerprint
            del per_rule[old]
            a.fingerprint, a.labels = fp, labels
            per_rule[fp] = a
            self.router.rekey(old, a)
            log.info("alert_continued", alertname=rule.name, labels=labels, was=old)
            moved.append((old, a))
        return moved

    def _persist(self, dirty: dict[str, Alert | None]) -> None:
        try:
            with self.state.transaction() as db:
                for fp, a in dirty.items():
                    if a is None:
                        db.execute("DELETE FROM alert_state WHERE fingerprint = ?", (fp,))
                        continue
                    db.execute(
                        "INSERT OR REPLACE INTO alert_state (fingerprint, rule, labels, annotations, state, value, "
                        "active_at, fired_at, resolved_at, last_match_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (fp, a.rule, json.dumps(a.labels), json.dumps(a.annotations), a.state, a.value,
                         a.active_at, a.fired_at, a.resolved_at, a.last_match_at),
                    )
        except StateError as exc:  # the state DB logs a failing streak once; the alerts live on in memory
            log.debug("alert_state_write_failed", error=str(exc))

    def _record_history(self, changed: list[Alert], now: float) -> None:
        """Append each state change (firing, resolved) to alert_history; drop rows past the retention."""
        try:
            with self.state.transaction() as db:
                db.executemany(
                    "INSERT INTO alert_history (at, fingerprint, rule, state, severity, value, labels, summary) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    [(now, a.fingerprint, a.rule, a.state, a.severity, a.value, json.dumps(a.labels),
                      a.annotations.get("summary", "")) for a in changed],
                )
                db.execute("DELETE FROM alert_history WHERE at < ?", (now - HISTORY_RETENTION,))
        except StateError as exc:  # logged once per failing streak by the state DB
            log.debug("alert_history_write_failed", error=str(exc))

    def tick(self, keep_fresh: bool = False) -> None:
        """Time-driven work, due now: drop stale collectors' data, evaluate the rules whose due time came
        (_set_due), escalate, publish. ``keep_fresh``: the tick that comes at least every TICK_CAP
        (_arm) reads the silences other processes wrote and keeps the engine's metrics fresh.

        A rule's verdict moves with time alone only while it holds an alert (``for``, ``keep_firing_for``,
        the retention of a resolved alert) or reads a window whose next edge comes (a point leaves it);
        otherwise it is a function of its inputs, evaluated when they change (evaluate_changes). The first
        tick after the startup grace evaluates every rule (``absent`` over what never came)."""
        self.evaluate_changes()
        now = self.clock()
        gone: set[str] = set()
        for key in [k for k in self.samples if self.store.get(k) is None]:
            gone |= self._ingest(key, None, now)  # a dead or removed collector: its series are gone (absent fires)
        in_grace = now - self.started_at < self.cfg.startup_grace
        if not in_grace:
            self._unconfirmed.clear()
        if not in_grace and not self._graced:
            self._graced = True  # every rule not evaluated yet, and those holding an alert restored or not
            last, due = self.last_values, self._due
            rules = {r.name: r for r in self.rules
                     if self.alerts[r.name] or r.name not in last or due.get(r.name, math.inf) <= now + DUE_TOLERANCE}
        else:
            rules = {n: self._rule[n] for n, at in self._due.items() if at <= now + DUE_TOLERANCE}
            if in_grace:  # absent waits for the collectors' first runs
                seen = self.seen_metrics
                rules = {n: r for n, r in rules.items() if self._inputs[n][0] in seen}
        for n in gone:
            for r in self.by_name.get(n, ()):
                rules[r.name] = r
        if rules:
            self._evaluate(rules.values(), now)
        if not self._pruned_at <= now < self._pruned_at + 60.0:  # histories beyond every window: once a minute
            self._pruned_at = now
            cutoff = now - self._history_horizon
            for histories in (self.histories, self.bucket_histories):
                for hk in [hk for hk, h in histories.items() if (t := h.last_time()) is None or t < cutoff]:
                    del histories[hk]
        if keep_fresh or self._router_due <= now or now - self._routed_at >= TICK_CAP:
            self._routed_at = now
            self.router.tick()
            self._router_due = self._router_next(now)
        else:
            self.router.run_due()  # its own timer flushes too; without a running loop only this does
        if keep_fresh or self._publish_due <= now:
            self._publish()
        self._ticked_at = now

    def _router_next(self, now: float) -> float:
        """When the router's tick next has work (Router.next_due), or an Alertmanager silence that mutes
        the direct sinks starts or ends."""
        due = self.router.next_due(now)
        return self._alertmanager_silence_change(now, due) if self.router.external_silences is not None else due

    def _alertmanager_silence_change(self, now: float, due: float) -> float:
        """The earlier of ``due`` and the next start or end of an Alertmanager silence read."""
        for sil in self.am_watch.silences if self.am_watch is not None else ():
            for at in (sil.starts_at, sil.ends_at):
                if now < at < due:
                    due = at
        return due

    def _set_due(self, rule: Rule, per_rule: Mapping[str, Alert], samples: Mapping[str, Mapping[LabelSet, float]],
                 now: float, stepped: float) -> None:
        """When time alone may next move ``rule``'s verdict, just evaluated at ``now`` over ``samples`` (its
        alerts stepped at ``stepped``): a pending alert's ``active_at + for``; a firing alert's end of
        ``keep_firing_for`` (while the condition holds, every tick: the hold runs from the last evaluation
        that saw it); a resolved alert's end of retention; the next edge of a window over any of its series
        (History.next_edge)."""
        due = math.inf
        for a in per_rule.values():
            if a.state == "pending":
                at = a.active_at + rule.for_
            elif a.state == "firing":
                if not rule.keep_firing_for:
                    continue
                at = now if a.last_match_at >= stepped else a.last_match_at + rule.keep_firing_for
            else:
                at = (a.resolved_at if a.resolved_at is not None else now) + RESOLVED_RETENTION
            if at < due:
                due = at
        for name, window in self._windows_of.get(rule.name, ()):
            if name in self.bucket_windows and rule.quantile is not None:  # a history per histogram series
                hists: Iterable[History] = [h for (n, _), h in self.bucket_histories.items() if n == name]
            else:
                histories = self.histories
                hists = [h for ls in samples.get(name, ()) if (h := histories.get((name, ls))) is not None]
            for hist in hists:
                edge = hist.next_edge(window, now)
                if edge is not None and edge < due:
                    due = edge
        if due == math.inf:
            self._due.pop(rule.name, None)
        else:
            self._due[rule.name] = due

    def _rearm(self) -> None:
        """_arm, when the engine runs (started, in its loop); a harness that ticks by hand has no timer."""
        if self._drain_task is not None:
            self._arm(asyncio.get_running_loop())

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Arm the tick for the earliest time something is due: a rule (_set_due), a snapshot the engine
        holds going stale, the end of the startup grace, the router's work (Router.next_due), a value of
        the engine's metrics that moves with time; at most TICK_CAP after the last tick. On the loop
        clock's grid k * evaluation_interval, as the collectors' runs are (the supervisor's next_slot):
        a tick due with runs shares their wake-up of the process. Only ever moved earlier here: a tick
        that comes before anything is due finds nothing to do and arms the next."""
        interval = self.cfg.evaluation_interval
        now = self.clock()
        t = loop.time()
        due = min(self._due.values(), default=math.inf)
        due = min(due, self._router_due, self._publish_due)
        if not self._graced:
            due = min(due, self.started_at + self.cfg.startup_grace)
        delay = max(due - now, 0.0)
        store = self.store
        for key, names in self.samples.items():
            if names:
                left = store.stale_in(key)
                if left is not None and left < delay:
                    delay = left
        # The keep-fresh tick (_cap_when) on the grid k * cap of the loop clock, cap a multiple of the
        # interval: it shares the wake-up of the collectors' runs at that interval (every 15 s on a host
        # config) instead of coming TICK_CAP after whatever tick came last.
        cap = interval * math.ceil(TICK_CAP / interval - 1e-9)
        last = self._ticked_at - now + t  # the last tick in loop time
        self._cap_when = grid_after(last, cap, early=1e-6) if math.isfinite(last) else t
        delay = min(delay, max(self._cap_when - t, 0.0))
        # on the grid point at or after the due time, within DUE_TOLERANCE: a due time on the grid (a `for`
        # counted from a run's slot) lands a few µs past it once converted from the wall clock
        when = max(grid_at(t + delay - DUE_TOLERANCE, interval), grid_after(t, interval))
        if when < self._tick_when:
            if self._tick_timer is not None:
                self._tick_timer.cancel()
            self._tick_timer = loop.call_at(when, self._on_tick, loop)
            self._tick_when = when

    def _on_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        # A timer callback, not a sleeping task: one loop iteration and no future per tick.
        keep_fresh = self._tick_when >= self._cap_when - DUE_TOLERANCE
        self._tick_timer = None
        self._tick_when = math.inf
        try:
            self.tick(keep_fresh)
        except Exception:
            self.eval_errors += 1
            self._publish_due = float("-inf")
            log.exception("alert_tick_failed")
        try:
            self._arm(loop)
        except Exception:  # never left without a tick
            log.exception("alert_tick_failed")
            self._tick_when = loop.time() + self.cfg.evaluation_interval
            self._tick_timer = loop.call_at(self._tick_when, self._on_tick, loop)

    # --- self metrics -----------------------------------------------------------------

    def _publish(self) -> None:
        """Put the engine's own metrics when a value they show changed (when an alert changed state, the
        outbox changed, or on a tick at which a value moves with time: see _publish_due_after); otherwise
        only keep their snapshot fresh (at least every TICK_CAP), so neither the engine's reading them
        back nor the scrape's render of the ``mevwatch`` kind runs every tick. The engine reads them
        back from the store like any snapshot; that puts them again only if a rule on them changed an
        alert's state, which cannot go on: a state moves on with time, not by itself."""
        self._publish_soon = False
        now = self.clock()
        self._published_at = now
        self._publish_due = now + TICK_CAP
        try:
            inputs = self._metric_inputs()
            self._publish_due = self._publish_due_after(now)
        except StateError as exc:
            log.error("alert_metrics_failed", error=str(exc))
            return
        if inputs == self._published and self.store.get(ALERTS_KEY) is not None:
            self.store.touch(ALERTS_KEY)
            return
        self._published = inputs
        # stale after twice the longest the tick sleeps (TICK_CAP, or an evaluation_interval beyond it)
        self.store.put(ALERTS_KEY, self._families(inputs), interval=max(self.cfg.evaluation_interval, TICK_CAP))

    def _publish_due_after(self, now: float) -> float:
        """When a value the engine's metrics show next moves with time alone: while the outbox holds a
        notification, its oldest one's age (every tick); a lost notification leaving the hour it is shown;
        a silence ending (or an Alertmanager silence starting); else never: the keep-fresh tick (_arm) keeps
        them fresh."""
        _, oldest, lost = self._outbox_state()
        if oldest is not None:
            return now
        due = math.inf
        for _, _, at in lost:
            if now < at + LOST_WINDOW < due:
                due = at + LOST_WINDOW
        return self._alertmanager_silence_change(now, min(due, self.router.silences.next_end(now)))

    def _outbox_changed(self) -> None:
        """The outbox queued or settled a notification: the engine's metrics are put in a loop callback of
        their own, not on the stack of the outbox's worker."""
        if self._publish_soon:
            return
        self._publish_soon = True
        asyncio.get_running_loop().call_soon(self._publish_and_arm)

    def _publish_and_arm(self) -> None:
        self._publish()  # while the outbox holds a notification, its age moves: the tick comes sooner
        self._rearm()

    def _outbox_state(self) -> tuple[dict[str, int], float | None, list[tuple[str, str, float]]]:
        """Outbox depth by sink, its oldest entry's creation time and what was lost in the last hour,
        queried again only after a write to the state DB (only this daemon's connection writes the outbox)."""
        changes = (self.state.total_changes, self.outbox.changes)  # the outbox may hold rows in memory
        if self._outbox_at is None or self._outbox_at[0] != changes:
            self._outbox_at = (changes, self.outbox.depth(), self.outbox.oldest_created(),
                               self.outbox.lost(self.clock() - LOST_WINDOW))
        return self._outbox_at[1], self._outbox_at[2], self._outbox_at[3]

    def _metric_inputs(self) -> tuple[object, ...]:
        """Every value the engine's own metrics show, in the order _families() reads them."""
        counts = dict.fromkeys(COUNT_KEYS, 0)
        for per_rule in self.alerts.values():
            if per_rule:
                for a in per_rule.values():
                    if a.state in STATES:
                        counts[(a.state, a.severity if a.severity in SEVERITIES else "warning")] += 1
        counters = self.outbox.counters()
        sinks = self._sinks
        depth, oldest, lost_rows = self._outbox_state()
        now = self.clock()
        lost: dict[tuple[str, str], float] = {}
        for sink, what, at in lost_rows:
            if at > now - LOST_WINDOW:
                lost[(sink, what)] = max(at, lost.get((sink, what), 0.0))
        return (
            tuple(counts.values()),
            tuple(tuple(float(counters[what][s]) for s in sinks) for what, _ in NOTIFICATION_COUNTERS),
            tuple(float(depth.get(s, 0)) for s in sinks),
            max(self.clock() - oldest, 0.0) if oldest is not None else 0.0,
            float(self.eval_errors),
            float(self.router.silences.in_effect(self.clock()) + self._alertmanager_silences()),
            tuple(sorted(self.am_watch.reachable.items())) if self.am_watch is not None else (),
            tuple(sorted(lost.items())),
        )

    def _alertmanager_silences(self) -> int:
        """Silences read from the silence source that mute the direct sinks now (0 while it is unreadable)."""
        if self.am_watch is None or self.router.external_silences is None:
            return 0
        now = self.clock()
        return sum(1 for s in self.am_watch.silences if s.active(now))

    def families(self) -> list[Metric]:
        return self._families(self._metric_inputs())

    def _families(self, inputs: tuple[Any, ...]) -> list[Metric]:
        counts, notified, depth, oldest_age, eval_errors, silences, am_up, lost = inputs
        alerts = ALERTS.gauge()
        for (st, sev), n in zip(COUNT_KEYS, counts, strict=True):
            alerts.add_metric([st, sev], float(n))
        sinks = self._sinks
        fams: list[Metric] = [alerts]
        for (_, spec), values in zip(NOTIFICATION_COUNTERS, notified, strict=True):
            fam = spec.counter()
            for s, v in zip(sinks, values, strict=True):
                fam.add_metric([s], v)
            fams.append(fam)
        lfam = NOTIFICATION_LOST.gauge()
        for (s, what), at in lost:
            lfam.add_metric([s, what], at)
        fams.append(lfam)
        dfam = ALERT_OUTBOX_DEPTH.gauge()
        for s, v in zip(sinks, depth, strict=True):
            dfam.add_metric([s], v)
        fams.append(dfam)
        fams.append(ALERT_OUTBOX_OLDEST_PENDING_AGE_SECONDS.gauge(oldest_age))
        fams.append(ALERT_RULES.gauge(float(len(self.rules))))
        fams.append(ALERT_EVALUATION_ERRORS.counter(eval_errors))
        fams.append(SILENCES_ACTIVE.gauge(silences))
        fams.append(ALERTING.info({"alerts_host": self.cfg.host, "mode": self.cfg.mode}))
        if am_up:
            up = ALERTMANAGER_UP.gauge()
            for url, ok in am_up:
                up.add_metric([redact_sink_url(url)], 1.0 if ok else 0.0)
            fams.append(up)
        return fams

    def status(self) -> dict[str, Any]:
        return {"rules": len(self.rules), "alerts": [a.labels for a in self.all_alerts() if a.state == "firing"]}
