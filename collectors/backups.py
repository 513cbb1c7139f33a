"""Backups: age, size and count of the newest file matching each backup pattern (``ls -t /backup/mev-full-*``).

The search runs in the blocking pool; one that hangs (a dead backup mount) is reported ``stalled``.
"""

from __future__ import annotations

import glob
import os
import stat
import time
from dataclasses import dataclass
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

__all__ = ["BackupInfo", "BackupsCollector", "BackupsOptions", "find_newest_backup"]

BACKUP_STATUSES = ("ok", "missing", "permission_denied", "stalled", "error")


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
        status, message = probe_missing(literal_parent(pattern) if has_glob(pattern) else pattern)
        if status == "ok":
            status, message = "missing", f"no file matches {pattern}"
        return BackupInfo(status, message=message)
    return BackupInfo("ok", files=files, newest_path=newest[2], newest_mtime=newest[0], newest_size=newest[1])


class BackupsOptions(CollectorOptions):
    patterns: AbsolutePaths = Field(
        default_factory=lambda: ["/backup/mev-full-*"],
        description="globs of backup files; the newest match's age and size are reported",
    )
    stall_timeout: Duration = Field(
        2.0, gt=0, description="a search of the patterns that takes longer is reported stalled"
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
class BackupsCollector(PollCollector[BackupsOptions]):
    kind: ClassVar[str] = "backups"
    Options = BackupsOptions
    default_interval: ClassVar[float] = 30.0
    default_timeout: ClassVar[float] = 10.0
    runbook_section = "backup-stale"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        BACKUP_LAST_MODIFIED_TIMESTAMP_SECONDS,
        BACKUP_AGE_SECONDS,
        BACKUP_SIZE_BYTES,
        BACKUP_FILES,
        BACKUP_STATUS,
    )

    def __init__(self, ctx: CollectorContext, options: BackupsOptions) -> None:
        super().__init__(ctx, options)
        self._inflight = InFlight()
        self._root = HostRoot.of(ctx)

    async def collect(self) -> Families:
        patterns = self.options.patterns
        infos = await guarded(self.ctx, self._inflight, "backups", self._newest,
                              timeout=call_timeout(self.ctx, self.options.stall_timeout))
        if isinstance(infos, list):
            return _backup_families(patterns, infos, time.time())
        return _backup_families(patterns, [BackupInfo("stalled")] * len(patterns), 0.0)

    def _newest(self) -> list[BackupInfo]:
        return [find_newest_backup(self._root.host(p)) for p in self.options.patterns]


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
