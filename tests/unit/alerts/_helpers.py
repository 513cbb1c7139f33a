"""Driving the alert engine in-process with a hand-moved clock, reading what reached the outbox.

The harness does by hand what the engine's task and tick do when started: evaluate the store's
changes after a put, and tick when the clock moves."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from mevwatch.alerts.engine import AlertEngine
from mevwatch.daemon.config import load_config_text
from mevwatch.daemon.state import StateDB
from mevwatch.daemon.store import SampleStore
from mevwatch.families import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["FLEET", "RATIO_HIGH_RULE", "Clock", "Harness", "LoopClock", "counter", "gauge", "increase_rule"]

#: a config in fleet mode: every alert to an Alertmanager (nothing listens there) and the log
FLEET = """collectors: []
alerts:
  mode: fleet
  default_rules: false
  receivers:
    - name: fleet
      alertmanager_configs: [{urls: ["http://127.0.0.1:1"]}]
      log_configs: [{}]
  receiver: fleet
"""

#: a rule entry (under ``rules:``) the engine tests share: test_ratio above 0.9 for 2 s
RATIO_HIGH_RULE = """    - name: RatioHigh
      metric: test_ratio
      op: ">"
      threshold: 0.9
      for: 2s
      summary: s
      runbook: memory-high
"""


def increase_rule(name: str, metric: str, op: str, threshold: float) -> str:
    """A rule entry (under ``rules:``): ``metric``'s increase over 10 s compared with ``threshold``."""
    return f"""    - name: {name}
      metric: {metric}
      increase: 10s
      op: "{op}"
      threshold: {threshold:g}
      summary: s
      runbook: memory-high
"""


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class LoopClock(Clock):
    """Wall time that moves with the running loop's clock (looptime's virtual time): ``t + loop.time()``,
    for an engine started in the test's loop, whose tick and outbox run on their own."""

    def __call__(self) -> float:
        return self.t + asyncio.get_running_loop().time()


def gauge(name: str, value: float, **labels: str) -> Metric:
    fam = GaugeMetricFamily(name, "test gauge", labels=list(labels))
    fam.add_metric(list(labels.values()), value)
    return fam


def counter(name: str, series: dict[str, float], label: str = "comm") -> Metric:
    fam = CounterMetricFamily(name, "test counter", labels=[label])
    for lv, v in series.items():
        fam.add_metric([lv], v)
    return fam


class Harness:
    """An engine over a real state DB, without delivery workers: notifications stay in the outbox."""

    def __init__(self, tmp: Path, alerts_yaml: str, clock: Clock | None = None,
                 store: SampleStore | None = None) -> None:
        self.tmp = tmp
        self.yaml = alerts_yaml
        self.clock = clock or Clock()
        self.store = store or SampleStore()
        self.db = StateDB.open_dir(tmp / "state")
        self.engine = self._engine()

    def _engine(self) -> AlertEngine:
        cfg = load_config_text("collectors: []\nalerts:\n" + self.yaml, str(self.tmp / "mevwatch.yaml"))
        return AlertEngine(cfg.daemon.alerts, self.store, self.db, clock=self.clock)

    def restart(self) -> None:
        self.store = SampleStore()
        self.engine = self._engine()
        restored = self.engine._restore()
        self.engine.started_at = self.clock()
        self.engine.router.update(a for a in restored if a.state in ("firing", "resolved"))

    def put(self, *families: Metric, key: tuple[str, str] = ("test", "default"), interval: float = 3600.0,
            sampled_at: float | None = None) -> None:
        self.store.put(key, families, interval, sampled_at)
        self.engine.evaluate_changes()  # what the engine's task does when the store wakes it

    def advance(self, seconds: float) -> None:
        self.clock.t += seconds
        self.engine.tick()

    def notifications(self, sink: str | None = None) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT sink, payload FROM alert_outbox ORDER BY created_at, rowid")
        return [json.loads(p) for s, p in rows if sink is None or s == sink]

    def states(self) -> dict[str, str]:
        return {a.labels["alertname"] + str(sorted(a.labels.items())): a.state for a in self.engine.all_alerts()}

    def close(self) -> None:
        self.db.close()
