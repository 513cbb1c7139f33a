"""Filesystems: per-mount bytes and inodes used, read-only flag and time-to-full from a linear fit.

Mounts come from /proc/self/mountinfo (node_exporter's default excludes). statvfs of a local
filesystem runs inline; any other runs in the blocking pool with its own timeout, so a dead NFS
mount is reported as ``stalled`` and not called again until its hung call has returned.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field, field_validator

from mevwatch.collectors._fscalls import STALLED, InFlight, call_timeout, consume
from mevwatch.collectors._host import read_bytes, read_fd
from mevwatch.collectors.base import (
    CollectorContext,
    CollectorError,
    CollectorOptions,
    Families,
    MetricSpec,
    PollCollector,
)
from mevwatch.collectors.registry import register
from mevwatch.families import Metric
from mevwatch.fields import Duration

__all__ = [
    "DEFAULT_FS_TYPES_EXCLUDE",
    "DEFAULT_MOUNT_POINTS_EXCLUDE",
    "DEFAULT_STATVFS_INLINE_FS_TYPES",
    "FilesystemsCollector",
    "FilesystemsOptions",
    "FillTrend",
    "FsStats",
    "Mount",
    "current_fill",
    "fs_stats",
    "linear_slope",
    "parse_mountinfo",
    "select_mounts",
]

# node_exporter's filesystem collector defaults (collector/filesystem_linux.go): pseudo and
# container-internal filesystems say nothing about the space services can run out of.
DEFAULT_MOUNT_POINTS_EXCLUDE = (
    r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
)
DEFAULT_FS_TYPES_EXCLUDE = (
    r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue"
    r"|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|erofs|sysfs|tracefs)$"
)

# Filesystems whose statfs answers from counters the kernel keeps in memory, with no network round
# trip and no disk read: statvfs of these runs inline in the event loop (a thread hand-off costs more
# than the call). Not here: network and FUSE filesystems (nfs*, cifs, smb3, ceph, glusterfs, 9p,
# virtiofs, fuse.*: a dead server or daemon hangs the call), zfs (a suspended pool blocks statfs),
# vfat (its first statfs may read the whole FAT from disk) and anything unknown.
DEFAULT_STATVFS_INLINE_FS_TYPES = r"^(ext[234]|xfs|btrfs|f2fs|tmpfs|ramfs|overlay|squashfs|erofs)$"

MOUNT_STATUSES = ("ok", "stalled", "error")
MIN_FIT_POINTS = 3
FIT_MAX_POINTS = 120  # samples kept per fill window: bounds memory and the fit's cost
RECENT_FIT_POINTS = 5  # the latest samples: the fill under way among them is fitted on its own (current_fill)
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

# Indirection so a test can make one mount's statvfs hang, as a dead NFS server does.
_statvfs: Callable[[str], os.statvfs_result] = os.statvfs


@dataclass(frozen=True, slots=True)
class Mount:
    device: str
    mountpoint: str  # as seen inside the configured rootfs (the label)
    fstype: str
    readonly: bool
    path: str = ""  # where to statvfs it from this process; mountpoint when empty

    @property
    def stat_path(self) -> str:
        return self.path or self.mountpoint


def _unescape(text: str) -> str:
    # The kernel escapes space, tab, newline and backslash in mountinfo as \ooo.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[Mount]:
    """Mounts of /proc/<pid>/mountinfo, in order; a later mount on the same point hides the earlier."""
    by_point: dict[str, Mount] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            raise ValueError(f"mountinfo line {n}: no ' - ' separator in {line[:200]!r}") from None
        if len(fields) < sep + 3:
            raise ValueError(f"mountinfo line {n}: missing filesystem type or source in {line[:200]!r}")
        mountpoint = _unescape(fields[4])
        options = fields[5].split(",")
        by_point.pop(mountpoint, None)
        by_point[mountpoint] = Mount(
            device=_unescape(fields[sep + 2]),
            mountpoint=mountpoint,
            fstype=fields[sep + 1],
            readonly="ro" in options,
        )
    return list(by_point.values())


def select_mounts(
    mounts: Iterable[Mount], mount_points_exclude: re.Pattern[str], fs_types_exclude: re.Pattern[str], rootfs: str = "/"
) -> list[Mount]:
    """Mounts to report: under ``rootfs`` (labelled relative to it), minus the excluded ones."""
    root = rootfs.rstrip("/")
    out = []
    for m in mounts:
        if root:
            if m.mountpoint != root and not m.mountpoint.startswith(root + "/"):
                continue
            label = m.mountpoint[len(root):] or "/"
            m = Mount(m.device, label, m.fstype, m.readonly, path=m.mountpoint)
        if mount_points_exclude.search(m.mountpoint) or fs_types_exclude.search(m.fstype):
            continue
        out.append(m)
    return out


@dataclass(frozen=True, slots=True)
class FsStats:
    size: int
    free: int
    avail: int
    files: int
    files_free: int
    files_avail: int
    readonly: bool

    @property
    def used_ratio(self) -> float:
        # df's Use%: space used over the space usable by unprivileged users.
        used = self.size - self.free
        denom = used + self.avail
        return used / denom if denom > 0 else 0.0

    @property
    def inodes_used_ratio(self) -> float:
        used = self.files - self.files_free
        denom = used + self.files_avail
        return used / denom if denom > 0 else 0.0


def fs_stats(st: os.statvfs_result) -> FsStats:
    frsize = st.f_frsize or st.f_bsize
    return FsStats(
        size=st.f_blocks * frsize,
        free=st.f_bfree * frsize,
        avail=st.f_bavail * frsize,
        files=st.f_files,
        files_free=st.f_ffree,
        files_avail=st.f_favail,
        readonly=bool(st.f_flag & os.ST_RDONLY),
    )


def linear_slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t, y) points; None with fewer than two distinct times."""
    n = len(points)
    if n < 2:
        return None
    t0 = points[0][0]
    mean_t = sum(p[0] - t0 for p in points) / n
    mean_y = sum(p[1] for p in points) / n
    sxx = sxy = 0.0
    for t, y in points:
        dt = t - t0 - mean_t
        sxx += dt * dt
        sxy += dt * (y - mean_y)
    if sxx <= 0.0:
        return None
    return sxy / sxx


