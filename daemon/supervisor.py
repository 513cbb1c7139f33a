"""The supervisor: runs every collector instance on its own schedule and reports on each.

Poll collectors run every interval (first run after a random jitter), never overlapping
their previous run; a run longer than the timeout is cancelled and counts as failed. Each
instance has one scheduler, its own task; nothing else runs a collector (a /metrics scrape
only reads the store).
Stream collectors run forever and are restarted with capped exponential backoff and jitter.
For every instance the supervisor exports success, duration, last success time and errors by
reason; collectors report nothing about their own health. Failure streaks are logged once
when they start and once when they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from mevwatch import __version__
from mevwatch.aio import cancel_and_wait, grid_at, sleep_until, wait_for
from mevwatch.blocking import BlockingPool
from mevwatch.collectors.base import (
    Collector,
    CollectorContext,
    CollectorError,
    Families,
    MetricSpec,
    NoData,
    Paths,
    PollCollector,
    StreamCollector,
)
from mevwatch.collectors.registry import get_kind
from mevwatch.daemon.buildinfo import build_info
from mevwatch.daemon.config import CollectorSpec, Config
from mevwatch.daemon.state import StateDB
from mevwatch.daemon.store import SampleStore, SnapshotKey
from mevwatch.families import Metric, Sample

__all__ = ["META_KEY", "SUPERVISOR_METRICS", "InstanceStatus", "Supervisor"]

log = structlog.get_logger("mevwatch.supervisor")
META_KEY: SnapshotKey = ("mevwatch", "self")
STREAM_BACKOFF_MIN = 1.0
STREAM_BACKOFF_MAX = 60.0
#: how often the supervisor's heartbeat advances (and its self-metrics that change without runs refresh)
#: when no systemd watchdog asks for a faster one. On the loop clock's grid k * interval, as the collectors'
#: runs (next_slot), so that a beat shares the wake-up of the runs at that interval: with a 5 s beat, a
#: daemon whose collectors run every 15 s woke four times per 15 s instead of once (bench/host.py: CPU
#: per hour 0.90 -> 0.75 s with the beat at 15 s, scraped every 15 s)
HEARTBEAT_INTERVAL = 15.0
#: how late after its slot a poll run may begin and still be stamped with the slot (sample_time)
SLOT_TOLERANCE = 0.05
COLLECTOR_SUCCESS = MetricSpec(
    "mevwatch_collector_success", "gauge",
    "1 if the collector's last run succeeded, 0 if it failed", ("collector", "instance"))
COLLECTOR_DURATION_SECONDS = MetricSpec(
    "mevwatch_collector_duration_seconds", "gauge", "Wall time of the collector's last run", ("collector", "instance"))
COLLECTOR_LAST_SUCCESS_TIMESTAMP_SECONDS = MetricSpec(
    "mevwatch_collector_last_success_timestamp_seconds", "gauge",
    "Unix time of the collector's last successful run", ("collector", "instance"))
COLLECTOR_ERRORS = MetricSpec(
    "mevwatch_collector_errors", "counter", "Failed collector runs by reason", ("collector", "instance", "reason"))
COLLECTOR_INTERVAL_SECONDS = MetricSpec(
    "mevwatch_collector_interval_seconds", "gauge", "Configured interval of the collector", ("collector", "instance"))
BUILD = MetricSpec(
    "mevwatch_build", "info", "mevwatch version, the branch and revision it was built from, and Python runtime",
    ("branch", "python", "revision", "version"))
BLOCKING_THREADS_ABANDONED = MetricSpec(
    "mevwatch_blocking_threads_abandoned", "gauge",
    "Blocking calls that timed out and whose thread has not returned (hung I/O)")
BLOCKING_CALLS_ABANDONED = MetricSpec(
    "mevwatch_blocking_calls_abandoned", "counter", "Blocking calls abandoned after their timeout since start")
CONFIG_LAST_RELOAD_SUCCESSFUL = MetricSpec(
    "mevwatch_config_last_reload_successful", "gauge",
    "1 if the last config (re)load succeeded, 0 if the running config is older than the file")
CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS = MetricSpec(
    "mevwatch_config_last_reload_success_timestamp_seconds", "gauge", "Unix time of the last successful config load")
STATE_WRITE_ERRORS = MetricSpec(
    "mevwatch_state_write_errors", "counter", "Failed writes to the state DB (full or unwritable disk)")
#: the self-metrics the supervisor adds to every scrape (docs/metrics.md, dashboards, contract test)
SUPERVISOR_METRICS: tuple[MetricSpec, ...] = (
    COLLECTOR_SUCCESS, COLLECTOR_DURATION_SECONDS, COLLECTOR_LAST_SUCCESS_TIMESTAMP_SECONDS, COLLECTOR_ERRORS,
    COLLECTOR_INTERVAL_SECONDS, BUILD, BLOCKING_THREADS_ABANDONED, BLOCKING_CALLS_ABANDONED,
    CONFIG_LAST_RELOAD_SUCCESSFUL, CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS, STATE_WRITE_ERRORS,
)


@dataclass(slots=True)
class InstanceStatus:
    kind: str
    instance: str
    interval: float
    timeout: float
    stream: bool
    success: bool | None = None  # None until the first run ends
    duration: float = 0.0
    last_success_wall: float = 0.0
    last_error: str = ""
    last_error_wall: float = 0.0
    next_run_wall: float = 0.0
    runs: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    alive: bool = False  # stream collectors: run() is executing
    #: how long a snapshot stays current without a new one: half its time to go stale. The interval,
    #: but a stream's own keepalive_interval (the supervisor keeps a live stream's snapshot fresh at it)
    fresh_for: float = 0.0
    due: float = 0.0  # poll collectors: loop time of the next run


def build_collector(
    spec: CollectorSpec, paths: Paths, state: StateDB | None, pool: BlockingPool
) -> tuple[Collector[Any], InstanceStatus]:
    """A collector instance of ``spec`` with its resolved interval and timeout."""
    cls = get_kind(spec.kind)
    if cls is None:  # validated by config; only a broken install gets here
        raise RuntimeError(f"collector kind {spec.kind!r} vanished")
    interval = spec.options.interval or cls.default_interval
    timeout = spec.options.timeout or min(cls.default_timeout, interval)
    ctx = CollectorContext(
        kind=spec.kind,
        instance=spec.options.instance,
        interval=interval,
        timeout=timeout,
        paths=paths,
        state=state,
        pool=pool,
    )
    collector = cls(ctx, spec.options)
    fresh_for = collector.keepalive_interval if isinstance(collector, StreamCollector) else interval
    status = InstanceStatus(spec.kind, spec.options.instance, interval, timeout, isinstance(collector, StreamCollector),
                            fresh_for=fresh_for)
    return collector, status


def next_slot(planned: float, now: float, interval: float, offset: float) -> float:
    """When a poll collector runs next: the first point of its grid at least half an interval
    after the run it just did (``planned``) and not in the past.

    The grid is ``k * interval + offset`` on the loop clock, the same for every collector, so
    collectors of one interval (and of its multiples) with no jitter run in one loop wake-up
    instead of one each. A fixed rate in steady state; after an overrun the missed slots are
    skipped instead of run in a burst; the first run, at start, is off the grid and the second
    joins it.
    """
    return grid_at(max(planned + interval / 2, now), interval, offset)


def sample_time(slot: float, started: float, wall_offset: float) -> float:
    """The Unix time a poll run's samples are stamped with (``slot`` and ``started`` on the loop clock,
    ``wall_offset`` = Unix time - loop time): its slot when it began within SLOT_TOLERANCE of it, else
    when it began.

    The alert engine counts a rule's ``for`` from this time and its tick is on the same grid, so an
    alert pending since the slot fires on the tick ``for`` later, as Prometheus' does ``for`` after its
    evaluation. Runs due at one instant share a loop wake-up and start one after another behind the
    tick due then too: they begin a few ms after their slot (bench/stack.py), and stamping that start
    would put each alert a tick later. A run that began later than the tolerance is stamped with its
    start: it did not look at the host at its slot.
    """
    return (slot if started - slot <= SLOT_TOLERANCE else started) + wall_offset


class Supervisor:
    def __init__(
        self,
        config: Config,
        store: SampleStore,
        state: StateDB | None = None,
        pool: BlockingPool | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.config = config
        self.store = store
        self.state = state
        self.pool = pool or BlockingPool(config.daemon.blocking_threads)
        self.collectors: dict[SnapshotKey, Collector[Any]] = {}
        self.status: dict[SnapshotKey, InstanceStatus] = {}
        #: each sample name the running collectors declare, with its kind (why a rule has no data)
        self.declared: dict[str, str] = {}
        self._tasks: dict[SnapshotKey, asyncio.Task[None]] = {}
        self._first_round = asyncio.Event()
        self.heartbeat = time.monotonic()  # advanced by the scheduler loop; read by the watchdog
        self.heartbeat_interval = heartbeat_interval
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.reload_ok = True
        self.reload_wall = time.time()
        self.extra_meta: list[Callable[[], Families]] = []  # other components' self-metrics
        #: cheap readings of the self-metrics' values that change without a collector run or a reload
        #: (hung threads, the state DB's writes, exposition errors): the heartbeat builds the self-metrics
        #: only when one of them differs from its last beat
        self.volatile: list[Callable[[], object]] = [self._own_volatile]
        self._volatile_seen: list[object] = []
        self._meta_pending = False  # a put of the self-metrics is scheduled (_meta_changed)
        self._meta_shown: list[Sample] | None = None  # the samples of the self-metrics last put

    # --- lifecycle --------------------------------------------------------------------

    @property
    def paths(self) -> Paths:
        return self.config.daemon.paths.to_paths()

    def _build(self, spec: CollectorSpec) -> tuple[Collector[Any], InstanceStatus]:
        return build_collector(spec, self.paths, self.state, self.pool)

    async def start(self) -> None:
        for spec in self.config.collectors:
            if not spec.options.enabled:
                continue
            collector, status = self._build(spec)
            self.collectors[spec.key] = collector
            self.status[spec.key] = status
        self.declared = {name: key[0] for key, collector in self.collectors.items()
                         for spec in collector.metrics for name in spec.sample_names}
        for key, collector in self.collectors.items():
            self._tasks[key] = asyncio.create_task(self._run(key, collector), name=f"collector:{key[0]}/{key[1]}")
        if self._heartbeat_task is None:
            self._heartbeat_task = asyncio.create_task(self._beat(), name="supervisor:heartbeat")
        self._publish_meta()
        if not self.collectors:
            self._first_round.set()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        if tasks:
            _, running = await asyncio.wait(tasks, timeout=3.0)
            for t in running:  # a collector that ignores its cancel: say so, it is no longer watched
                log.error("collector_did_not_stop", task=t.get_name(), waited_s=3.0)
        for collector in self.collectors.values():
            with contextlib.suppress(Exception):
                await wait_for(collector.close(), 1.0)
        self._tasks.clear()
        self.collectors.clear()
        self.declared = {}
        self.status.clear()

    async def shutdown(self) -> None:
        await self.stop()
        if self._heartbeat_task is not None:
            await cancel_and_wait(self._heartbeat_task)
            self._heartbeat_task = None
        self.pool.shutdown()

    async def swap(self, config: Config) -> None:
        """Replace the running collector set by the one of ``config`` (after it validated)."""
        await self.stop()
        self.config = config
        self._first_round = asyncio.Event()
        self.store.retain([META_KEY, *(s.key for s in config.collectors if s.options.enabled)])
        await self.start()

    async def wait_first_round(self, timeout: float | None = None) -> bool:
        try:
            await wait_for(self._first_round.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def ready(self) -> bool:
        return self._first_round.is_set()

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.heartbeat_interval
        due = loop.time()
        while True:
            self.heartbeat = time.monotonic()
            self._check_first_round()
            seen = [read() for read in self.volatile]
            if seen != self._volatile_seen:
                self._volatile_seen = seen
                self._meta_changed()
            else:  # with no collector running, nothing else keeps the self-metrics current
                self.store.touch(META_KEY)
            due = next_slot(due, loop.time(), interval, 0.0)
            await sleep_until(loop, due)

    def _own_volatile(self) -> object:
        return (self.pool.abandoned, self.pool.abandoned_total,
                self.state.write_errors_total if self.state is not None else None)

    def _check_first_round(self) -> None:
        if not self._first_round.is_set() and all(s.success is not None or s.alive for s in self.status.values()):
            self._first_round.set()

    # --- running ----------------------------------------------------------------------

    async def _run(self, key: SnapshotKey, collector: Collector[Any]) -> None:
        status = self.status[key]
        if isinstance(collector, StreamCollector):
            await self._run_stream(key, collector, status)
        elif isinstance(collector, PollCollector):
            await self._run_poll(key, collector, status)

    async def _run_poll(self, key: SnapshotKey, collector: PollCollector[Any], status: InstanceStatus) -> None:
        loop = asyncio.get_running_loop()
        jitter = collector.options.jitter
        offset = random.uniform(0, jitter) if jitter else 0.0
        status.due = loop.time() + offset
        while True:
            status.next_run_wall = time.time() + max(status.due - loop.time(), 0.0)
            await sleep_until(loop, status.due)
            started = loop.time()
            sampled_at = sample_time(status.due, started, time.time() - started)
            try:
                # timeout() runs collect() in this task: wait_for would create a task per run.
                async with asyncio.timeout_at(started + status.timeout):
                    families = await collector.collect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._settle_error(key, status, exc, started, sampled_at)
            else:
                self._succeeded(key, status, families, started, sampled_at)
            status.due = next_slot(status.due, loop.time(), status.interval, offset)

    def _settle_error(self, key: SnapshotKey, status: InstanceStatus, exc: BaseException, started: float,
                      sampled_at: float) -> None:
        """The end of a run that raised: failed with a reason, or succeeded empty (NoData)."""
        if isinstance(exc, TimeoutError):
            self._failed(key, status, "timeout", f"run exceeded the {status.timeout:g}s timeout", started)
        elif isinstance(exc, CollectorError):
            if exc.families is not None:
                self.store.put(key, exc.families, status.interval, sampled_at)
            self._failed(key, status, exc.reason, exc.message, started)
        elif isinstance(exc, NoData):
            self._succeeded(key, status, (), started, sampled_at)
        else:  # a bug in a collector: reported, never fatal
            log.error("collector_bug", collector=key[0], instance=key[1], exc_info=exc)
            self._failed(key, status, "exception", f"{type(exc).__name__}: {exc}", started)

    async def _run_stream(self, key: SnapshotKey, collector: StreamCollector[Any], status: InstanceStatus) -> None:
        loop = asyncio.get_running_loop()
        backoff = STREAM_BACKOFF_MIN

        def emit(families: Families) -> None:
            status.alive = True
            self._succeeded(key, status, families, None, None)

        keeper = asyncio.create_task(self._keep_stream_fresh(key, status))
        try:
            while True:
                started = loop.time()
                status.alive = True
                self._check_first_round()
                try:
                    await collector.run(emit)
                    reason, message = "exited", "stream ended"
                except asyncio.CancelledError:
                    raise
                except CollectorError as exc:
                    reason, message = exc.reason, exc.message
                except Exception as exc:
                    log.exception("collector_bug", collector=key[0], instance=key[1])
                    reason, message = "exception", f"{type(exc).__name__}: {exc}"
                status.alive = False
                self._failed(key, status, reason, message, None)
                if loop.time() - started > STREAM_BACKOFF_MAX:
                    backoff = STREAM_BACKOFF_MIN
                wait = random.uniform(backoff / 2, backoff)
                status.next_run_wall = time.time() + wait
                await asyncio.sleep(wait)
                backoff = min(backoff * 2, STREAM_BACKOFF_MAX)
        finally:
            keeper.cancel()

    async def _keep_stream_fresh(self, key: SnapshotKey, status: InstanceStatus) -> None:
        # once per interval: the snapshot goes stale after two, so one late wake-up still keeps it
        while True:
            await asyncio.sleep(max(status.fresh_for, 0.05))
            if status.alive:
                self.store.touch(key)

    def _succeeded(
        self, key: SnapshotKey, status: InstanceStatus, families: Families, started: float | None,
        sampled_at: float | None,
    ) -> None:
        if started is not None:
            status.duration = asyncio.get_running_loop().time() - started
            status.runs += 1
        flipped = status.success is not True
        if status.success is False:
            log.info("collector_recovered", collector=key[0], instance=key[1])
        status.success = True
        status.last_success_wall = time.time()
        # The self-metrics' put is scheduled before the store wakes the alert engine's task, so that it
        # comes first in the next loop iteration and the engine evaluates both changes in one pass
        # (one wake-up of its task per round of runs instead of two).
        self._meta_changed()
        self.store.put(key, families, status.fresh_for, sampled_at)
        if flipped:
            self._check_first_round()

    def _failed(
        self, key: SnapshotKey, status: InstanceStatus, reason: str, message: str, started: float | None
    ) -> None:
        if started is not None:
            status.duration = asyncio.get_running_loop().time() - started
            status.runs += 1
        flipped = status.success is not False
        if flipped:
            log.warning("collector_failed", collector=key[0], instance=key[1], reason=reason, error=message)
        status.success = False
        status.errors[reason] += 1
        status.last_error = f"{reason}: {message}"
        status.last_error_wall = time.time()
        if flipped:
            self._check_first_round()
        self._meta_changed()

    # --- self metrics -----------------------------------------------------------------

    def _publish_meta(self) -> None:
        """Put the self-metrics now (start, reload, the end of runs) if a value they show changed; else only
        keep their snapshot fresh. A heartbeat that finds nothing new puts nothing, so neither the alert
        engine reads them again nor the scrape renders them again."""
        self._meta_pending = False
        families = self.meta_families()
        shown = [s for fam in families for s in fam.samples]
        if shown == self._meta_shown and self.store.get(META_KEY) is not None:
            self.store.touch(META_KEY)
            return
        self._meta_shown = shown
        self.store.put(META_KEY, families, interval=3600.0)

    def _meta_changed(self) -> None:
        """The self-metrics changed: put them once at the end of this loop iteration, so that runs
        ending together (collectors of one interval share a wake-up) make one snapshot."""
        if not self._meta_pending:
            self._meta_pending = True
            asyncio.get_running_loop().call_soon(self._publish_meta)

    def meta_families(self) -> list[Metric]:
        items = sorted(self.status.items())

        def family(spec: MetricSpec, rows: list[tuple[list[str], float]]) -> Metric:
            fam = spec.gauge() if spec.type == "gauge" else spec.counter()
            for lv, v in rows:
                fam.add_metric(lv, v)
            return fam

        ran = [(k, i, st) for (k, i), st in items if st.success is not None]
        families: list[Metric] = [
            family(COLLECTOR_SUCCESS, [([k, i], 1.0 if st.success else 0.0) for k, i, st in ran]),
            family(COLLECTOR_DURATION_SECONDS, [([k, i], st.duration) for k, i, st in ran]),
            family(COLLECTOR_LAST_SUCCESS_TIMESTAMP_SECONDS,
                   [([k, i], st.last_success_wall) for (k, i), st in items if st.last_success_wall]),
            family(COLLECTOR_ERRORS,
                   [([k, i, reason], float(n)) for (k, i), st in items for reason, n in sorted(st.errors.items())]),
            family(COLLECTOR_INTERVAL_SECONDS, [([k, i], st.interval) for (k, i), st in items]),
            *self._process_families(),
        ]
        for extra in self.extra_meta:
            families.extend(extra())
        return families

    def _process_families(self) -> list[Metric]:
        write_errors = self.state.write_errors_total if self.state is not None else None
        info = build_info()  # as node_exporter_build_info: what `mevwatch --version` prints
        families: list[Metric] = [
            BUILD.info({
                "version": __version__,
                "branch": info.branch,
                "revision": info.revision,
                "python": ".".join(map(str, sys.version_info[:3])),
            }),
            BLOCKING_THREADS_ABANDONED.gauge(float(self.pool.abandoned)),
            BLOCKING_CALLS_ABANDONED.counter(float(self.pool.abandoned_total)),
            CONFIG_LAST_RELOAD_SUCCESSFUL.gauge(1.0 if self.reload_ok else 0.0),
            CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS.gauge(self.reload_wall),
        ]
        if write_errors is not None:
            families.append(STATE_WRITE_ERRORS.counter(float(write_errors)))
        return families
