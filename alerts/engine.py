"""The alert engine: evaluates rules the moment a collector delivers a snapshot, and on a short tick.

Event-driven evaluation keeps breach-to-page latency at the collector's own latency; the tick
handles what time alone changes (``for``, ``keep_firing_for``, ``absent``, stale collectors,
escalation). Alert state lives in the state DB, so a restart neither re-pages nor forgets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import structlog

from mevwatch.alerts.config import AlertsConfig, Rule
from mevwatch.alerts.outbox import Outbox
from mevwatch.alerts.router import Router
from mevwatch.alerts.rules import Alert, History, LabelSet, evaluate_rule, labelset, step
from mevwatch.alerts.sinks import Sink, build_sinks
from mevwatch.collectors.base import MetricSpec
from mevwatch.daemon.families import CounterMetricFamily, GaugeMetricFamily, Metric
from mevwatch.daemon.state import StateDB, StateError
from mevwatch.daemon.store import SampleStore, Snapshot, SnapshotKey

__all__ = ["ALERTS_KEY", "ENGINE_METRICS", "MIGRATIONS", "AlertEngine"]

log = structlog.get_logger("mevwatch.alerts")

ALERTS_KEY: SnapshotKey = ("mevwatch", "alerts")
STATES = ("pending", "firing")
SEVERITIES = ("info", "warning", "critical")
#: the alert engine's own metrics (docs/metrics.md, dashboards, contract test)
ENGINE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("mevwatch_alerts", "gauge",
               "Active alerts by state (pending, firing) and severity", ("state", "severity")),
    MetricSpec("mevwatch_notifications_sent", "counter", "Notifications a sink acknowledged", ("sink",)),
    MetricSpec("mevwatch_notifications_failed", "counter", "Failed delivery attempts (each retry counts)", ("sink",)),
    MetricSpec("mevwatch_notifications_dead_lettered", "counter",
               "Notifications given up on (refused with 4xx, or undeliverable too long)", ("sink",)),
    MetricSpec("mevwatch_alert_outbox_depth", "gauge", "Notifications waiting in the outbox", ("sink",)),
    MetricSpec("mevwatch_alert_outbox_oldest_pending_age_seconds", "gauge",
               "Age of the oldest notification not yet acknowledged (0 when the outbox is empty)", ()),
    MetricSpec("mevwatch_alert_rules", "gauge", "Alerting rules loaded", ()),
    MetricSpec("mevwatch_alert_evaluation_errors", "counter", "Rule evaluations that failed with a bug", ()),
    MetricSpec("mevwatch_silences_active", "gauge", "Silences in effect", ()),
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
]


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
        for r in self.rules:
            name = r.metric + "_bucket" if r.quantile is not None else r.metric
            self.by_name.setdefault(name, []).append(r)
            if r.window:
                self.windows[name] = max(self.windows.get(name, 0.0), r.window)
        self.samples: dict[SnapshotKey, dict[str, dict[LabelSet, float]]] = {}
        self.seen_at: dict[SnapshotKey, float] = {}
        self.histories: dict[tuple[str, LabelSet], History] = {}
        self.alerts: dict[str, dict[str, Alert]] = {r.name: {} for r in self.rules}
        self.sinks: dict[str, list[Sink]] = {rc.name: build_sinks(rc, cfg.evaluation_interval) for rc in cfg.receivers}
        state.migrate("alerts_engine", MIGRATIONS)
        self.outbox = Outbox(state, [s for ss in self.sinks.values() for s in ss], cfg.outbox, clock)
        self.router = Router(cfg, state, self.outbox, self.sinks, self.all_alerts, clock)
        self.started_at = clock()
        self.seen_metrics: set[str] = set()
        self._unconfirmed: set[str] = set()  # restored alerts not yet re-evaluated on fresh data
        self._unsubscribe: Callable[[], None] | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self.evaluations = 0
        self.eval_errors = 0
        # Bumped when the merged series of a sample name change (values, series set, a collector gone).
        self._input_version: dict[str, int] = {}
        # rule name -> (input version, time) of its last evaluation, for rules that ended it with no alert
        self._idle_at: dict[str, tuple[int, float]] = {}
        self._irregular: set[str] = set()  # windowed sample names that had a negative or NaN value
        self._publish_scheduled = False
        self._published: list[Metric] = []  # the families of the last put, to skip puts of the same values

    def all_alerts(self) -> Iterator[Alert]:
        for per_rule in self.alerts.values():
            yield from per_rule.values()

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        restored = self._restore()
        self.started_at = self.clock()
        await self.outbox.start()
        self.router.update(a for a in restored if a.state in ("firing", "resolved"))
        self._unsubscribe = self.store.subscribe(self._on_snapshot)
        self._tick_task = asyncio.create_task(self._tick_loop(), name="alerts:tick")
        self._publish()
        log.info("alert_engine_started", rules=len(self.rules), restored=len(restored),
                 receivers=len(self.sinks))

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            with contextlib.suppress(ValueError):
                self._unsubscribe()
            self._unsubscribe = None
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
            self._tick_task = None
        self.router.stop()
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

    def _on_snapshot(self, key: SnapshotKey, snap: Snapshot) -> None:
        try:
            self._ingest(key, snap)
        except Exception:  # a bug here must never break the collector that published
            self.eval_errors += 1
            log.exception("alert_evaluation_failed", collector=key[0], instance=key[1])

    def _ingest(self, key: SnapshotKey, snap: Snapshot) -> None:
        now = self.clock()
        names: dict[str, dict[LabelSet, float]] = {}
        for fam in snap.families:
            for s in fam.samples:
                if s.name in self.by_name:
                    names.setdefault(s.name, {})[labelset(s.labels)] = float(s.value)
        prev = self.samples.get(key)
        prev_at = self.seen_at.get(key)
        for name, series in names.items():
            keep = self.windows.get(name)
            if not keep:
                continue
            before = prev.get(name, {}) if prev is not None else None
            for ls, v in series.items():
                if not v >= 0:
                    self._irregular.add(name)
                hist = self.histories.get((name, ls))
                if hist is None:
                    hist = self.histories[(name, ls)] = History()
                    # A counter series that appears on a collector already reporting started at 0:
                    # its first kill/failure is an increase (Prometheus misses it).
                    if before is not None and prev_at is not None and ls not in before:
                        hist.add(prev_at, 0.0, keep)
                hist.add(now, v, keep)
        affected = set(names) | (set(prev) if prev else set())
        for name in affected:
            if prev is None or names.get(name) != prev.get(name):
                self._input_version[name] = self._input_version.get(name, 0) + 1
        self.samples[key] = names
        self.seen_at[key] = now
        self.seen_metrics.update(names)
        rules = [r for n in affected for r in self.by_name.get(n, ()) if not self._unchanged(r, n, now)]
        if rules:
            self._evaluate(rules, now)

    def _unchanged(self, rule: Rule, name: str, now: float) -> bool:
        """Would evaluating ``rule`` now be a no-op? Only for a rule with no alert whose series are
        those of its last evaluation, which raised nothing: the same values give the same result.

        With a window, time alone moves it, but over unchanged counters an increase or rate can only
        shrink (every delta >= 0; so not after a negative or NaN value was seen), so a rule testing
        for more than a non-negative bound stays quiet; any other windowed rule is evaluated.
        """
        idle = self._idle_at.get(rule.name)
        if self.alerts[rule.name] or idle is None or idle[0] != self._input_version.get(name, 0):
            return False
        if not rule.window:
            return True
        return (
            now >= idle[1]  # a clock stepped back moves the window back
            and rule.quantile is None
            and not rule.absent
            and name not in self._irregular
            and ((rule.op == ">" and rule.threshold >= 0) or (rule.op == ">=" and rule.threshold > 0))
        )

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
        for rule in rules:
            name = rule.metric + "_bucket" if rule.quantile is not None else rule.metric
            samples = {name: self._merged(name)}
            values = evaluate_rule(rule, samples, self.histories, now)
            per_rule = self.alerts[rule.name]
            before = {fp: (a.state, a.last_match_at) for fp, a in per_rule.items()}
            hold = self._unconfirmed if self._unconfirmed else frozenset()
            changed += step(rule, values, per_rule, now, self.cfg.host, self.cfg.runbook_url, hold)
            if per_rule:
                self._idle_at.pop(rule.name, None)
            else:
                self._idle_at[rule.name] = (self._input_version.get(name, 0), now)
            for fp in set(before) | set(per_rule):
                a = per_rule.get(fp)
                if a is None:
                    dirty[fp] = None
                elif fp not in before or before[fp][0] != a.state:
                    dirty[fp] = a
                if a is not None and a.last_match_at == now:
                    self._unconfirmed.discard(fp)
            self.evaluations += 1
        if dirty:
            self._persist(dirty)
        if changed:
            for a in changed:
                log.info("alert_" + a.state, alertname=a.rule, labels=a.labels, value=a.value)
            self.router.update(changed)
            self._publish_soon()

    def _publish_soon(self) -> None:
        """Refresh the alert metrics after a state change, outside the store callback that caused it."""
        if self._publish_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._publish_scheduled = True

        def run() -> None:
            self._publish_scheduled = False
            self._publish()

        loop.call_soon(run)

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
        except StateError as exc:
            log.error("alert_state_write_failed", error=str(exc))

    def tick(self) -> None:
        """Time-driven work: drop stale collectors' data, re-evaluate, escalate, flush, publish."""
        now = self.clock()
        self.store.materialize()  # snapshots put lazily (the supervisor's metrics) are ingested at least once a tick
        for key in [k for k in self.samples if self.store.get(k) is None]:
            for name in self.samples.pop(key):  # a dead or removed collector: its series are gone (absent fires)
                self._input_version[name] = self._input_version.get(name, 0) + 1
        in_grace = now - self.started_at < self.cfg.startup_grace
        if not in_grace:
            self._unconfirmed.clear()
        rules = []
        for r in self.rules:
            name = r.metric + "_bucket" if r.quantile is not None else r.metric
            if (not in_grace or name in self.seen_metrics) and not self._unchanged(r, name, now):
                rules.append(r)
        self._evaluate(rules, now)
        horizon = max(self.windows.values(), default=0.0) * 2 + 60.0
        cutoff = now - horizon
        for hk in [hk for hk, h in self.histories.items() if (t := h.last_time()) is None or t < cutoff]:
            del self.histories[hk]
        self.router.tick()
        self._publish()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.evaluation_interval)
            try:
                self.tick()
            except Exception:
                self.eval_errors += 1
                log.exception("alert_tick_failed")

    # --- self metrics -----------------------------------------------------------------

    def _publish(self) -> None:
        try:
            fams = self.families()
        except StateError as exc:
            log.error("alert_metrics_failed", error=str(exc))
            return
        # Unchanged values only refresh the snapshot's age: a new one would be ingested by this engine
        # and re-rendered on the next scrape for nothing. A windowed rule on these metrics needs
        # every point in its history, so then they are always put.
        if (
            fams == self._published
            and self.store.get(ALERTS_KEY) is not None
            and not any(s.name in self.windows for f in fams for s in f.samples)
        ):
            self.store.touch(ALERTS_KEY)
            return
        self._published = fams
        self.store.put(ALERTS_KEY, fams, interval=max(self.cfg.evaluation_interval, 1.0) * 5)

    def families(self) -> list[Metric]:
        counts = {(st, sev): 0 for st in STATES for sev in SEVERITIES}
        for a in self.all_alerts():
            if a.state in STATES:
                counts[(a.state, a.severity if a.severity in SEVERITIES else "warning")] += 1
        alerts = GaugeMetricFamily("mevwatch_alerts", "Active alerts by state (pending, firing) and severity",
                                   labels=["state", "severity"])
        for (st, sev), n in counts.items():
            alerts.add_metric([st, sev], float(n))
        sinks = sorted(s.name for ss in self.sinks.values() for s in ss)
        fams: list[Metric] = [alerts]
        for what, help_text in (
            ("sent", "Notifications a sink acknowledged"),
            ("failed", "Failed delivery attempts (each retry counts)"),
            ("dead_lettered", "Notifications given up on (refused with 4xx, or undeliverable too long)"),
        ):
            fam = CounterMetricFamily(f"mevwatch_notifications_{what}", help_text, labels=["sink"])
            counter = self.outbox.counters()[what]
            for s in sinks:
                fam.add_metric([s], float(counter[s]))
            fams.append(fam)
        depth = self.outbox.depth()
        dfam = GaugeMetricFamily("mevwatch_alert_outbox_depth", "Notifications waiting in the outbox",
                                 labels=["sink"])
        for s in sinks:
            dfam.add_metric([s], float(depth.get(s, 0)))
        fams.append(dfam)
        fams.append(GaugeMetricFamily(
            "mevwatch_alert_outbox_oldest_pending_age_seconds",
            "Age of the oldest notification not yet acknowledged (0 when the outbox is empty)",
            value=self.outbox.oldest_age(),
        ))
        fams.append(GaugeMetricFamily("mevwatch_alert_rules", "Alerting rules loaded", value=float(len(self.rules))))
        fams.append(CounterMetricFamily("mevwatch_alert_evaluation_errors",
                                        "Rule evaluations that failed with a bug", value=float(self.eval_errors)))
        fams.append(GaugeMetricFamily("mevwatch_silences_active", "Silences in effect",
                                      value=float(len(self.router.silences.list(include_expired=False)))))
        return fams

    def status(self) -> dict[str, Any]:
        return {"rules": len(self.rules), "alerts": [a.labels for a in self.all_alerts() if a.state == "firing"]}