def current_fill(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The fill under way in ``points`` (time, available bytes): the latest points since space was last freed,
    from the last one before it began to shrink. A flat past before the fill is left out: fitted with it, a fill
    that began one sample ago reads at a fifth of its rate (five points, one of them down)."""
    earlier = list(points)
    run = earlier[-1:]
    for p in reversed(earlier[:-1]):
        if p[1] < run[-1][1]:
            break  # space was freed after p: the fill under way began after it
        run.append(p)
    run.reverse()
    while len(run) > 1 and run[1][1] >= run[0][1]:
        del run[0]  # flat before the fill: only its last point, where the fill starts from
    return run


class FillTrend:
    """Available bytes of one filesystem over a sliding window, and the time until they reach zero.

    Two fits: over the window (at most ``max_points`` points, spaced evenly) and over the fill under way
    among the last RECENT_FIT_POINTS samples (:func:`current_fill`; from its first interval on). The sooner of
    the two is reported: a disk that starts filling fast shows it at the next sample, at the rate it fills, instead
    of after the window's flat past has been outweighed.
    """

    def __init__(self, window: float, max_points: int = FIT_MAX_POINTS) -> None:
        self.window = window
        self.min_step = window / max_points
        self.points: deque[tuple[float, float]] = deque()
        self.recent: deque[tuple[float, float]] = deque(maxlen=RECENT_FIT_POINTS)

    def add(self, t: float, avail: float) -> None:
        while self.points and self.points[0][0] < t - self.window:
            self.points.popleft()
        if not self.points or t - self.points[-1][0] >= self.min_step:
            self.points.append((t, avail))
        if not self.recent or t > self.recent[-1][0]:
            self.recent.append((t, avail))

    def time_to_full(self, avail_now: float) -> float | None:
        """Seconds until no space is left at the fitted rate; None when the filesystem is not filling."""
        estimates = []
        fits: tuple[tuple[Sequence[tuple[float, float]], int], ...] = (
            (self.points, MIN_FIT_POINTS), (current_fill(self.recent), 2))
        for points, fewest in fits:
            if len(points) < fewest:
                continue
            slope = linear_slope(points)
            if slope is not None and slope < 0.0:
                estimates.append(max(avail_now, 0.0) / -slope)
        return min(estimates, default=None)


def _compile(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return value


class FilesystemsOptions(CollectorOptions):
    mount_points_exclude: str = Field(
        DEFAULT_MOUNT_POINTS_EXCLUDE, description="regex of mount points not reported (node_exporter's default)"
    )
    fs_types_exclude: str = Field(
        DEFAULT_FS_TYPES_EXCLUDE, description="regex of filesystem types not reported (node_exporter's default)"
    )
    statvfs_timeout: Duration = Field(
        2.0, gt=0, description="a mount whose statvfs takes longer is reported stalled"
    )
    statvfs_inline_fs_types: str = Field(
        DEFAULT_STATVFS_INLINE_FS_TYPES,
        description="regex of filesystem types whose statvfs is called directly, not in the blocking pool: "
        "local filesystems that answer from memory; network, FUSE and other types (and any mount below "
        "one of them) keep the pool, statvfs_timeout and the stalled state; empty: every mount uses the pool",
    )
    fill_window: Duration = Field(
        3600.0, gt=0, description="window of the linear fit of available bytes behind time-to-full"
    )

    @field_validator("mount_points_exclude", "fs_types_exclude", "statvfs_inline_fs_types")
    @classmethod
    def _regex(cls, v: str) -> str:
        return _compile(v)


FILESYSTEM_SIZE_BYTES = MetricSpec(
    "mevwatch_filesystem_size_bytes", "gauge",
    "Filesystem size",
    ("device", "fstype", "mountpoint"),
)

FILESYSTEM_FREE_BYTES = MetricSpec(
    "mevwatch_filesystem_free_bytes", "gauge",
    "Free space, including blocks reserved for root",
    ("device", "fstype", "mountpoint"),
)

FILESYSTEM_AVAIL_BYTES = MetricSpec(
    "mevwatch_filesystem_avail_bytes", "gauge",
    "Space available to unprivileged users",
    ("device", "fstype", "mountpoint"),
)

FILESYSTEM_INODES = MetricSpec(
    "mevwatch_filesystem_inodes", "gauge",
    "Inodes in total",
    ("device", "fstype", "mountpoint"),
)

FILESYSTEM_INODES_FREE = MetricSpec(
    "mevwatch_filesystem_inodes_free", "gauge",
    "Free inodes, including those reserved for root",
    ("device", "fstype", "mountpoint"),
)

FILESYSTEM_INODES_AVAIL = MetricSpec(
    "mevwatch_filesystem_inodes_avail", "gauge",
    "Inodes available to unprivileged users",
    ("device", "fstype", "mountpoint"),
)

FILESYSTEM_USED_RATIO = MetricSpec(
    "mevwatch_filesystem_used_ratio", "gauge",
    "Used space over space usable by unprivileged users (df Use%)",
    ("device", "fstype", "mountpoint"),
)

FILESYSTEM_INODES_USED_RATIO = MetricSpec(
    "mevwatch_filesystem_inodes_used_ratio", "gauge",
    "Used inodes over inodes usable by unprivileged users",
    ("device", "fstype", "mountpoint"),
)

FILESYSTEM_READONLY = MetricSpec(
    "mevwatch_filesystem_readonly", "gauge",
    "1 if the filesystem is mounted read-only",
    ("device", "fstype", "mountpoint"),
)

FILESYSTEM_TIME_TO_FULL_SECONDS = MetricSpec(
    "mevwatch_filesystem_time_to_full_seconds", "gauge",
    "Time until no space is available at the sooner of two rates: fitted over the fill window, and of the fill "
    "under way in the last samples; absent when not filling",
    ("device", "fstype", "mountpoint"),
)

FILESYSTEM_STATUS = MetricSpec(
    "mevwatch_filesystem_status", "gauge",
    "1 for the filesystem's state: ok, stalled (statvfs hung; not retried until it returns) or error",
    ("device", "fstype", "mountpoint", "status"),
)


@register
class FilesystemsCollector(PollCollector[FilesystemsOptions]):
    kind: ClassVar[str] = "filesystems"
    Options = FilesystemsOptions
    default_interval: ClassVar[float] = 30.0
    default_timeout: ClassVar[float] = 10.0
    runbook_section = "disk-full"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        FILESYSTEM_SIZE_BYTES,
        FILESYSTEM_FREE_BYTES,
        FILESYSTEM_AVAIL_BYTES,
        FILESYSTEM_INODES,
        FILESYSTEM_INODES_FREE,
        FILESYSTEM_INODES_AVAIL,
        FILESYSTEM_USED_RATIO,
        FILESYSTEM_INODES_USED_RATIO,
        FILESYSTEM_READONLY,
        FILESYSTEM_TIME_TO_FULL_SECONDS,
        FILESYSTEM_STATUS,
    )

    def __init__(self, ctx: CollectorContext, options: FilesystemsOptions) -> None:
        super().__init__(ctx, options)
        self._mp_exclude = re.compile(options.mount_points_exclude)
        self._fs_exclude = re.compile(options.fs_types_exclude)
        self._inflight = InFlight()
        self._trends: dict[tuple[str, str], FillTrend] = {}
        self._root = str(ctx.paths.rootfs).rstrip("/")
        self._mountinfo: tuple[bytes, list[Mount]] = (b"", [])
        self._mountinfo_path = os.fspath(ctx.paths.proc("self", "mountinfo"))
        self._watch: _MountinfoWatch | None = None
        self._inline_re = re.compile(options.statvfs_inline_fs_types) if options.statvfs_inline_fs_types else None
        self._inline: frozenset[str] = frozenset()  # stat paths of the mounts statted without the pool

    def _read_mountinfo(self) -> bytes:
        if self._watch is not None:
            raw = self._watch.read_if_changed()
            return self._mountinfo[0] if raw is None else raw
        return read_bytes(self._mountinfo_path)

    def _watch_mountinfo(self, text: str) -> None:
        """Keep mountinfo open when it is the kernel's (not a test tree): poll() then says when to read it."""
        try:
            target = os.path.realpath(self._mountinfo_path)
            mounts = parse_mountinfo(text)
        except (OSError, ValueError):
            return
        under = [m for m in mounts if target == m.mountpoint or target.startswith(m.mountpoint.rstrip("/") + "/")]
        if under and max(under, key=lambda m: len(m.mountpoint)).fstype == "proc":
            try:
                self._watch = _MountinfoWatch(self._mountinfo_path)
            except OSError:
                self._watch = None

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def _inline_paths(self, mounts: Sequence[Mount]) -> frozenset[str]:
        """Mounts whose statvfs runs inline: an inline type, and no pool-typed mount above them.

        Resolving the path of a mount below an NFS or FUSE mount goes through that mount, and can
        hang with it.
        """
        if self._inline_re is None:
            return frozenset()
        inline = self._inline_re
        pooled = [m.stat_path.rstrip("/") + "/" for m in mounts if not inline.search(m.fstype)]
        return frozenset(
            m.stat_path for m in mounts
            if inline.search(m.fstype) and not any(m.stat_path.startswith(p) for p in pooled)
        )

    async def _stat_mounts(self, paths: list[str]) -> dict[str, FsStats | OSError]:
        """statvfs of every mount; a mount missing from the result is stalled.

        Local in-memory filesystems (``statvfs_inline_fs_types``) are statted right here. The others
        go to the pool in one thread hand-off, each with ``statvfs_timeout`` of its own: the batch
        is watched for progress, and when one call hangs past it, that mount is given up and the
        ones after it go to a new batch.
        """
        out: dict[str, FsStats | OSError] = {}
        inline = self._inline
        todo: list[str] = []
        for p in paths:
            if p in inline:
                out[p] = _stat_mount(p)
            elif p not in self._inflight:  # still hung since an earlier run: no new call
                todo.append(p)
        if not todo:
            return out
        per_mount = call_timeout(self.ctx, self.options.statvfs_timeout)
        while todo:
            batch = _StatBatch(todo, self._inflight)
            task = asyncio.ensure_future(
                self.ctx.run_blocking(batch.run, timeout=call_timeout(self.ctx, per_mount * len(todo)))
            )
            stuck: str | None = None
            try:
                while not task.done():
                    current = batch.current()
                    wait = per_mount if current is None else current[1] + per_mount - time.monotonic()
                    if wait <= 0 and current is not None:
                        stuck = current[0]
                        break
                    await asyncio.wait({task}, timeout=max(wait, 0.001))
            finally:
                if not task.done():
                    batch.cancel()  # when it comes back from the hung call it stops there
                    task.add_done_callback(consume)
            out.update(batch.results())
            if task.done():
                batch.cancel()  # it may have been abandoned in a hung call: stop it there too
                consume(task)
                break  # every mount was tried (or the pool refused: those left count as stalled)
            attempted = set(out) | batch.skipped() | {stuck}
            todo = [p for p in todo if p not in attempted]
        return out

    async def collect(self) -> Families:
        try:
            # procfs answers from kernel memory and never hangs: no thread hand-off needed.
            raw = self._read_mountinfo()
        except OSError as exc:
            raise CollectorError("mountinfo_unreadable", f"cannot read mountinfo: {exc.strerror or exc}") from None
        if raw != self._mountinfo[0]:  # mounts rarely change: decode and parse only when they did
            try:
                text = raw.decode("utf-8", "surrogateescape")
                mounts = select_mounts(parse_mountinfo(text), self._mp_exclude, self._fs_exclude, self._root or "/")
            except ValueError as exc:
                raise CollectorError("parse_error", str(exc)) from None
            self._mountinfo = (raw, mounts)
            self._inline = self._inline_paths(mounts)
            if self._watch is None:
                self._watch_mountinfo(text)
        mounts = self._mountinfo[1]
        by_path = await self._stat_mounts([m.stat_path for m in mounts])
        stats = [by_path.get(m.stat_path, STALLED) for m in mounts]
        return self._mount_families(mounts, stats, time.monotonic())

    def _mount_families(self, mounts: list[Mount], stats: Sequence[object], now: float) -> list[Metric]:
        size = FILESYSTEM_SIZE_BYTES.gauge()
        free = FILESYSTEM_FREE_BYTES.gauge()
        avail = FILESYSTEM_AVAIL_BYTES.gauge()
        files = FILESYSTEM_INODES.gauge()
        files_free = FILESYSTEM_INODES_FREE.gauge()
        files_avail = FILESYSTEM_INODES_AVAIL.gauge()
        used = FILESYSTEM_USED_RATIO.gauge()
        iused = FILESYSTEM_INODES_USED_RATIO.gauge()
        ro = FILESYSTEM_READONLY.gauge()
        ttf = FILESYSTEM_TIME_TO_FULL_SECONDS.gauge()
        status = FILESYSTEM_STATUS.gauge()
        seen: set[tuple[str, str]] = set()
        for m, st in zip(mounts, stats, strict=True):
            lv = [m.device, m.fstype, m.mountpoint]
            if isinstance(st, FsStats):
                state = "ok"
                size.add_metric(lv, float(st.size))
                free.add_metric(lv, float(st.free))
                avail.add_metric(lv, float(st.avail))
                files.add_metric(lv, float(st.files))
                files_free.add_metric(lv, float(st.files_free))
                files_avail.add_metric(lv, float(st.files_avail))
                used.add_metric(lv, st.used_ratio)
                iused.add_metric(lv, st.inodes_used_ratio)
                ro.add_metric(lv, 1.0 if (st.readonly or m.readonly) else 0.0)
                key = (m.mountpoint, m.device)
                seen.add(key)
                trend = self._trends.get(key)
                if trend is None:
                    trend = self._trends[key] = FillTrend(self.options.fill_window)
                trend.add(now, float(st.avail))
                t = trend.time_to_full(float(st.avail))
                if t is not None:
                    ttf.add_metric(lv, t)
            else:
                state = "stalled" if st is STALLED else "error"
                if (m.mountpoint, m.device) in self._trends:
                    seen.add((m.mountpoint, m.device))
            for s in MOUNT_STATUSES:
                status.add_metric([*lv, s], 1.0 if s == state else 0.0)
        for key in list(self._trends):
            if key not in seen:
                del self._trends[key]
        return [size, free, avail, files, files_free, files_avail, used, iused, ro, ttf, status]


_MOUNT_CHANGED = select.POLLPRI | select.POLLERR
MOUNTINFO_MAX_AGE = 60.0  # seconds a mountinfo read is trusted even without a change event


class _MountinfoWatch:
    """An open /proc/<pid>/mountinfo: the kernel flags POLLPRI on it when the mount table changes
    (mount, umount, remount), so a run reads it only then instead of having it generated every time.
    """

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._close = weakref.finalize(self, os.close, fd)
        self._fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLPRI)
        self._read_at = -MOUNTINFO_MAX_AGE

    def read_if_changed(self) -> bytes | None:
        """The whole file when the mounts changed (or the last read is old), else None."""
        now = time.monotonic()
        changed = any(ev & _MOUNT_CHANGED for _, ev in self._poll.poll(0))
        if not changed and now - self._read_at < MOUNTINFO_MAX_AGE:
            return None
        os.lseek(self._fd, 0, os.SEEK_SET)
        data = read_fd(self._fd)
        self._read_at = now
        return data

    def close(self) -> None:
        self._close()


class _StatBatch:
    """statvfs of several mounts, one after the other in one thread, telling which one it is in."""

    def __init__(self, paths: list[str], inflight: InFlight) -> None:
        self._paths = paths
        self._inflight = inflight
        self._lock = threading.Lock()
        self._results: dict[str, FsStats | OSError] = {}
        self._skipped: set[str] = set()
        self._current: tuple[str, float] | None = None
        self._cancelled = False

    def run(self) -> None:
        for path in self._paths:
            with self._lock:
                if self._cancelled:
                    return
            if not self._inflight.claim(path):
                with self._lock:
                    self._skipped.add(path)
                continue
            with self._lock:
                self._current = (path, time.monotonic())
            try:
                result = _stat_mount(path)
            finally:
                self._inflight.release(path)
            with self._lock:
                self._results[path] = result
                self._current = None

    def current(self) -> tuple[str, float] | None:
        with self._lock:
            return self._current

    def results(self) -> dict[str, FsStats | OSError]:
        with self._lock:
            return dict(self._results)

    def skipped(self) -> set[str]:
        with self._lock:
            return set(self._skipped)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True


def _stat_mount(path: str) -> FsStats | OSError:
    try:
        return fs_stats(_statvfs(path))
    except OSError as exc:
        return exc
