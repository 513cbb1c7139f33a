"""The tick armed at the earliest time something is due: with nothing else happening (no snapshot put,
no scrape), alerts still go pending, fire, resolve and escalate on time, on the loop's virtual clock;
and while nothing is due the engine sleeps instead of waking every evaluation_interval."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from mevwatch.alerts.engine import ALERTS_KEY, TICK_CAP
from mevwatch.alerts.router import Silences
from mevwatch.daemon.state import StateDB
from mevwatch.daemon.store import SampleStore
from tests.unit.alerts._helpers import RATIO_HIGH_RULE, Harness, LoopClock, counter, gauge, increase_rule

BASE = """
  default_rules: false
  host: mev-host-1
  group_wait: 0s
  group_interval: 1s
  startup_grace: 0s
  receivers:
    - {name: log, log_configs: [{}]}
    - {name: lead, log_configs: [{}]}
    - {name: refusing, webhook_configs: [{url: "http://127.0.0.1:9/hook"}]}
"""
KEY = ("test", "default")
T0 = 1_700_000_000.0  # the wall clock at loop time 0


class Running:
    """An engine started in the test's loop, its tick timer and outbox workers running on their own;
    every tick recorded at the loop time it ran."""

    def __init__(self, tmp: Path, alerts: str) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.h = Harness(tmp, BASE + alerts, clock=LoopClock(T0), store=SampleStore(clock=loop.time))
        self.engine = self.h.engine
        self.store = self.h.store
        self.ticks: list[float] = []
        tick = self.engine.tick

        def recording(keep_fresh: bool = False) -> None:
            self.ticks.append(loop.time())
            tick(keep_fresh)

        self.engine.tick = recording  # type: ignore[method-assign]

    async def until(self, t: float) -> None:
        """Let the loop run up to loop time ``t``."""
        await asyncio.sleep(max(t - self.loop.time(), 0.0))

    def states(self) -> list[str]:
        return [a.state for a in self.engine.all_alerts()]

    def sent(self, receiver: str) -> int:
        return sum(n for sink, n in self.engine.outbox.sent.items() if sink.startswith(receiver + "/"))


@pytest.fixture
async def running(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    r = Running(tmp_path, request.param)
    await r.engine.start()
    try:
        yield r
    finally:
        await r.engine.stop()
        r.h.close()


def rules(text: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("running", [text], indirect=True)


@pytest.mark.looptime(start=100.3)
@rules("  rules:\n" + RATIO_HIGH_RULE)
async def test_a_pending_alert_fires_when_its_for_has_passed_with_no_snapshot_after_it(running: Running) -> None:
    running.store.put(KEY, [gauge("test_ratio", 0.95)], 3600.0)
    await running.until(100.4)
    assert running.states() == ["pending"]  # since 100.3, when the engine's task read the snapshot
    await running.until(102.9)
    assert running.states() == ["pending"]
    await running.until(103.05)  # for (2 s) passed at 102.3: the first tick of the 1 s grid after it
    assert running.states() == ["firing"]
    [alert] = running.engine.all_alerts()
    assert alert.fired_at == pytest.approx(T0 + 103.0)
    assert running.sent("log") == 1


WINDOW_RULE = "  rules:\n" + increase_rule("Kills", "test_kills_total", ">", 0)


@pytest.mark.looptime(start=100.3)
@rules(WINDOW_RULE)
async def test_a_window_rule_resolves_when_the_increase_leaves_its_window_with_no_new_data(running: Running) -> None:
    running.store.put(KEY, [counter("test_kills", {"a": 2.0})], 3600.0)
    await running.until(101.3)
    running.store.put(KEY, [counter("test_kills", {"a": 3.0})], 3600.0)
    await running.until(101.4)
    assert running.states() == ["firing"]  # at once, on the change
    await running.until(111.9)
    assert running.states() == ["firing"]  # the kill at 101.3 is inside (now - 10 s, now]
    await running.until(112.05)  # it left the window at 111.3: resolved by the next tick of the grid
    assert running.states() == ["resolved"]
    assert running.sent("log") == 2


NO_PROGRESS = "  rules:\n" + increase_rule("NoProgress", "test_blocks_total", "<", 1)


@pytest.mark.looptime(start=100.3)
@rules(NO_PROGRESS)
async def test_a_counter_that_stops_fires_when_its_last_increase_leaves_the_window(running: Running) -> None:
    running.store.put(KEY, [counter("test_blocks", {"a": 1.0})], 3600.0)
    for t in range(101, 106):  # a block a second, then the counter stands still, put every second
        await running.until(t + 0.3)
        running.store.put(KEY, [counter("test_blocks", {"a": float(t - 99)})], 3600.0)
    for t in range(106, 120):
        await running.until(t + 0.3)
        running.store.put(KEY, [counter("test_blocks", {"a": 6.0})], 3600.0)
        if t == 114:
            await running.until(114.9)
            assert running.states() == []  # the last block (105.3) is in the window until 115.3
    await running.until(119.9)
    [alert] = running.engine.all_alerts()
    assert alert.state == "firing"
    assert alert.fired_at == pytest.approx(T0 + 116.0)  # on the first tick of the grid after 115.3


@pytest.mark.looptime(start=100.3)
@rules("""  rules:
    - {name: NodeDown, metric: node_up, op: "==", threshold: 0, summary: s, runbook: peer-loss}
  receiver: log
  escalation:
    - {after: 5s, receiver: lead}
