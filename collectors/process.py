"""mevwatch's own health: RSS, CPU seconds, open fds, threads, event-loop lag and GC."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import time
from typing import ClassVar

from mevwatch.collectors.base import CollectorOptions, Families, MetricSpec, PollCollector
from mevwatch.collectors.registry import register
from mevwatch.families import Metric

__all__ = ["ProcessCollector", "ProcessOptions", "parse_statm_rss_pages"]


class ProcessOptions(CollectorOptions):
    pass


def parse_statm_rss_pages(text: str) -> int:
    """Resident pages, the second field of /proc/<pid>/statm."""
    return int(text.split()[1])


PROCESS_RESIDENT_MEMORY_BYTES = MetricSpec(
    "mevwatch_process_resident_memory_bytes", "gauge",
    "Resident memory of mevwatch",
)

PROCESS_CPU_SECONDS = MetricSpec("mevwatch_process_cpu_seconds", "counter", "User and system CPU time of mevwatch")

PROCESS_THREADS = MetricSpec("mevwatch_process_threads", "gauge", "Threads of the mevwatch process")

EVENT_LOOP_LAG_SECONDS = MetricSpec(
    "mevwatch_event_loop_lag_seconds", "gauge",
    "Delay of a zero-delay callback on the event loop",
)

PROCESS_START_TIME_SECONDS = MetricSpec("mevwatch_process_start_time_seconds", "gauge", "Unix time mevwatch started")

PROCESS_OPEN_FDS = MetricSpec("mevwatch_process_open_fds", "gauge", "Open file descriptors of mevwatch")

PYTHON_GC_COLLECTIONS = MetricSpec(
    "mevwatch_python_gc_collections", "counter",
    "Garbage collections by generation",
    ("generation",),
)


@register
class ProcessCollector(PollCollector[ProcessOptions]):
    kind: ClassVar[str] = "process"
    Options = ProcessOptions
    default_interval: ClassVar[float] = 5.0
    default_timeout: ClassVar[float] = 2.0
    runbook_section = "collector-failing"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        PROCESS_RESIDENT_MEMORY_BYTES,
        PROCESS_CPU_SECONDS,
        PROCESS_THREADS,
        EVENT_LOOP_LAG_SECONDS,
        PROCESS_START_TIME_SECONDS,
        PROCESS_OPEN_FDS,
        PYTHON_GC_COLLECTIONS,
    )

    async def collect(self) -> Families:
        loop = asyncio.get_running_loop()
        # Event-loop lag: how late a zero-delay callback runs behind its schedule.
        t0 = loop.time()
        await asyncio.sleep(0)
        lag = loop.time() - t0
        procfs = self.ctx.paths.procfs
        pid = os.getpid()
        page = os.sysconf("SC_PAGE_SIZE")
        try:
            rss = parse_statm_rss_pages((procfs / str(pid) / "statm").read_text(encoding="ascii")) * page
        except OSError:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        try:
            fds = len(os.listdir(procfs / str(pid) / "fd"))
        except OSError:
            fds = -1
        times = os.times()
        families: list[Metric] = [
            PROCESS_RESIDENT_MEMORY_BYTES.gauge(rss),
            PROCESS_CPU_SECONDS.counter(times.user + times.system),
            PROCESS_THREADS.gauge(_thread_count(procfs, pid)),
            EVENT_LOOP_LAG_SECONDS.gauge(lag),
            PROCESS_START_TIME_SECONDS.gauge(_START_WALL),
        ]
        if fds >= 0:
            families.append(
                PROCESS_OPEN_FDS.gauge(fds)
            )
        gen = PYTHON_GC_COLLECTIONS.counter()
        for i, stat in enumerate(gc.get_stats()):
            gen.add_metric([str(i)], float(stat["collections"]))
        families.append(gen)
        return families


def _thread_count(procfs: os.PathLike[str], pid: int) -> float:
    try:
        with open(os.path.join(procfs, str(pid), "status"), encoding="ascii") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return float(line.split()[1])
    except OSError:
        pass
    import threading

    return float(threading.active_count())


_START_WALL = time.time()
