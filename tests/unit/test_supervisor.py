"""The supervisor keeps every collector on schedule when one hangs, raises or blocks a thread."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest

from mevwatch.blocking import BlockingPool
from mevwatch.collectors.base import (
    CollectorError,
    CollectorOptions,
    Emit,
    Families,
    PollCollector,
    StreamCollector,
    register,
)
from mevwatch.daemon.config import load_config_text
from mevwatch.daemon.families import GaugeMetricFamily, Metric
from mevwatch.daemon.store import SampleStore, Snapshot, SnapshotKey
from mevwatch.daemon.supervisor import META_KEY, Supervisor

RUNS: dict[str, list[float]] = {}
TICK_IN_SCRAPE: dict[str, list[bool]] = {}
RELEASE = threading.Event()


def _family(name: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, f"test value of {name}", value=value)


@register
class TickCollector(PollCollector[CollectorOptions]):
    kind: ClassVar[str] = "t_tick"
    default_interval = 0.1
    default_timeout = 0.05

    async def collect(self) -> Families:
        RUNS.setdefault(self.ctx.instance, []).append(time.monotonic())
        TICK_IN_SCRAPE.setdefault(self.ctx.instance, []).append(IN_SCRAPE)
        return [_family("t_tick_value", 1.0)]


@register
class HangCollector(PollCollector[CollectorOptions]):
    kind: ClassVar[str] = "t_hang"
    default_interval = 0.1
    default_timeout = 0.2

    async def collect(self) -> Families:
        RUNS.setdefault("hang", []).append(time.monotonic())
        await asyncio.Event().wait()  # forever
        return []


@register
class FlakyCollector(PollCollector[CollectorOptions]):
    """Succeeds on the first run, then raises: its old samples must vanish after 2x interval."""

    kind: ClassVar[str] = "t_flaky"
    default_interval = 0.1
    default_timeout = 0.1
    calls = 0

    async def collect(self) -> Families:
        FlakyCollector.calls += 1
        if FlakyCollector.calls == 1:
            return [_family("t_flaky_value", 7.0)]
        if FlakyCollector.calls % 2:
            raise CollectorError("refused", "node refused the connection")
        raise RuntimeError("a bug")


@register
class BlockThreadCollector(PollCollector[CollectorOptions]):
    kind: ClassVar[str] = "t_block"
    default_interval = 0.1
    default_timeout = 0.15

    async def collect(self) -> Families:
        await self.ctx.run_blocking(RELEASE.wait, 30.0, timeout=0.1)  # a hung statvfs
        return [_family("t_block_value", 1.0)]


@register
class DyingStream(StreamCollector[CollectorOptions]):
    kind: ClassVar[str] = "t_stream"
    default_interval = 0.1
    starts = 0

    async def run(self, emit: Emit) -> None:
        DyingStream.starts += 1
        emit([_family("t_stream_value", float(DyingStream.starts))])
        await asyncio.sleep(0.05)
        raise CollectorError("reset", "connection reset")


@register
class QuietStream(StreamCollector[CollectorOptions]):
    """Emits once, then stays connected without news (an idle log file)."""

    kind: ClassVar[str] = "t_quiet"
    default_interval = 0.1

    async def run(self, emit: Emit) -> None:
        emit([_family("t_quiet_value", 1.0)])
        await asyncio.Event().wait()


CONFIG = """\
collectors:
  - t_tick: {instance: a}
  - t_tick: {instance: b, interval: 0.05}
  - t_hang: {}
  - t_flaky: {}
  - t_block: {}