""")
async def test_an_escalation_level_is_paged_when_its_delay_has_passed(running: Running) -> None:
    running.store.put(KEY, [gauge("node_up", 0.0)], 3600.0)
    await running.until(100.4)
    assert running.states() == ["firing"]
    assert (running.sent("log"), running.sent("lead")) == (1, 0)
    await running.until(105.9)
    assert running.sent("lead") == 0
    await running.until(106.05)  # fired at 100.3, `after` 5 s: the first tick of the grid after 105.3
    assert running.sent("lead") == 1


@pytest.mark.looptime(start=100.3)
@rules("""  rules:
    - {name: ServiceGone, metric: svc_up, absent: true, summary: s, runbook: memory-high}
""")
async def test_a_snapshot_that_goes_stale_is_dropped_on_time_and_absent_fires(running: Running) -> None:
    running.store.put(("services", "default"), [gauge("svc_up", 1.0)], 2.0)  # stale after 4 s
    await running.until(104.9)
    assert running.states() == []
    await running.until(105.05)  # stale from 104.3 on: the first tick of the grid after it
    assert running.states() == ["firing"]


@pytest.mark.looptime(start=100.3)
@rules("""  rules:
    - {name: ServiceGone, metric: svc_up, absent: true, summary: s, runbook: memory-high}
""")
async def test_a_snapshot_kept_fresh_between_puts_is_never_dropped(running: Running) -> None:
    key = ("logwatch", "default")
    running.store.put(key, [gauge("svc_up", 1.0)], 1.0)  # stale after 2 s unless touched, as a stream's is
    for t in range(101, 160):
        await running.until(t + 0.3)
        running.store.touch(key)
    assert running.states() == []
    assert running.engine.samples[key]


KEEP_FIRING = RATIO_HIGH_RULE.replace("for: 2s", "for: 0s\n      keep_firing_for: 5s")


@pytest.mark.looptime(start=100.3)
@rules("  rules:\n" + KEEP_FIRING)
async def test_keep_firing_for_runs_from_the_last_tick_that_saw_the_condition(running: Running) -> None:
    running.store.put(KEY, [gauge("test_ratio", 0.95)], 3600.0)
    await running.until(110.3)
    running.store.put(KEY, [gauge("test_ratio", 0.5)], 3600.0)
    await running.until(114.9)
    assert running.states() == ["firing"]  # the tick at 110.0 saw it hold: held until 115.0
    await running.until(115.05)
    assert running.states() == ["resolved"]


@pytest.mark.looptime(start=100.3)
@rules("  rules:\n" + RATIO_HIGH_RULE)
async def test_a_silence_written_by_another_process_is_read_before_the_flush(
    running: Running, tmp_path: Path
) -> None:
    await running.until(120.0)  # a few ticks, so the router has read its silences before
    other = StateDB.open_dir(tmp_path / "state")  # `mevwatch silence add`, another connection
    try:
        Silences(other, clock=lambda: T0 + 120.0).add(["alertname=RatioHigh"], 3600.0)
    finally:
        other.close()
    running.store.put(KEY, [gauge("test_ratio", 0.95)], 3600.0)
    await running.until(123.05)
    assert running.states() == ["firing"]
    assert running.sent("log") == 0


def _sent_metric(store: SampleStore) -> Callable[[str], float | None]:
    snap = store.get(ALERTS_KEY)
    assert snap is not None
    values = {s.labels.get("sink", ""): s.value for f in snap.families for s in f.samples
              if s.name == "mevwatch_notifications_sent_total"}
    return values.get


@pytest.mark.looptime(start=100.3)
@rules("""  rules:
    - {name: NodeDown, metric: node_up, op: "==", threshold: 0, summary: s, runbook: peer-loss}
