"""The supervisor keeps every collector on schedule when one hangs, raises or blocks a thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest

from mevwatch.blocking import BlockingPool
from mevwatch.collectors.base import CollectorError, CollectorOptions, Emit, Families, PollCollector, StreamCollector
from mevwatch.collectors.registry import register
from mevwatch.daemon.config import load_config_text
from mevwatch.daemon.store import SampleStore, Snapshot, SnapshotKey
from mevwatch.daemon.supervisor import META_KEY, Supervisor
from mevwatch.families import GaugeMetricFamily, Metric

RUNS: dict[str, list[float]] = {}
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
    from mevwatch.daemon.supervisor import sleep_until

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
