"""Disk space: per-mount bytes, inodes and time-to-full, watched directory sizes, backup freshness.

Every filesystem call runs in the blocking pool with its own timeout: a dead NFS mount is
reported as ``stalled`` and not called again until its hung call has returned.
"""

from __future__ import annotations

import asyncio
import glob
import heapq
import os
import re
import select
import stat
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field, field_validator

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
    "BackupInfo",
    "DirScan",
    "DiskCollector",
    "DiskOptions",
    "FillTrend",
    "FsStats",
    "Mount",
    "find_newest_backup",
    "fs_stats",
    "linear_slope",
    "parse_mountinfo",
    "scan_tree",
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
DIR_STATUSES = ("ok", "truncated", "partial", "missing", "permission_denied", "stalled", "error")
BACKUP_STATUSES = ("ok", "missing", "permission_denied", "stalled", "error")
MIN_FIT_POINTS = 3
FIT_MAX_POINTS = 120  # samples kept per fill window: bounds memory and the fit's cost
RECENT_FIT_POINTS = 5  # the latest samples, fitted on their own so a sudden fill shows at once
_GLOB_CHARS = re.compile(r"[*?\[]")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

# Indirection so a test can make one mount's statvfs hang, as a dead NFS server does.
_statvfs: Callable[[str], os.statvfs_result] = os.statvfs


# --- mounts ------------------------------------------------------------------------------


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


