"""Watched directories: total size, file count and largest files of each (``du``, ``ls -S``), within budgets.

A walk runs in the blocking pool and stops at a file count or time budget (``truncated``); a walk
that hangs (a dead NFS mount below the directory) is reported ``stalled`` and not restarted until it
returns. The largest files' paths are shown by ``mevwatch diagnose`` only: file names churn as labels.
"""

from __future__ import annotations

import glob
import heapq
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import Field

from mevwatch.collectors._fscalls import (
    AbsolutePaths,
    HostRoot,
    InFlight,
    call_timeout,
    guarded,
    has_glob,
    literal_parent,
    probe_missing,
)
from mevwatch.collectors.base import CollectorContext, CollectorOptions, Families, MetricSpec, PollCollector
from mevwatch.collectors.registry import register
from mevwatch.families import Metric
from mevwatch.fields import Duration

__all__ = ["DirScan", "DirectoriesCollector", "DirectoriesOptions", "scan_tree"]

DIR_STATUSES = ("ok", "truncated", "partial", "missing", "permission_denied", "stalled", "error")


@dataclass(slots=True)
class DirScan:
    status: str
    disk_usage: int = 0  # allocated bytes of regular files, like du
    files: int = 0
    dirs: int = 0
    unreadable: int = 0
    matched: int = 0  # paths the watched entry (or its glob) resolved to
    largest: list[tuple[int, str]] = field(default_factory=list)  # (apparent size, path), largest first
    duration: float = 0.0
    finished_wall: float = 0.0
    message: str = ""


