"""The supervisor keeps every collector on schedule when one hangs, raises or blocks a thread.

The tests run on a virtual clock (looptime): the loop's time jumps to its next timer when nothing
else is ready, so schedules are checked to the microsecond and a second of schedule takes
milliseconds. The store reads the loop clock for staleness.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import ClassVar

import pytest

from mevwatch.blocking import BlockingPool
from mevwatch.collectors.base import CollectorError, CollectorOptions, Emit, Families, PollCollector, StreamCollector
from mevwatch.collectors.registry import register
from mevwatch.daemon.config import load_config_text
from mevwatch.daemon.store import SampleStore
from mevwatch.daemon.supervisor import META_KEY, Supervisor
from mevwatch.families import GaugeMetricFamily, Metric

pytestmark = pytest.mark.looptime

RUNS: dict[str, list[float]] = {}
RELEASE = threading.Event()
EPS = 1e-6


def _now() -> float:
    return asyncio.get_running_loop().time()


def _family(name: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, f"test value of {name}", value=value)


@register
class TickCollector(PollCollector[CollectorOptions]):
    kind: ClassVar[str] = "t_tick"
    default_interval = 0.1
    default_timeout = 0.05

    async def collect(self) -> Families:
        RUNS.setdefault(self.ctx.instance, []).append(_now())
        return [_family("t_tick_value", 1.0)]


@register
class HangCollector(PollCollector[CollectorOptions]):
    kind: ClassVar[str] = "t_hang"
    default_interval = 0.1
    default_timeout = 0.2

    async def collect(self) -> Families:
        RUNS.setdefault("hang", []).append(_now())
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
    starts: ClassVar[list[float]] = []

    async def run(self, emit: Emit) -> None:
        DyingStream.starts.append(_now())
        emit([_family("t_stream_value", float(len(DyingStream.starts)))])
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


@register
class SlowKeptStream(QuietStream):
    """A quiet stream that works on a period of its own, 10x its interval (logwatch's rescan)."""

    kind: ClassVar[str] = "t_slowkept"

    @property
    def keepalive_interval(self) -> float:
        return 10 * self.ctx.interval

    async def run(self, emit: Emit) -> None:
        emit([_family("t_slowkept_value", 1.0)])
        await asyncio.Event().wait()


def value(store: SampleStore, name: str, **labels: str) -> float | None:
    for fam in store.families():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


@contextlib.asynccontextmanager
async def _running(config: str, pool: BlockingPool | None = None) -> AsyncIterator[tuple[Supervisor, SampleStore]]:
    """A started supervisor over ``config`` and a store on the loop clock, shut down after the block."""
    store = SampleStore(clock=asyncio.get_running_loop().time)
    sup = Supervisor(load_config_text(config, "t", {}), store, pool=pool)
    await sup.start()
    try:
        yield sup, store
    finally:
        await sup.shutdown()


async def test_failing_collectors_do_not_disturb_the_others() -> None:
    RUNS.clear()
    FlakyCollector.calls = 0
    config = "collectors:\n  - t_tick: {instance: a}\n  - t_tick: {instance: b, interval: 0.05}\n" \
             "  - t_hang: {}\n  - t_flaky: {}\n"
    async with _running(config) as (sup, store):
        await asyncio.sleep(1.0 + EPS)
        # The healthy collectors kept their schedule to the microsecond: a run every interval.
        for inst, interval in (("a", 0.1), ("b", 0.05)):
            gaps = [b - a for a, b in zip(RUNS[inst], RUNS[inst][1:], strict=False)]
            assert len(RUNS[inst]) == round(1.0 / interval) + 1, (inst, RUNS[inst])
            assert all(abs(g - interval) < EPS for g in gaps), (inst, gaps)
        # The hung collector is cancelled at its timeout and retried on the next slot, never overlapping.
        hang, status = RUNS["hang"], sup.status[("t_hang", "default")]
        assert status.timeout == 0.1  # its default 0.2, capped at the interval
        assert all(b - a >= status.timeout - EPS for a, b in itertools.pairwise(hang)), hang
        assert len(hang) == 11, hang
        assert status.errors["timeout"] == len(hang) - 1
        assert value(store, "mevwatch_collector_success", collector="t_hang") == 0.0
        assert value(store, "mevwatch_collector_errors_total", collector="t_hang", reason="timeout")
        # Raising collectors: expected errors by reason, bugs as "exception"; samples gone after 2x interval.
        assert value(store, "mevwatch_collector_success", collector="t_flaky") == 0.0
        assert value(store, "mevwatch_collector_errors_total", collector="t_flaky", reason="refused")
        assert value(store, "mevwatch_collector_errors_total", collector="t_flaky", reason="exception")
        assert value(store, "t_flaky_value") is None
        assert value(store, "t_tick_value") == 1.0


async def test_a_collector_blocked_in_a_thread_times_out_and_the_others_keep_running() -> None:
    RUNS.clear()
    RELEASE.clear()
    pool = BlockingPool(max_workers=4)
    try:
        async with _running("collectors:\n  - t_tick: {instance: a}\n  - t_block: {}\n", pool) as (sup, store):
            await asyncio.sleep(0.5)
            assert len(RUNS["a"]) >= 5
            status = sup.status[("t_block", "default")]
            assert status.errors["timeout"] >= 1
            assert value(store, "mevwatch_collector_success", collector="t_block") == 0.0
            assert pool.abandoned >= 1
            assert value(store, "mevwatch_blocking_threads_abandoned") is not None
    finally:
        RELEASE.set()


async def test_stale_samples_vanish_after_twice_the_interval() -> None:
    FlakyCollector.calls = 0
    async with _running("collectors:\n  - t_flaky: {interval: 0.2}\n") as (_, store):
        await asyncio.sleep(EPS)
        assert value(store, "t_flaky_value") == 7.0
        await asyncio.sleep(0.4 - 2 * EPS)  # just under 2x0.2 after the run: still served
        assert value(store, "t_flaky_value") == 7.0
        await asyncio.sleep(2 * EPS)  # just over
        assert value(store, "t_flaky_value") is None


async def test_stream_collector_restarts_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    import mevwatch.daemon.supervisor as supmod

    monkeypatch.setattr(supmod, "STREAM_BACKOFF_MIN", 0.1)
    monkeypatch.setattr(supmod, "STREAM_BACKOFF_MAX", 0.4)
    DyingStream.starts.clear()
    async with _running("collectors:\n  - t_stream: {}\n") as (_, store):
        await asyncio.sleep(3.0)
        starts = DyingStream.starts
        # each run lasts 0.05 s, then waits a random share (1/2 to 1) of a backoff that doubles up to 0.4
        waits = [b - a - 0.05 for a, b in itertools.pairwise(starts)]
        bounds = [min(0.1 * 2**i, 0.4) for i in range(len(waits))]
        assert all(b / 2 - EPS <= w <= b + EPS for w, b in zip(waits, bounds, strict=True)), (waits, bounds)
        assert len(starts) >= 3.0 / (0.4 + 0.05)
        assert value(store, "mevwatch_collector_errors_total", collector="t_stream", reason="reset")


async def test_ready_after_first_round_and_meta_always_present() -> None:
    async with _running("collectors:\n  - t_tick: {interval: 5}\n") as (sup, store):
        assert await sup.wait_first_round(2.0)
        assert store.get(META_KEY) is not None
        assert value(store, "mevwatch_build_info") == 1.0


async def test_runs_ending_together_make_one_self_metrics_snapshot_and_a_read_builds_nothing() -> None:
    FlakyCollector.calls = 0
    config = "collectors:\n  - t_tick: {instance: a, interval: 0.1}\n  - t_tick: {instance: b, interval: 0.1}\n" \
             "  - t_flaky: {interval: 0.1}\n"
    async with _running(config) as (sup, store):
        await asyncio.sleep(0.25)  # runs at 0, 0.1 and 0.2: three collectors on one grid each time
        meta = store.get(META_KEY)
        assert meta is not None
        # start() put one; each of the three rounds one more (not one per run)
        assert sup.status[("t_tick", "a")].runs == 3
        seqs = store.changes(meta.seq - 1)
        assert seqs[1] == [META_KEY]
        seq = store.seq
        for _ in range(5):
            assert value(store, "mevwatch_collector_success", collector="t_tick") == 1.0
            assert value(store, "mevwatch_collector_success", collector="t_flaky") == 0.0
        assert store.seq == seq  # reading wrote nothing
        last = value(store, "mevwatch_collector_last_success_timestamp_seconds", collector="t_tick", instance="a")
        assert last == sup.status[("t_tick", "a")].last_success_wall
        assert value(store, "mevwatch_collector_errors_total", collector="t_flaky", reason="refused") == float(
            sup.status[("t_flaky", "default")].errors["refused"])


async def test_self_metrics_snapshots_count_one_per_round() -> None:
    config = "collectors:\n  - t_tick: {instance: a, interval: 0.1}\n  - t_tick: {instance: b, interval: 0.1}\n"
    async with _running(config) as (_, store):
        await asyncio.sleep(EPS)
        first = store.get(META_KEY)
        assert first is not None
        await asyncio.sleep(0.5)
        last = store.get(META_KEY)
        assert last is not None
        # per round: two collector snapshots and one self-metrics snapshot; five rounds
        assert last.seq - first.seq == 5 * 3


async def test_the_heartbeat_shares_the_wake_up_of_runs_at_its_interval() -> None:
    RUNS.clear()
    async with _running("collectors:\n  - t_tick: {instance: slow, interval: 15}\n") as (sup, _store):
        beats: list[float] = []
        sup.volatile.append(lambda: beats.append(_now()))
        await asyncio.sleep(100.0)
    assert sup.heartbeat_interval == 15.0
    # after the first run and beat at start (off the grid), both on the loop clock's grid k * 15 s, together
    assert beats[1:] == pytest.approx(RUNS["slow"][1:len(beats)], abs=EPS)
    assert all(abs(t - round(t / 15.0) * 15.0) < EPS for t in beats[1:]), beats
    assert [b - a for a, b in itertools.pairwise(beats[1:])] == pytest.approx([15.0] * (len(beats) - 2))


async def test_a_round_of_runs_and_its_self_metrics_wake_a_store_watcher_once() -> None:
    # the alert engine's task: woken by the store, it reads the change set; the runs and the self-metrics
    # they change are one change set, not two wake-ups
    RUNS.clear()
    store = SampleStore(clock=asyncio.get_running_loop().time)
    wake = store.watch()
    seen: list[set[tuple[str, str]]] = []

    async def watcher() -> None:
        since = 0
        while True:
            await wake.wait()
            wake.clear()
            since, keys = store.changes(since)
            seen.append(set(keys))

    task = asyncio.create_task(watcher())
    sup = Supervisor(load_config_text("collectors:\n  - t_tick: {instance: a, interval: 15}\n"
                                      "  - t_tick: {instance: b, interval: 15}\n", "t", {}), store)
    await sup.start()
    try:
        await asyncio.sleep(61.0)
    finally:
        await sup.shutdown()
        task.cancel()
    rounds = [keys for keys in seen if ("t_tick", "a") in keys]
    assert len(rounds) == 5  # at start, then every 15 s
    both = {("t_tick", "a"), ("t_tick", "b"), META_KEY}
    assert all(keys == both for keys in rounds[1:]), seen
    assert len(seen) == len(rounds) + (seen[0] != rounds[0])


async def test_a_heartbeat_with_nothing_new_puts_no_self_metrics_and_they_stay_fresh() -> None:
    async with _running("collectors:\n  - t_quiet: {interval: 10}\n") as (sup, store):
        await asyncio.sleep(1.0)
        first = store.get(META_KEY)
        assert first is not None
        builds = 0
        build = sup.meta_families

        def counted() -> list[Metric]:
            nonlocal builds
            builds += 1
            return build()

        sup.meta_families = counted  # type: ignore[method-assign]
        await asyncio.sleep(7300.0)  # over 1,400 heartbeats, past the 2 h after which a snapshot not kept is stale
        meta = store.get(META_KEY)
        assert meta is not None
        assert meta.seq == first.seq  # kept fresh, never put again: nothing it shows changed
        assert builds == 0  # nor built to find that out
        # a value changes without a run (a blocking call abandoned in its thread): the next heartbeat puts it
        sup.pool.abandoned += 1
        sup.pool.abandoned_total += 1
        await asyncio.sleep(sup.heartbeat_interval)
        assert value(store, "mevwatch_blocking_threads_abandoned") == 1.0
        assert builds == 1
        meta = store.get(META_KEY)
        assert meta is not None
        assert meta.seq > first.seq


async def test_a_live_stream_collector_without_news_keeps_its_samples() -> None:
    async with _running("collectors:\n  - t_quiet: {}\n") as (_, store):
        for _ in range(8):  # 0.8 s: 4x the 0.2 s after which an untouched snapshot is stale
            await asyncio.sleep(0.1)
            assert value(store, "t_quiet_value") == 1.0


async def test_a_stream_is_kept_fresh_at_its_own_keepalive_and_goes_stale_at_twice_it() -> None:
    async with _running("collectors:\n  - t_slowkept: {interval: 0.1}\n") as (sup, store):
        await asyncio.sleep(EPS)
        touched: list[float] = []
        touch = store.touch

        def counted(key: tuple[str, str]) -> None:
            touched.append(_now())
            touch(key)

        store.touch = counted  # type: ignore[method-assign]
        await asyncio.sleep(3.0)
        assert 2 <= len(touched) <= 3  # every 1 s, not every 0.1 s
        assert value(store, "t_slowkept_value") == 1.0
        (task,) = sup._tasks.values()
        task.cancel()  # the stream dies: nothing keeps its snapshot fresh any more
        await asyncio.sleep(1.9)
        assert value(store, "t_slowkept_value") == 1.0  # within 2x the keepalive of the last touch
        await asyncio.sleep(1.0)
        assert value(store, "t_slowkept_value") is None


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


@pytest.mark.parametrize(
    ("slot", "started", "expected"),
    [
        (100.0, 100.0, 100.0),
        (100.0, 100.004, 100.0),  # began behind the runs and the tick due at the same instant: its slot
        (100.0, 100.05, 100.0),
        (100.0, 100.3, 100.3),  # the loop was held up: when it began, not when it was due
    ],
)
def test_a_run_is_stamped_with_its_slot_when_it_began_on_time(slot: float, started: float, expected: float) -> None:
    from mevwatch.daemon.supervisor import sample_time

    assert sample_time(slot, started, 1_700_000_000.0) == pytest.approx(1_700_000_000.0 + expected, abs=1e-9)


async def test_a_poll_runs_snapshot_carries_its_slot_in_unix_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import mevwatch.daemon.supervisor as supmod

    loop = asyncio.get_running_loop()
    offset = 1_700_000_000.0  # Unix time = loop time + offset: a host clock that is not stepped
    monkeypatch.setattr(supmod, "time", SimpleNamespace(time=lambda: loop.time() + offset, monotonic=time.monotonic))
    RUNS.clear()
    async with _running("collectors:\n  - t_tick: {instance: a, interval: 0.1}\n") as (_, store):
        await asyncio.sleep(0.35)
        snap = store.get(("t_tick", "a"))
        assert snap is not None
        assert snap.sampled_at is not None
        assert snap.sampled_at == pytest.approx(RUNS["a"][-1] + offset, abs=1e-9)


@pytest.mark.looptime(False)  # counts real loop iterations: a callback ready in each stops the virtual clock
async def test_sleepers_until_one_instant_wake_in_one_loop_iteration() -> None:
    from mevwatch.aio import sleep_until

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
        await sleep_until(loop, when)
        woke.append(iterations)

    spin()
    when = loop.time() + 0.05
    await asyncio.gather(*(sleeper(when) for _ in range(3)))
    spinning = False
    assert len(set(woke)) == 1, woke
    assert loop.time() >= when