class FillTrend:
    """Available bytes of one filesystem over a sliding window, and the time until they reach zero.

    Two fits: over the window (at most ``max_points`` points, spaced evenly) and over the last
    RECENT_FIT_POINTS samples as they came. The sooner of the two is reported: a disk that starts
    filling fast shows it at once instead of after the window's flat past has been outweighed.
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
        for points in (self.points, self.recent):
            if len(points) < MIN_FIT_POINTS:
                continue
            slope = linear_slope(points)
            if slope is not None and slope < 0.0:
                estimates.append(max(avail_now, 0.0) / -slope)
        return min(estimates, default=None)


# --- watched directories -----------------------------------------------------------------


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


def _has_glob(path: str) -> bool:
    return _GLOB_CHARS.search(path) is not None


def _literal_parent(pattern: str) -> str:
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if _has_glob(part):
            return "/".join(parts[:i]) or "/"
    return pattern


def _probe_missing(path: str) -> tuple[str, str]:
    """Why a path (or a glob's literal parent) yields nothing: missing or permission_denied."""
    try:
        with os.scandir(path):
            pass
    except FileNotFoundError:
        return "missing", f"{path} does not exist"
    except NotADirectoryError:
        return "ok", ""
    except PermissionError:
        return "permission_denied", f"permission denied reading {path}"
    except OSError as exc:
        return "error", f"{path}: {exc.strerror or exc}"
    return "ok", ""


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
    if _has_glob(pattern):
        roots = sorted(glob.glob(pattern))
        if not roots:
            status, message = _probe_missing(_literal_parent(pattern))
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
        status, message = _probe_missing(roots[0])
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


# --- backups -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackupInfo:
    status: str
    files: int = 0
    newest_path: str = ""
    newest_mtime: float = 0.0
    newest_size: int = 0
    message: str = ""


def find_newest_backup(pattern: str) -> BackupInfo:
    """The most recently modified regular file matching ``pattern`` (links followed, like ``ls -t``)."""
    newest: tuple[float, int, str] | None = None
    files = 0
    for path in glob.glob(pattern):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        files += 1
        if newest is None or st.st_mtime > newest[0]:
            newest = (st.st_mtime, st.st_size, path)
    if newest is None:
        status, message = _probe_missing(_literal_parent(pattern) if _has_glob(pattern) else pattern)
        if status == "ok":
            status, message = "missing", f"no file matches {pattern}"
        return BackupInfo(status, message=message)
    return BackupInfo("ok", files=files, newest_path=newest[2], newest_mtime=newest[0], newest_size=newest[1])


# --- the collector -----------------------------------------------------------------------


def _compile(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return value


class DiskOptions(CollectorOptions):
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
    watch_dirs: list[str] = Field(
        default_factory=lambda: ["/var/log/mev", "/data/blockchain", "/tmp/mev_*"],
        description="directories (or globs) whose total size and largest files are reported",
    )
    top_files: int = Field(5, ge=0, le=50, description="largest files reported per watched directory")
    scan_interval: Duration = Field(
        300.0, ge=0, description="minimum time between two walks of a watched directory"
    )
    scan_max_files: int = Field(1_000_000, ge=1, description="a walk stops after this many files (truncated)")
    scan_time_budget: Duration = Field(5.0, gt=0, description="a walk stops after this long (truncated)")
    backups: list[str] = Field(
        default_factory=lambda: ["/backup/mev-full-*"],
        description="globs of backup files; the newest match's age and size are reported",
    )

    @field_validator("mount_points_exclude", "fs_types_exclude", "statvfs_inline_fs_types")
    @classmethod
    def _regex(cls, v: str) -> str:
        return _compile(v)

    @field_validator("watch_dirs", "backups")
    @classmethod
    def _absolute(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.startswith("/"):
                raise ValueError(f"{p!r} is not an absolute path")
        if len(set(v)) != len(v):
            raise ValueError("duplicate path")
        return v


@dataclass(slots=True)
class _Inflight:
    """Keys whose blocking call has not returned yet (possibly long after its timeout)."""

    keys: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __contains__(self, key: str) -> bool:
        with self.lock:
            return key in self.keys

    def claim(self, key: str) -> bool:
        with self.lock:
            if key in self.keys:
                return False
            self.keys.add(key)
            return True

    def release(self, key: str) -> None:
        with self.lock:
            self.keys.discard(key)


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
    "Time until no space is available at the rate fitted over the fill window; absent when not filling",
    ("device", "fstype", "mountpoint"),
)

FILESYSTEM_STATUS = MetricSpec(
    "mevwatch_filesystem_status", "gauge",
    "1 for the filesystem's state: ok, stalled (statvfs hung; not retried until it returns) or error",
    ("device", "fstype", "mountpoint", "status"),
)

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

BACKUP_LAST_MODIFIED_TIMESTAMP_SECONDS = MetricSpec(
    "mevwatch_backup_last_modified_timestamp_seconds", "gauge",
    "Modification time of the newest backup file",
    ("pattern",),
)

BACKUP_AGE_SECONDS = MetricSpec("mevwatch_backup_age_seconds", "gauge", "Age of the newest backup file", ("pattern",))

BACKUP_SIZE_BYTES = MetricSpec("mevwatch_backup_size_bytes", "gauge", "Size of the newest backup file", ("pattern",))

BACKUP_FILES = MetricSpec("mevwatch_backup_files", "gauge", "Backup files matching the pattern", ("pattern",))

BACKUP_STATUS = MetricSpec(
    "mevwatch_backup_status", "gauge",
    "1 for the backup pattern's state: ok, missing (no file), permission_denied, stalled or error",
    ("pattern", "status"),
)


@register
class DiskCollector(PollCollector[DiskOptions]):
    kind: ClassVar[str] = "disk"
    Options = DiskOptions
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
        DIR_DISK_USAGE_BYTES,
        DIR_FILES,
        DIR_MATCHED_PATHS,
        DIR_UNREADABLE_ENTRIES,
        DIR_LARGEST_FILE_BYTES,
        DIR_SCAN_DURATION_SECONDS,
        DIR_SCAN_TIMESTAMP_SECONDS,
        DIR_STATUS,
        BACKUP_LAST_MODIFIED_TIMESTAMP_SECONDS,
        BACKUP_AGE_SECONDS,
        BACKUP_SIZE_BYTES,
        BACKUP_FILES,
        BACKUP_STATUS,
    )

    def __init__(self, ctx: CollectorContext, options: DiskOptions) -> None:
        super().__init__(ctx, options)
        self._mp_exclude = re.compile(options.mount_points_exclude)
        self._fs_exclude = re.compile(options.fs_types_exclude)
        self._inflight = _Inflight()
        self._trends: dict[tuple[str, str], FillTrend] = {}
        self._scans: dict[str, DirScan] = {}
        self._scan_due: dict[str, float] = {}
        root = str(ctx.paths.rootfs).rstrip("/")
        self._root = root
        self._mountinfo: tuple[bytes, list[Mount]] = (b"", [])
        self._mountinfo_path = os.fspath(ctx.paths.proc("self", "mountinfo"))
        self._watch: _MountinfoWatch | None = None
        self._inline_re = re.compile(options.statvfs_inline_fs_types) if options.statvfs_inline_fs_types else None
        self._inline: frozenset[str] = frozenset()  # stat paths of the mounts statted without the pool

    def _host(self, path: str) -> str:
        return self._root + path if self._root else path

    def _label(self, path: str) -> str:
        return path[len(self._root):] or "/" if self._root and path.startswith(self._root) else path

    async def details(self) -> list[tuple[str, str]]:
        """The largest files of each watched directory, by path: diagnose only, file names churn as labels."""
        lines = []
        for p in self.options.watch_dirs:
            scan = self._scans.get(p)
            for rank, (nbytes, path) in enumerate(scan.largest if scan else [], 1):
                lines.append((f"largest file {rank} under {p}", f"{_human_bytes(nbytes)}  {self._label(path)}"))
        return lines

    def _call_timeout(self, wanted: float) -> float:
        # A blocking call must give up before the supervisor cancels the whole run.
        return max(min(wanted, self.ctx.timeout * 0.8), 0.01)

    async def _guarded(self, key: str, fn: Callable[..., object], *args: object, timeout: float) -> object:
        """Run ``fn`` in the pool unless its previous call under ``key`` still hangs (then ``_STALLED``)."""
        if not self._inflight.claim(key):
            return _STALLED
        inflight = self._inflight

        def call() -> object:
            try:
                return fn(*args)
            finally:
                inflight.release(key)

        try:
            return await self.ctx.run_blocking(call, timeout=timeout)
        except CollectorError as exc:
            if exc.reason == "timeout":
                return _STALLED
            inflight.release(key)  # never started (pool exhausted)
            return _STALLED

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
        per_mount = self._call_timeout(self.options.statvfs_timeout)
        while todo:
            batch = _StatBatch(todo, self._inflight)
            task = asyncio.ensure_future(
                self.ctx.run_blocking(batch.run, timeout=self._call_timeout(per_mount * len(todo)))
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
                    task.add_done_callback(_consume)
            out.update(batch.results())
            if task.done():
                batch.cancel()  # it may have been abandoned in a hung call: stop it there too
                _consume(task)
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

        now = time.monotonic()
        scan_timeout = self._call_timeout(self.options.scan_time_budget + 1.0)
        due = [p for p in self.options.watch_dirs if self._scan_due.get(p, 0.0) <= now]
        if due or self.options.backups:
            results = await asyncio.gather(
                self._stat_mounts([m.stat_path for m in mounts]),
                *(
                    self._guarded(
                        "dir:" + p, scan_tree, self._host(p), self.options.top_files, self.options.scan_max_files,
                        self.options.scan_time_budget, timeout=scan_timeout,
                    )
                    for p in due
                ),
                self._guarded("backups", self._backups, timeout=self._call_timeout(self.options.statvfs_timeout))
                if self.options.backups else _none(),
            )
        else:  # the common run between directory walks without backups: no gather to schedule
            results = [await self._stat_mounts([m.stat_path for m in mounts]), None]
        by_path = results[0]
        assert isinstance(by_path, dict)
        stats = [by_path.get(m.stat_path, _STALLED) for m in mounts]
        scans = results[1: 1 + len(due)]
        backups = results[-1]
        for p, scan in zip(due, scans, strict=True):
            if isinstance(scan, DirScan):
                self._scans[p] = scan
                self._scan_due[p] = now + self.options.scan_interval
            else:
                old = self._scans.get(p)
                self._scans[p] = DirScan(
                    "stalled", message="the previous walk has not returned",
                    finished_wall=old.finished_wall if old else 0.0,
                )
        families: list[Metric] = []
        families.extend(self._mount_families(mounts, stats, now))
        families.extend(self._dir_families())
        if isinstance(backups, list):
            families.extend(_backup_families(self.options.backups, backups, time.time()))
        elif self.options.backups:
            families.extend(
                _backup_families(self.options.backups, [BackupInfo("stalled")] * len(self.options.backups), 0.0)
            )
        return families

    def _backups(self) -> list[BackupInfo]:
        return [find_newest_backup(self._host(p)) for p in self.options.backups]

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
                state = "stalled" if st is _STALLED else "error"
                if (m.mountpoint, m.device) in self._trends:
                    seen.add((m.mountpoint, m.device))
            for s in MOUNT_STATUSES:
                status.add_metric([*lv, s], 1.0 if s == state else 0.0)
        for key in list(self._trends):
            if key not in seen:
                del self._trends[key]
        return [size, free, avail, files, files_free, files_avail, used, iused, ro, ttf, status]

    def _dir_families(self) -> list[Metric]:
        usage = DIR_DISK_USAGE_BYTES.gauge()
        nfiles = DIR_FILES.gauge()
        matched = DIR_MATCHED_PATHS.gauge()
        unreadable = DIR_UNREADABLE_ENTRIES.gauge()
        largest = DIR_LARGEST_FILE_BYTES.gauge()
        duration = DIR_SCAN_DURATION_SECONDS.gauge()
        when = DIR_SCAN_TIMESTAMP_SECONDS.gauge()
        status = DIR_STATUS.gauge()
        for p in self.options.watch_dirs:
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


def _backup_families(patterns: list[str], infos: list[BackupInfo], now_wall: float) -> list[Metric]:
    mtime = BACKUP_LAST_MODIFIED_TIMESTAMP_SECONDS.gauge()
    age = BACKUP_AGE_SECONDS.gauge()
    size = BACKUP_SIZE_BYTES.gauge()
    files = BACKUP_FILES.gauge()
    status = BACKUP_STATUS.gauge()
    for p, info in zip(patterns, infos, strict=True):
        for s in BACKUP_STATUSES:
            status.add_metric([p, s], 1.0 if s == info.status else 0.0)
        if info.status == "ok":
            mtime.add_metric([p], info.newest_mtime)
            age.add_metric([p], max(now_wall - info.newest_mtime, 0.0))
            size.add_metric([p], float(info.newest_size))
            files.add_metric([p], float(info.files))
    return [mtime, age, size, files, status]


_STALLED = object()
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

    def __init__(self, paths: list[str], inflight: _Inflight) -> None:
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


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _stat_mount(path: str) -> FsStats | OSError:
    try:
        return fs_stats(_statvfs(path))
    except OSError as exc:
        return exc


async def _none() -> None:
    return None