"""


def value(store: SampleStore, name: str, **labels: str) -> float | None:
    for fam in store.families():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def test_failing_collectors_do_not_disturb_the_others() -> None:
    RUNS.clear()
    RELEASE.clear()
    store = SampleStore()
    pool = BlockingPool(max_workers=4)
    sup = Supervisor(load_config_text(CONFIG, "t", {}), store, pool=pool)
    await sup.start()
    try:
        await asyncio.sleep(1.0)
        # The healthy collectors kept their schedule (measured): ~10 and ~20 runs in 1 s.
        for inst, interval in (("a", 0.1), ("b", 0.05)):
            gaps = [b - a for a, b in zip(RUNS[inst], RUNS[inst][1:], strict=False)]
            assert len(RUNS[inst]) >= 0.8 / interval, (inst, len(RUNS[inst]))
            assert max(gaps) < interval + 0.08, (inst, max(gaps))
        # The hung collector is cancelled at its timeout, and retried: never overlapping.
        assert 3 <= len(RUNS["hang"]) <= 6
        assert value(store, "mevwatch_collector_success", collector="t_hang") == 0.0
        assert value(store, "mevwatch_collector_errors_total", collector="t_hang", reason="timeout")
        # Raising collectors: expected errors by reason, bugs as "exception"; samples gone after 2x interval.
        assert value(store, "mevwatch_collector_success", collector="t_flaky") == 0.0
        assert value(store, "mevwatch_collector_errors_total", collector="t_flaky", reason="refused")
        assert value(store, "mevwatch_collector_errors_total", collector="t_flaky", reason="exception")
        assert value(store, "t_flaky_value") is None
        # The thread-blocking collector: timeouts, abandoned threads counted, loop never blocked.
        assert value(store, "mevwatch_collector_success", collector="t_block") == 0.0
        assert pool.abandoned >= 1
        assert value(store, "mevwatch_blocking_threads_abandoned") is not None
        assert value(store, "t_tick_value") == 1.0
    finally:
        RELEASE.set()
        await sup.shutdown()


async def test_stale_samples_vanish_after_twice_the_interval() -> None:
    FlakyCollector.calls = 0
    store = SampleStore()
    sup = Supervisor(load_config_text("collectors:\n  - t_flaky: {interval: 0.2}\n", "t", {}), store)
    await sup.start()
    try:
        await asyncio.sleep(0.05)
        assert value(store, "t_flaky_value") == 7.0
        await asyncio.sleep(0.3)  # 0.35 s < 2x0.2: still served
        assert value(store, "t_flaky_value") == 7.0
        await asyncio.sleep(0.15)  # 0.5 s > 0.4 s
        assert value(store, "t_flaky_value") is None
    finally:
        await sup.shutdown()


async def test_stream_collector_restarts_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    import mevwatch.daemon.supervisor as supmod

    monkeypatch.setattr(supmod, "STREAM_BACKOFF_MIN", 0.1)
    monkeypatch.setattr(supmod, "STREAM_BACKOFF_MAX", 0.4)
    DyingStream.starts = 0
    store = SampleStore()
    sup = Supervisor(load_config_text("collectors:\n  - t_stream: {}\n", "t", {}), store)
    await sup.start()
    try:
        await asyncio.sleep(1.5)
        # backoff 0.05-0.1, 0.1-0.2, 0.2-0.4, 0.2-0.4...: between 4 and 8 starts in 1.5 s, not hundreds
        assert 4 <= DyingStream.starts <= 9, DyingStream.starts
        assert value(store, "mevwatch_collector_errors_total", collector="t_stream", reason="reset")
    finally:
        await sup.shutdown()


async def test_ready_after_first_round_and_meta_always_present() -> None:
    store = SampleStore()
    sup = Supervisor(load_config_text("collectors:\n  - t_tick: {interval: 5}\n", "t", {}), store)
    await sup.start()
    try:
        assert await sup.wait_first_round(2.0)
        assert store.get(META_KEY) is not None
        assert value(store, "mevwatch_build_info") == 1.0
    finally:
        await sup.shutdown()


async def test_self_metrics_are_built_per_read_not_per_run_and_flips_are_put_at_once() -> None:
    FlakyCollector.calls = 0
    store = SampleStore()
    sup = Supervisor(load_config_text("collectors:\n  - t_tick: {interval: 0.02}\n  - t_flaky: {interval: 0.05}\n",
                                      "t", {}), store)
    builds = 0
    build = sup.meta_families

    def counting() -> list[Metric]:
        nonlocal builds
        builds += 1
        return build()

    sup.meta_families = counting  # type: ignore[method-assign]
    success: dict[str, list[float]] = {"t_tick": [], "t_flaky": []}
    def seen(key: SnapshotKey, snap: Snapshot) -> None:
        for f in snap.families:
            for s in f.samples:
                if key == META_KEY and s.name == "mevwatch_collector_success":
                    success[s.labels["collector"]].append(s.value)

    store.subscribe(seen)
    await sup.start()
    try:
        await asyncio.sleep(0.5)
        runs = sup.status[("t_tick", "default")].runs
        assert runs >= 10
        assert sup.status[("t_flaky", "default")].runs >= 5
        # Before any read, only start() and the flips were put (and seen by listeners such as the
        # alert engine): t_tick's first success, t_flaky's first success and its first failure.
        assert success == {"t_tick": [1.0, 1.0, 1.0], "t_flaky": [1.0, 0.0]}
        assert builds == 4
        before = builds
        first = value(store, "mevwatch_collector_last_success_timestamp_seconds", collector="t_tick")
        assert builds == before + 1  # one read, one build, whatever the number of runs since the last
        assert first == sup.status[("t_tick", "default")].last_success_wall
        assert value(store, "mevwatch_collector_errors_total", collector="t_flaky", reason="refused") == float(
            sup.status[("t_flaky", "default")].errors["refused"])
        assert first is not None
        await asyncio.sleep(0.1)
        later = value(store, "mevwatch_collector_last_success_timestamp_seconds", collector="t_tick")
        assert later is not None
        assert later > first
        assert value(store, "mevwatch_collector_duration_seconds", collector="t_tick") is not None
    finally:
        await sup.shutdown()


async def test_a_live_stream_collector_without_news_keeps_its_samples() -> None:
    store = SampleStore()
    sup = Supervisor(load_config_text("collectors:\n  - t_quiet: {}\n", "t", {}), store)
    await sup.start()
    try:
        for _ in range(8):  # 0.8 s: 4x the 0.2 s after which an untouched snapshot is stale
            await asyncio.sleep(0.1)
            assert value(store, "t_quiet_value") == 1.0
    finally:
        await sup.shutdown()


# --- schedule grid ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("planned", "now", "interval", "offset", "expected"),
    [
        (10.0, 10.01, 0.5, 0.0, 10.5),  # steady state: a fixed rate
        (10.3, 10.31, 0.5, 0.0, 11.0),  # the first run, off the grid: the next one joins it, >= half an interval on
        (10.1, 10.11, 0.5, 0.0, 10.5),
        (10.0, 11.27, 0.5, 0.0, 11.5),  # an overrun: the missed slots are skipped, not run in a burst
        (10.2, 10.21, 0.5, 0.2, 10.7),  # a jittered collector keeps its own offset
        (0.0, 0.01, 15.0, 0.0, 15.0),
    ],
)
def test_next_slot_is_on_the_grid(planned: float, now: float, interval: float, offset: float, expected: float) -> None:
    from mevwatch.daemon.supervisor import next_slot

    assert next_slot(planned, now, interval, offset) == pytest.approx(expected)


def test_collectors_of_one_interval_land_on_the_same_instant() -> None:
    from mevwatch.daemon.supervisor import next_slot

    # started a few microseconds apart, as the supervisor starts them: after their first run
    # every later run of the two is planned for exactly the same loop time
    a, b = 1000.000001, 1000.000093
    for _ in range(50):
        a, b = next_slot(a, a + 0.002, 0.5, 0.0), next_slot(b, b + 0.003, 0.5, 0.0)
        assert a == b


async def test_sleepers_until_one_instant_wake_in_one_loop_iteration() -> None:
    from mevwatch.daemon.supervisor import InstanceStatus, sleep_until_due

    loop = asyncio.get_running_loop()
    iterations = 0
    spinning = True

    def spin() -> None:  # counts loop iterations (a ready callback each iteration)
        nonlocal iterations
        iterations += 1
        if spinning:
            loop.call_soon(spin)

    woke: list[int] = []

    async def sleeper(when: float) -> None:
        status = InstanceStatus("k", "i", 0.5, 0.5, False, due=when)
        await sleep_until_due(loop, status)
        woke.append(iterations)

    spin()
    when = loop.time() + 0.05
    await asyncio.gather(*(sleeper(when) for _ in range(3)))
    spinning = False
    assert len(set(woke)) == 1, woke
    assert loop.time() >= when


# --- runs aligned to scrapes -------------------------------------------------------------------

INLINE: list[tuple[float, bool]] = []  # (monotonic time, inside a scrape) of every t_inline run
IN_SCRAPE = False
ACTIVE = [0, 0]  # t_inline runs in flight now, and the most ever


@register
class InlineCollector(PollCollector[CollectorOptions]):
    """Reads local files (scrape_inline); ``mode`` makes it wait, hang or refuse instead."""

    kind: ClassVar[str] = "t_inline"
    default_interval = 0.2
    default_timeout = 0.1
    scrape_inline: ClassVar[bool] = True
    mode = "ok"

    async def collect(self) -> Families:
        INLINE.append((time.monotonic(), IN_SCRAPE))
        ACTIVE[0] += 1
        ACTIVE[1] = max(ACTIVE)
        try:
            if InlineCollector.mode == "wait":
                await asyncio.sleep(0.02)
            elif InlineCollector.mode == "hang":
                await asyncio.Event().wait()
            elif InlineCollector.mode == "refuse":
                raise CollectorError("refused", "node refused the connection")
            return [_family("t_inline_value", float(len(INLINE)))]
        finally:
            ACTIVE[0] -= 1


def _scrape(sup: Supervisor) -> None:
    """What the /metrics handler does before it renders."""
    global IN_SCRAPE
    IN_SCRAPE = True
    try:
        sup.on_scrape()
    finally:
        IN_SCRAPE = False


async def _scrape_every(sup: Supervisor, period: float, count: int) -> list[float]:
    loop = asyncio.get_running_loop()
    t0, times = loop.time(), []
    for i in range(1, count + 1):
        await asyncio.sleep(max(0.0, t0 + i * period - loop.time()))
        times.append(time.monotonic())
        _scrape(sup)
    return times


@contextlib.asynccontextmanager
async def _running(config: str) -> AsyncIterator[tuple[Supervisor, SampleStore]]:
    """A started supervisor over ``config``, shut down after the block."""
    store = SampleStore()
    sup = Supervisor(load_config_text(config, "t", {}), store)
    await sup.start()
    try:
        yield sup, store
    finally:
        await sup.shutdown()


@pytest.fixture
def inline_runs() -> None:
    INLINE.clear()
    InlineCollector.mode = "ok"
    ACTIVE[:] = [0, 0]


async def test_scrapes_at_the_interval_run_the_inline_collectors_inside_the_scrape(inline_runs: None) -> None:
    RUNS.clear()
    TICK_IN_SCRAPE.clear()
    async with _running("collectors:\n  - t_inline: {}\n  - t_tick: {instance: net, interval: 0.2}\n") as (sup, store):
        scrapes = await _scrape_every(sup, 0.2, 12)
        # after at most three scrapes the runs follow the scrapes: every run inside one, one per scrape
        settled = [inside for at, inside in INLINE if at > scrapes[2] + 0.001]
        assert settled
        assert all(settled), INLINE
        assert len(scrapes) - 5 <= len(settled) <= len(scrapes) - 2, (len(settled), INLINE)
        # each scrape got the run it made: the value is the count of runs so far
        _scrape(sup)
        assert value(store, "t_inline_value") == float(len(INLINE))
        assert value(store, "mevwatch_collector_success", collector="t_inline") == 1.0
        # a collector that does not read local files keeps its own schedule
        assert len(RUNS["net"]) >= 10
        assert TICK_IN_SCRAPE["net"]
        assert not any(TICK_IN_SCRAPE["net"])
        # the scrapes stop: the timer runs it again, at most a grace (10 %) later than planned
        last = INLINE[-1][0]
        await asyncio.sleep(0.5)
        later = [at for at, inside in INLINE if at > last]
        assert later
        assert not any(inside for at, inside in INLINE if at > last)
        assert later[0] - last <= 0.2 * 1.1 + 0.03
        assert ACTIVE[1] == 1  # never two runs at once


async def test_frequent_scrapes_do_not_run_it_more_often_than_its_interval(inline_runs: None) -> None:
    async with _running("collectors:\n  - t_inline: {}\n") as (sup, _):
        await _scrape_every(sup, 0.04, 25)  # 1 s of scrapes five times per interval
        gaps = [b - a for (a, _), (b, _) in itertools.pairwise(INLINE)]
        assert 4 <= len(INLINE) <= 7, INLINE
        # the run at start is off the grid: the next joins it at least half an interval later (next_slot)
        assert gaps[0] >= 0.2 / 2 - 0.01, gaps
        # while the runs move onto the scrapes (again after a late scrape on a loaded machine) a gap can
        # shrink to 0.65 of an interval, never less; on the scrapes a run is at most 10 % early
        assert min(gaps[1:]) >= 0.2 * 0.65 - 0.01, gaps
        assert sorted(gaps)[len(gaps) // 2] >= 0.2 * 0.9 - 0.01, gaps


async def test_align_to_scrapes_false_keeps_a_fixed_schedule(inline_runs: None) -> None:
    async with _running("align_to_scrapes: false\ncollectors:\n  - t_inline: {}\n") as (sup, _):
        await _scrape_every(sup, 0.2, 6)
        assert len(INLINE) >= 5
        assert not any(inside for _, inside in INLINE)


async def _aligned(sup: Supervisor) -> None:
    """Scrape until a run happens inside a scrape (the runs then follow the scrapes)."""
    for _ in range(6):
        await _scrape_every(sup, 0.2, 1)
        if INLINE[-1][1]:
            return
    raise AssertionError(f"never aligned: {INLINE}")


@contextlib.asynccontextmanager
async def _due_inline_run(mode: str) -> AsyncIterator[tuple[Supervisor, SampleStore]]:
    """A supervisor whose t_inline runs follow the scrapes, at the instant its next run is due, in ``mode``."""
    async with _running("collectors:\n  - t_inline: {}\n") as (sup, store):
        await _aligned(sup)
        InlineCollector.mode = mode
        await asyncio.sleep(max(0.0, sup.status[("t_inline", "default")].due - asyncio.get_running_loop().time()))
        yield sup, store


async def test_an_inline_run_that_has_to_wait_finishes_in_its_task(inline_runs: None) -> None:
    async with _due_inline_run("wait") as (sup, store):
        n = len(INLINE)
        _scrape(sup)
        _scrape(sup)  # a second scrape in the same loop pass: the run it handed over is not started twice
        assert len(INLINE) == n + 1
        assert INLINE[-1][1]
        assert value(store, "t_inline_value") == float(n)  # the scrape gets the previous values
        await asyncio.sleep(0.05)
        assert value(store, "t_inline_value") == float(n + 1)  # the task finished the run
        assert sup.status[("t_inline", "default")].success is True
        assert ACTIVE[1] == 1


async def test_an_inline_run_that_hangs_times_out_from_its_start(inline_runs: None) -> None:
    async with _due_inline_run("hang") as (sup, _):
        _scrape(sup)
        status = sup.status[("t_inline", "default")]
        await asyncio.sleep(0.08)
        assert status.errors["timeout"] == 0
        await asyncio.sleep(0.07)  # 0.15 s after the scrape: the 0.1 s timeout counted from it has passed
        assert status.errors["timeout"] == 1
        InlineCollector.mode = "ok"
        n = len(INLINE)
        await asyncio.sleep(0.5)
        assert len(INLINE) > n  # and it runs again
        assert status.success is True


async def test_an_inline_run_that_fails_is_counted_in_the_scrape(inline_runs: None) -> None:
    async with _due_inline_run("refuse") as (sup, store):
        _scrape(sup)
        assert INLINE[-1][1]
        assert sup.status[("t_inline", "default")].errors["refused"] == 1
        assert value(store, "mevwatch_collector_success", collector="t_inline") == 0.0


async def test_unchanged_self_metrics_are_the_same_family_objects() -> None:
    async with _running("collectors:\n  - t_tick: {interval: 5}\n") as (sup, _):
        assert await sup.wait_first_round(2.0)

        def by_name() -> dict[str, Metric]:
            return {f.name: f for f in sup.meta_families()}

        first, second = by_name(), by_name()
        for name in ("mevwatch_collector_success", "mevwatch_collector_interval_seconds",
                     "mevwatch_collector_errors", "mevwatch_build"):
            assert second[name] is first[name], name
        status = sup.status[("t_tick", "default")]
        status.errors["refused"] += 1
        status.success = False
        third = by_name()
        assert third["mevwatch_collector_success"] is not first["mevwatch_collector_success"]
        assert [s.value for s in third["mevwatch_collector_success"].samples] == [0.0]
        assert [(s.labels["reason"], s.value) for s in third["mevwatch_collector_errors"].samples] == [("refused", 1.0)]
        assert third["mevwatch_build"] is first["mevwatch_build"]


async def test_a_scrape_in_the_loop_pass_where_the_timer_fired_does_not_run_it_twice(inline_runs: None) -> None:
    async with _running("collectors:\n  - t_inline: {}\n") as (sup, _):
        await asyncio.sleep(0.05)  # the first run, at start
        status = sup.status[("t_inline", "default")]
        loop = asyncio.get_running_loop()
        # due with the collector's timer, after it in the same loop pass: its task has not resumed yet
        loop.call_at(status.due + status.grace + 1e-6, _scrape, sup)
        await asyncio.sleep(status.due + status.grace - loop.time() + 0.1)
        times = [at for at, _ in INLINE]
        assert len(times) == 2, INLINE
        assert not INLINE[1][1]  # the timer's run, not the scrape's
        assert ACTIVE[1] == 1
