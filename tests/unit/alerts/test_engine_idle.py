"""The tick slows down while time can change nothing, and is back on evaluation_interval at once when it can."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mevwatch.alerts.engine import IDLE_TICK_INTERVAL, AlertEngine
from mevwatch.daemon.config import load_config_text
from mevwatch.daemon.state import StateDB
from mevwatch.daemon.store import SampleStore
from tests.unit.alerts._helpers import RATIO_HIGH_RULE, counter, gauge

ALERTS = """
alerts:
  default_rules: false
  group_wait: 0s
  startup_grace: 0s
  evaluation_interval: 0.5s
  rules:
""" + RATIO_HIGH_RULE + """    - name: KillBurst
      metric: test_kills_total
      increase: 60s
      op: ">"
      threshold: 0
      summary: s
      runbook: memory-high
"""
KILLS_LOW = """    - name: KillsLow
      metric: test_kills_total
      increase: 60s
      op: "<"
      threshold: 5
      summary: s
      runbook: memory-high
"""


def _engine(tmp_path: Path, extra: str = "") -> tuple[AlertEngine, SampleStore, StateDB]:
    cfg = load_config_text("collectors: []\n" + ALERTS + extra, str(tmp_path / "mevwatch.yaml"))
    store = SampleStore()
    state = StateDB.open_dir(tmp_path / "state")
    return AlertEngine(cfg.daemon.alerts, store, state), store, state


def _next_tick_in(engine: AlertEngine) -> float:
    timer = engine._tick_timer
    assert timer is not None
    return timer.when() - asyncio.get_running_loop().time()


async def test_idle_tick_slows_down_and_a_breach_brings_it_back(tmp_path: Path) -> None:
    engine, store, state = _engine(tmp_path)
    await engine.start()
    try:
        store.put(("t", "a"), [gauge("test_ratio", 0.5)], 3600.0)
        engine._on_tick(asyncio.get_running_loop())  # evaluates what is new; the next tick finds nothing to do
        engine._on_tick(asyncio.get_running_loop())
        assert engine._idle
        assert _next_tick_in(engine) > 0.5 * IDLE_TICK_INTERVAL
        # a breach: a pending alert whose `for` only the tick can complete
        store.put(("t", "a"), [gauge("test_ratio", 0.95)], 3600.0)
        assert [a.state for a in engine.all_alerts()] == ["pending"]
        assert not engine._idle
        assert _next_tick_in(engine) <= 0.5
        engine.tick()
        assert not engine._idle  # the alert keeps the tick on evaluation_interval
    finally:
        await engine.stop()
        state.close()


async def test_quiet_counters_let_the_tick_slow_down(tmp_path: Path) -> None:
    engine, store, state = _engine(tmp_path)
    await engine.start()
    try:
        store.put(("t", "a"), [counter("test_kills", {"geth": 7.0})], 3600.0)
        engine.tick()
        engine.tick()
        # KillBurst (increase > 0) cannot start firing over unchanged counters as its window moves
        assert engine._idle
    finally:
        await engine.stop()
        state.close()


async def test_a_window_that_time_moves_keeps_the_tick_fast(tmp_path: Path) -> None:
    engine, store, state = _engine(tmp_path, KILLS_LOW)
    await engine.start()
    try:
        engine.tick()
        engine.tick()
        assert engine._idle  # no series of any rule yet: nothing to evaluate on time
        store.put(("t", "a"), [counter("test_kills", {"geth": 7.0})], 3600.0)
        # KillsLow (increase < 5) can start firing as the window moves: the tick must evaluate it on time
        assert not engine._idle
        assert _next_tick_in(engine) <= 0.5
        engine.tick()
        assert not engine._idle
    finally:
        await engine.stop()
        state.close()


async def test_absent_rules_keep_the_tick_on_evaluation_interval(tmp_path: Path) -> None:
    extra = """    - name: Gone
      metric: test_ratio
      absent: true
      summary: s
      runbook: memory-high
"""
    engine, store, state = _engine(tmp_path, extra)
    await engine.start()
    try:
        store.put(("t", "a"), [gauge("test_ratio", 0.5)], 3600.0)
        engine.tick()
        engine.tick()
        assert not engine._idle
    finally:
        await engine.stop()
        state.close()