""")
async def test_the_engines_metrics_show_a_delivery_at_once_not_at_the_next_tick(running: Running) -> None:
    running.store.put(KEY, [gauge("node_up", 0.0)], 3600.0)
    await running.until(100.5)
    assert running.ticks == []  # the first tick comes at 101.0
    assert running.sent("log") == 1
    assert _sent_metric(running.store)("log/log/0") == 1.0


@pytest.mark.looptime(start=100.3)
@rules("  rules:\n" + RATIO_HIGH_RULE + WINDOW_RULE.removeprefix("  rules:\n"))
async def test_with_nothing_due_the_engine_ticks_at_most_every_tick_cap(running: Running) -> None:
    # a firing alert (no keep_firing_for) and a window over a counter that stands still: nothing that
    # time alone moves, once the window's last edge has passed
    running.store.put(KEY, [gauge("test_ratio", 0.95), counter("test_kills", {"a": 2.0})], 3600.0)
    await running.until(101.3)
    running.store.put(KEY, [gauge("test_ratio", 0.95), counter("test_kills", {"a": 2.0})], 3600.0)
    await running.until(130.0)
    assert sorted(running.states()) == ["firing"]
    running.ticks.clear()
    await running.until(430.0)
    assert len(running.ticks) == 300 / TICK_CAP, repr(running.ticks)  # was one a second
    # on the loop clock's grid k * TICK_CAP, as runs every 15 s are: the tick shares their wake-up
    assert all(abs(t - round(t / TICK_CAP) * TICK_CAP) < 0.001 for t in running.ticks), running.ticks
    assert running.store.get(ALERTS_KEY) is not None  # the engine's metrics stay fresh


INHIBITED = """  rules:
    - {name: NodeDown, metric: node_up, op: "==", threshold: 0, summary: s, runbook: peer-loss}
    - {name: PeersLow, metric: node_peers, op: "<", threshold: 10, summary: s, runbook: peer-loss}
  group_by: [alertname, endpoint]
  inhibit_rules:
    - source_matchers: ['alertname="NodeDown"']
      target_matchers: ['alertname="PeersLow"']
      equal: [endpoint]
"""


@pytest.mark.looptime(start=100.3)
@rules(INHIBITED)
async def test_an_inhibited_alert_pages_as_soon_as_its_source_resolves(running: Running) -> None:
    running.store.put(KEY, [gauge("node_up", 0.0, endpoint="erigon"), gauge("node_peers", 0.0, endpoint="erigon")],
                      3600.0)
    await running.until(130.3)
    assert sorted(running.states()) == ["firing", "firing"]
    assert running.sent("log") == 1  # NodeDown; PeersLow held back by it
    running.store.put(KEY, [gauge("node_up", 1.0, endpoint="erigon"), gauge("node_peers", 0.0, endpoint="erigon")],
                      3600.0)
    await running.until(130.4)  # not at the next tick of the grid, nor TICK_CAP later
    assert running.sent("log") == 3  # NodeDown resolved, and PeersLow


@pytest.mark.looptime(start=100.3)
@rules("  rules:\n" + RATIO_HIGH_RULE)
async def test_a_silenced_alert_pages_when_its_silence_ends(running: Running) -> None:
    running.engine.router.silences.add(["alertname=RatioHigh"], 30.0)  # until 130.3
    running.store.put(KEY, [gauge("test_ratio", 0.95)], 3600.0)
    await running.until(129.9)
    assert running.states() == ["firing"]
    assert running.sent("log") == 0
    await running.until(131.05)  # the first tick of the grid after the end
    assert running.sent("log") == 1


@pytest.mark.looptime(start=100.3)
@rules("""  rules:
    - {name: NodeDown, metric: node_up, op: "==", threshold: 0, summary: s, runbook: peer-loss}
  receiver: refusing
""")
async def test_while_the_outbox_holds_a_notification_its_age_is_shown_every_tick(running: Running) -> None:
    running.store.put(KEY, [gauge("node_up", 0.0)], 3600.0)  # its webhook refuses: retried, held

    def age() -> float:
        snap = running.store.get(ALERTS_KEY)
        assert snap is not None
        [v] = [s.value for f in snap.families for s in f.samples
               if s.name == "mevwatch_alert_outbox_oldest_pending_age_seconds"]
        return v

    await running.until(110.5)
    assert age() == pytest.approx(10.0, abs=1.01)
    await running.until(112.5)
    assert age() == pytest.approx(12.0, abs=1.01)


@pytest.mark.looptime(start=100.004)
@rules("  rules:\n" + RATIO_HIGH_RULE)
async def test_an_alert_pending_since_a_slot_fires_on_the_tick_for_later_despite_clock_noise(running: Running) -> None:
    # The run of the slot at 100.0 is stamped in Unix time with the offset it read: a few µs past the slot.
    # `for` (2 s) ends then a few µs past the tick at 102.0; tested exactly, the alert fired a tick late.
    running.store.put(KEY, [gauge("test_ratio", 0.95)], 1.0, T0 + 100.0 + 3e-6)
    await running.until(100.1)
    [alert] = running.engine.all_alerts()
    assert (alert.state, alert.active_at) == ("pending", T0 + 100.0 + 3e-6)
    await running.until(101.99)
    assert running.states() == ["pending"]
    await running.until(102.01)
    assert running.states() == ["firing"]
    assert alert.fired_at == pytest.approx(T0 + 102.0)