def scan_tree(
    pattern: str,
    top_n: int = 5,
    max_files: int = 1_000_000,
    time_budget: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> DirScan:
    """Walk a directory (or every match of a glob) without following links, within a file and time budget.

    Hard-linked files count once. ``status`` is ``truncated`` when a budget ran out (the figures
    are then lower bounds) and ``partial`` when some subdirectories could not be read.
    """
    started = clock()
    deadline = started + time_budget
    if has_glob(pattern):
        roots = sorted(glob.glob(pattern))
        if not roots:
            status, message = probe_missing(literal_parent(pattern))
            # An empty glob (no /tmp/mev_* right now) is normal; only an unreadable parent is news.
            if status == "missing":
                status, message = "ok", ""
            return DirScan(status, message=message, duration=clock() - started, finished_wall=time.time())
    else:
        roots = [pattern]
    result = DirScan("ok", matched=0)
    heap: list[tuple[int, str]] = []
    seen_inodes: set[tuple[int, int]] = set()
    stack: list[str] = []
    truncated = False

    def add_file(path: str, st: os.stat_result) -> None:
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in seen_inodes:
                return
            seen_inodes.add(key)
        result.files += 1
        result.disk_usage += st.st_blocks * 512
        if top_n:
            if len(heap) < top_n:
                heapq.heappush(heap, (st.st_size, path))
            elif st.st_size > heap[0][0]:
                heapq.heapreplace(heap, (st.st_size, path))

    for root in roots:
        try:
            st = os.lstat(root)
        except FileNotFoundError:
            if len(roots) == 1:
                return DirScan(
                    "missing", message=f"{root} does not exist", duration=clock() - started, finished_wall=time.time()
                )
            continue  # a glob match that vanished meanwhile
        except PermissionError:
            if len(roots) == 1:
                return DirScan(
                    "permission_denied", message=f"permission denied on {root}", duration=clock() - started,
                    finished_wall=time.time(),
                )
            result.unreadable += 1
            continue
        result.matched += 1
        if stat.S_ISDIR(st.st_mode):
            stack.append(root)
        elif stat.S_ISREG(st.st_mode):
            add_file(root, st)
    if len(roots) == 1 and stack:
        # The root itself must be listable; anything below it that is not only makes the figures partial.
        status, message = probe_missing(roots[0])
        if status != "ok":
            return DirScan(status, message=message, duration=clock() - started, finished_wall=time.time())

    visited = 0
    while stack and not truncated:
        top = stack.pop()
        try:
            it = os.scandir(top)
        except FileNotFoundError:
            continue
        except OSError:
            result.unreadable += 1
            continue
        result.dirs += 1
        with it:
            for entry in it:
                visited += 1
                if visited & 255 == 0 and clock() > deadline:
                    truncated = True
                    break
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        add_file(entry.path, entry.stat(follow_symlinks=False))
                        if result.files >= max_files:
                            truncated = True
                            break
                except FileNotFoundError:
                    continue
                except OSError:
                    result.unreadable += 1
    if truncated:
        result.status = "truncated"
        result.message = f"stopped after {result.files} files / {clock() - started:.2f}s (budget reached)"
    elif result.unreadable:
        result.status = "partial"
        result.message = f"{result.unreadable} entries could not be read"
    result.largest = sorted(heap, reverse=True)
    result.duration = clock() - started
    result.finished_wall = time.time()
    return result


class DirectoriesOptions(CollectorOptions):
    paths: AbsolutePaths = Field(
        default_factory=lambda: ["/var/log/mev", "/data/blockchain", "/tmp/mev_*"],
        description="directories (or globs) whose total size and largest files are reported",
    )
    top_files: int = Field(5, ge=0, le=50, description="largest files reported per watched directory")
    scan_max_files: int = Field(1_000_000, ge=1, description="a walk stops after this many files (truncated)")
    scan_time_budget: Duration = Field(5.0, gt=0, description="a walk stops after this long (truncated)")

DIR_DISK_USAGE_BYTES = MetricSpec(
    "mevwatch_dir_disk_usage_bytes", "gauge",
    "Allocated bytes of the regular files under a watched directory (du)",
    ("path",),
)

DIR_FILES = MetricSpec("mevwatch_dir_files", "gauge", "Regular files under a watched directory", ("path",))

DIR_MATCHED_PATHS = MetricSpec(
    "mevwatch_dir_matched_paths", "gauge",
    "Paths a watched directory or glob resolved to",
    ("path",),
)

DIR_UNREADABLE_ENTRIES = MetricSpec(
    "mevwatch_dir_unreadable_entries", "gauge",
    "Entries under a watched directory that could not be read",
    ("path",),
)

DIR_LARGEST_FILE_BYTES = MetricSpec(
    "mevwatch_dir_largest_file_bytes", "gauge",
    "Size of the N largest files under a watched directory by rank (ls -S); their paths are in mevwatch diagnose",
    ("path", "rank"),
)

DIR_SCAN_DURATION_SECONDS = MetricSpec(
    "mevwatch_dir_scan_duration_seconds", "gauge",
    "Wall time of the last walk of a watched directory",
    ("path",),
)

DIR_SCAN_TIMESTAMP_SECONDS = MetricSpec(
    "mevwatch_dir_scan_timestamp_seconds", "gauge",
    "Unix time the figures of a watched directory were taken",
    ("path",),
)

DIR_STATUS = MetricSpec(
    "mevwatch_dir_status", "gauge",
    "1 for the watched directory's state: ok, truncated (budget reached), partial (unreadable entries), missing, "
    "permission_denied, stalled (walk hung) or error",
    ("path", "status"),
)


@register
class DirectoriesCollector(PollCollector[DirectoriesOptions]):
    kind: ClassVar[str] = "directories"
    Options = DirectoriesOptions
    # a walk of a large tree costs real I/O: every five minutes, as the runbook's du checks are
    default_interval: ClassVar[float] = 300.0
    default_timeout: ClassVar[float] = 10.0
    runbook_section = "disk-full"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        DIR_DISK_USAGE_BYTES,
        DIR_FILES,
        DIR_MATCHED_PATHS,
        DIR_UNREADABLE_ENTRIES,
        DIR_LARGEST_FILE_BYTES,
        DIR_SCAN_DURATION_SECONDS,
        DIR_SCAN_TIMESTAMP_SECONDS,
        DIR_STATUS,
    )

    def __init__(self, ctx: CollectorContext, options: DirectoriesOptions) -> None:
        super().__init__(ctx, options)
        self._inflight = InFlight()
        self._root = HostRoot.of(ctx)
        self._scans: dict[str, DirScan] = {}

    async def details(self) -> list[tuple[str, str]]:
        """The largest files of each watched directory, by path: diagnose only, file names churn as labels."""
        lines = []
        for p in self.options.paths:
            scan = self._scans.get(p)
            for rank, (nbytes, path) in enumerate(scan.largest if scan else [], 1):
                lines.append((f"largest file {rank} under {p}", f"{_human_bytes(nbytes)}  {self._root.label(path)}"))
        return lines

    async def collect(self) -> Families:
        opts = self.options
        timeout = call_timeout(self.ctx, opts.scan_time_budget + 1.0)
        for p in opts.paths:
            scan = await guarded(self.ctx, self._inflight, p, scan_tree, self._root.host(p), opts.top_files,
                                 opts.scan_max_files, opts.scan_time_budget, timeout=timeout)
            if isinstance(scan, DirScan):
                self._scans[p] = scan
            else:
                old = self._scans.get(p)
                self._scans[p] = DirScan(
                    "stalled", message="the previous walk has not returned",
                    finished_wall=old.finished_wall if old else 0.0,
                )
        return self._dir_families()

    def _dir_families(self) -> list[Metric]:
        usage = DIR_DISK_USAGE_BYTES.gauge()
        nfiles = DIR_FILES.gauge()
        matched = DIR_MATCHED_PATHS.gauge()
        unreadable = DIR_UNREADABLE_ENTRIES.gauge()
        largest = DIR_LARGEST_FILE_BYTES.gauge()
        duration = DIR_SCAN_DURATION_SECONDS.gauge()
        when = DIR_SCAN_TIMESTAMP_SECONDS.gauge()
        status = DIR_STATUS.gauge()
        for p in self.options.paths:
            scan = self._scans.get(p)
            if scan is None:
                continue
            for s in DIR_STATUSES:
                status.add_metric([p, s], 1.0 if s == scan.status else 0.0)
            if scan.status in ("ok", "truncated", "partial"):
                usage.add_metric([p], float(scan.disk_usage))
                nfiles.add_metric([p], float(scan.files))
                matched.add_metric([p], float(scan.matched))
                unreadable.add_metric([p], float(scan.unreadable))
                duration.add_metric([p], scan.duration)
                when.add_metric([p], scan.finished_wall)
                for rank, (nbytes, _) in enumerate(scan.largest, 1):
                    largest.add_metric([p, str(rank)], float(nbytes))
        return [usage, nfiles, matched, unreadable, largest, duration, when, status]


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
