"""The alert engine: evaluates rules when the store changes, and all of them on a tick.

The engine's own task waits on the store's change event, reads the change set (which collector
instances put or dropped a snapshot) and evaluates the rules whose inputs (sample names) changed:
breach-to-page latency stays at the collector's own latency, and nothing runs on the stack of the
collector that put or of a reader. The tick, every ``evaluation_interval``, evaluates every rule:
it handles what time alone changes (``for``, ``keep_firing_for``, windows, ``absent``, stale
collectors, escalation). Alert state lives in the state DB, so a restart neither re-pages nor forgets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import structlog

from mevwatch.alerts.config import AlertsConfig
from mevwatch.alerts.outbox import LOST_WINDOW, Outbox
from mevwatch.alerts.router import Router
from mevwatch.alerts.rule import Rule
from mevwatch.alerts.rules import Alert, History, LabelSet, evaluate_rule, labelset, step
from mevwatch.alerts.sinks import Sink, build_sinks
from mevwatch.collectors.base import MetricSpec
from mevwatch.daemon.state import StateDB, StateError
from mevwatch.daemon.store import SampleStore, Snapshot, SnapshotKey
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

__all__ = ["ALERTS_KEY", "ENGINE_METRICS", "MIGRATIONS", "AlertEngine"]

log = structlog.get_logger("mevwatch.alerts")

ALERTS_KEY: SnapshotKey = ("mevwatch", "alerts")
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
)
#: the alert engine's own metrics (docs/metrics.md, dashboards, contract test)
ENGINE_METRICS: tuple[MetricSpec, ...] = (
    ALERTS, NOTIFICATIONS_SENT, NOTIFICATIONS_FAILED, NOTIFICATIONS_DEAD_LETTERED, NOTIFICATION_LOST,
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
]
HISTORY_RETENTION = 30 * 86400.0  # state changes kept for `mevwatch alerts history`


class AlertEngine:
    def __init__(self, cfg: AlertsConfig, store: SampleStore, state: StateDB,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.store = store
        self.state = state
        self.clock = clock
        self.rules: tuple[Rule, ...] = cfg.all_rules
        self.by_name: dict[str, list[Rule]] = {}
        self.windows: dict[str, float] = {}
        self._plan: list[tuple[Rule, str]] = []  # every rule with the sample name it reads
        for r in self.rules:
            name = r.inputs[0]
            self._plan.append((r, name))
            for n in r.inputs:  # a `when` metric's change wakes the rule too
                self.by_name.setdefault(n, []).append(r)
            if r.window:
                self.windows[name] = max(self.windows.get(name, 0.0), r.window)
            if r.when is not None and r.when.increase:  # a `when` over a counter's increase keeps its history
                self.windows[r.when.metric] = max(self.windows.get(r.when.metric, 0.0), float(r.when.increase))
        self._history_horizon = max(self.windows.values(), default=0.0) * 2 + 60.0
        self.samples: dict[SnapshotKey, dict[str, dict[LabelSet, float]]] = {}
        self.seen_at: dict[SnapshotKey, float] = {}
        self.histories: dict[tuple[str, LabelSet], History] = {}
        self.alerts: dict[str, dict[str, Alert]] = {r.name: {} for r in self.rules}
        self.sinks: dict[str, list[Sink]] = {rc.name: build_sinks(rc, cfg.evaluation_interval) for rc in cfg.receivers}
        state.migrate("alerts_engine", MIGRATIONS)
        self.outbox = Outbox(state, [s for ss in self.sinks.values() for s in ss], cfg.outbox, clock)
        self._sinks = sorted(s.name for ss in self.sinks.values() for s in ss)
        self.am_watch: AlertmanagerWatch | None = None
        am_urls = [u for rc in cfg.receivers for c in rc.alertmanager_configs for u in c.target_urls]
        silence_source = cfg.alertmanager_silences if cfg.mode == "standalone" else None
        if am_urls or silence_source is not None:
            from mevwatch.alerts.amsilences import AlertmanagerWatch

            self.am_watch = AlertmanagerWatch(silence_source, am_urls, clock)
            for s in (s for ss in self.sinks.values() for s in ss):
                if s.kind == "alertmanager":
                    s.observer = self.am_watch.mark  # type: ignore[attr-defined]
        self.router = Router(cfg, state, self.outbox, self.sinks, self.all_alerts, clock,
                             self.am_watch.mutes if silence_source is not None and self.am_watch else None)
        self.started_at = clock()
        self.seen_metrics: set[str] = set()
        self._unconfirmed: set[str] = set()  # restored alerts not yet re-evaluated on fresh data
        self._since = 0  # the store's sequence number up to which changes were evaluated
        self._wake: asyncio.Event | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._tick_timer: asyncio.TimerHandle | None = None
        self._next_tick = 0.0  # loop time of the next tick
        self.evaluations = 0
        self.eval_errors = 0
        # rule name -> (time, values) of its last evaluation: the daemon's verdicts for /api/v1/rules and diagnose
        self.last_values: dict[str, tuple[float, dict[LabelSet, float]]] = {}
        # ((DB changes, outbox memory changes), depth, oldest)
        self._outbox_at: tuple[tuple[int, int], dict[str, int], float | None, list[tuple[str, str, float]]] | None \
            = None
        self._pruned_at = float("-inf")  # last drop of histories beyond every window
        # (family class, family name) -> may a sample of it be one a rule reads? Most families are not.
        self._wanted: dict[tuple[type[Metric], str], bool] = {}

    def all_alerts(self) -> Iterator[Alert]:
        for per_rule in self.alerts.values():
            yield from per_rule.values()

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        restored = self._restore()
        self.started_at = self.clock()
        await self.outbox.start()
        if self.am_watch is not None:
            await self.am_watch.start(self._publish)
        self.router.update(a for a in restored if a.state in ("firing", "resolved"))
        self._wake = self.store.watch()
        self._wake.set()  # what the store already holds is the first change set
        self._drain_task = asyncio.create_task(self._drain(self._wake), name="alerts:changes")
        loop = asyncio.get_running_loop()
        # On the loop clock's grid k * evaluation_interval, as the collectors' runs are (the supervisor's
        # next_slot): a tick due with runs shares their wake-up of the process instead of one of its own.
        interval = self.cfg.evaluation_interval
        self._next_tick = (math.floor(loop.time() / interval) + 1) * interval
        self._tick_timer = loop.call_at(self._next_tick, self._on_tick, loop)
        self._publish()
        log.info("alert_engine_started", rules=len(self.rules), restored=len(restored),
                 receivers=len(self.sinks))

    async def stop(self) -> None:
        if self._wake is not None:
            self.store.unwatch(self._wake)
            self._wake = None
        if self._drain_task is not None:
            self._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task
            self._drain_task = None
        if self._tick_timer is not None:
            self._tick_timer.cancel()
            self._tick_timer = None
        self.router.stop()
        if self.am_watch is not None:
            await self.am_watch.stop()
        await self.outbox.stop()
        self.store.drop(ALERTS_KEY)

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
        if gone:
            with self.state.transaction() as db:
                db.executemany("DELETE FROM alert_state WHERE fingerprint = ?", [(fp,) for fp in gone])
        return out

    # --- evaluation -------------------------------------------------------------------

    async def _drain(self, wake: asyncio.Event) -> None:
        """The engine's own task: woken by the store on every change, evaluates the change set."""
        while True:
            await wake.wait()
            wake.clear()
            try:
                self.evaluate_changes()
            except Exception:  # a bug here must never stop the engine
                self.eval_errors += 1
                log.exception("alert_evaluation_failed")

    def evaluate_changes(self) -> None:
        """Ingest the snapshots put or dropped since the last call; evaluate the rules whose inputs changed."""
        self._since, keys = self.store.changes(self._since)
        if not keys:
            return
        now = self.clock()
        changed: set[str] = set()
        for key in keys:
            changed |= self._ingest(key, self.store.get(key), now)
        rules = {r.name: r for n in changed for r in self.by_name.get(n, ())}
        if rules:
            self._evaluate(rules.values(), now)

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
        for name, series in names.items():
            keep = self.windows.get(name)
            if not keep:
                continue
            before = prev.get(name, {}) if prev is not None else None
            for ls, v in series.items():
                hist = self.histories.get((name, ls))
                if hist is None:
                    hist = self.histories[(name, ls)] = History()
                    # A counter series that appears on a collector already reporting started at 0:
                    # its first kill/failure is an increase (Prometheus misses it).
                    if before is not None and prev_at is not None and ls not in before:
                        hist.add(prev_at, 0.0, keep)
                hist.add(now, v, keep)
        old = prev or {}
        if snap is None:
            self.samples.pop(key, None)
            self.seen_at.pop(key, None)
        else:
            self.samples[key] = names
            self.seen_at[key] = now
            self.seen_metrics.update(names)
        return {n for n in names.keys() | old.keys() if names.get(n) != old.get(n)}

    def _family_wanted(self, fam: Metric) -> bool:
        suffixes = SAMPLE_SUFFIXES.get(type(fam))
        want = suffixes is None or any(fam.name + sfx in self.by_name for sfx in suffixes)
        if len(self._wanted) < _MAX_FAMILIES:
            self._wanted[(type(fam), fam.name)] = want
        return want

    def _merged(self, name: str) -> dict[LabelSet, float]:
        out: dict[LabelSet, float] = {}
        for per_key in self.samples.values():
            series = per_key.get(name)
            if series:
                out.update(series)
        return out

    def _evaluate(self, rules: Iterable[Rule], now: float) -> None:
        changed: list[Alert] = []
        dirty: dict[str, Alert | None] = {}
        hold = self._unconfirmed if self._unconfirmed else frozenset()
        for rule in rules:
            samples = {n: self._merged(n) for n in rule.inputs}
            values = evaluate_rule(rule, samples, self.histories, now)
            self.last_values[rule.name] = (now, values)
            self.evaluations += 1
            per_rule = self.alerts[rule.name]
            if not values and not per_rule:
                continue  # nothing selected and no alert: no state to move (most rules, most of the time)
            before = {fp: a.state for fp, a in per_rule.items()}
            changed += step(rule, values, per_rule, now, self.cfg.host, self.cfg.runbook_url, hold, samples)
            for fp in before.keys() | per_rule.keys():
                a = per_rule.get(fp)
                if a is None:
                    dirty[fp] = None
                elif before.get(fp) != a.state:
                    dirty[fp] = a
                if a is not None and a.last_match_at == now:
                    self._unconfirmed.discard(fp)
        if dirty:
            self._persist(dirty)
        if changed:
            self._record_history(changed, now)
            for a in changed:
                log.info("alert_" + a.state, alertname=a.rule, labels=a.labels, value=a.value)
            self.router.update(changed)
        if dirty or changed:
            self._publish()

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

    def tick(self) -> None:
        """Time-driven work: drop stale collectors' data, evaluate every rule, escalate, flush, publish."""
        self.evaluate_changes()
        now = self.clock()
        for key in [k for k in self.samples if self.store.get(k) is None]:
            self._ingest(key, None, now)  # a dead or removed collector: its series are gone (absent fires)
        in_grace = now - self.started_at < self.cfg.startup_grace
        if not in_grace:
            self._unconfirmed.clear()
        seen = self.seen_metrics
        # during the startup grace only the rules with data: absent waits for the collectors' first runs
        rules = [r for r, name in self._plan if not in_grace or name in seen]
        if rules:
            self._evaluate(rules, now)
        if not self._pruned_at <= now < self._pruned_at + 60.0:  # histories beyond every window: once a minute
            self._pruned_at = now
            cutoff = now - self._history_horizon
            for hk in [hk for hk, h in self.histories.items() if (t := h.last_time()) is None or t < cutoff]:
                del self.histories[hk]
        self.router.tick()
        self._publish()

    def _on_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        # A timer callback, not a sleeping task: one loop iteration and no future per tick.
        try:
            self.tick()
        except Exception:
            self.eval_errors += 1
            log.exception("alert_tick_failed")
        interval = self.cfg.evaluation_interval
        self._next_tick += interval
        now = loop.time()
        if self._next_tick < now:  # the loop was held up: skip the missed ticks instead of bursting
            self._next_tick = now + interval - ((now - self._next_tick) % interval)
        self._tick_timer = loop.call_at(self._next_tick, self._on_tick, loop)

    # --- self metrics -----------------------------------------------------------------

    def _publish(self) -> None:
        """Put the engine's own metrics (on the tick and when an alert changed state). The engine reads
        them back from the store like any snapshot; that puts them again only if a rule on them
        changed an alert's state, which cannot go on: a state moves on with time, not by itself."""
        try:
            families = self.families()
        except StateError as exc:
            log.error("alert_metrics_failed", error=str(exc))
            return
        self.store.put(ALERTS_KEY, families, interval=max(self.cfg.evaluation_interval, 1.0) * 5)

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
