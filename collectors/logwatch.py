"""logwatch: named-pattern counters over log files (followed through rotation) and the systemd journal.

A stream collector: it keeps files open between passes (a rotated-away file is drained from its
open descriptor), catches up on a backlog pass after pass without waiting for the next interval,
and owns the long-running ``journalctl -f``. A pass runs when inotify reports a change in the
directory of a followed file or of a glob (at most every interval) and at least every
``rescan_interval``, so quiet logs cost no pass in between. A pass emits only when a counter or a
state moved (the supervisor keeps a live stream's snapshot fresh meanwhile, every rescan_interval).
Runbook: Security Incidents, Strategy Execution Errors, MEV Opportunities Not Being Detected.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from mevwatch.aio import cancel_and_wait
from mevwatch.collectors._dirwatch import DirWatch
from mevwatch.collectors._journal import JournalFollower
from mevwatch.collectors._logmatch import (
    BUILTIN_PATTERNS,
    BUILTIN_SOURCES,
    JOURNAL_SOURCE,
    LinePattern,
    compile_user_regex,
)
from mevwatch.collectors._logtail import FileSource, LogTailer, SourceStats
from mevwatch.collectors.base import (
    CollectorContext,
    CollectorError,
    CollectorOptions,
    Emit,
    Families,
    MetricSpec,
    StateError,
    StreamCollector,
)
from mevwatch.collectors.registry import register
from mevwatch.families import Metric
from mevwatch.fields import ByteSize, Duration

log = structlog.get_logger("mevwatch.collector.logwatch")

__all__ = [
    "JournalOptions",
    "LogPatternOptions",
    "LogSourceOptions",
    "LogwatchCollector",
    "LogwatchOptions",
    "build_sources",
    "families_from_stats",
]

STATUSES = ("ok", "missing", "unreadable")
ROTATION_MODES = ("rename", "truncate")
BUILTIN_NAMES = tuple(p.name for p in BUILTIN_PATTERNS)


def _check_name(v: str, what: str) -> str:
    if not v or len(v) > 64 or not all(c.isalnum() or c in "-_." for c in v):
        raise ValueError(f"{what} must be 1-64 characters of letters, digits, '-', '_' or '.', got {v!r}")
    return v


def _check_globs(v: list[str]) -> list[str]:
    if not v:
        raise ValueError("at least one path is needed")
    for g in v:
        if not g.startswith("/"):
            raise ValueError(f"paths must be absolute (they are taken under paths.rootfs), got {g!r}")
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogSourceOptions(_Model):
    name: str = Field(description="value of the `source` label")
    paths: list[str] = Field(description="absolute globs of the files to follow (`**` recurses)")
    patterns: list[str] | None = Field(None, description=(
        "built-in patterns counted in this source (e.g. [error, warning, no_space_left] for a service log "
        "named anything); default: those whose built-in sources name this source (auth, nginx_access, mev, syslog)"))

    @field_validator("patterns")
    @classmethod
    def _known_patterns(cls, v: list[str] | None) -> list[str] | None:
        unknown = [n for n in v or () if n not in BUILTIN_NAMES]
        if unknown:
            raise ValueError(f"unknown built-in pattern(s) {', '.join(unknown)}; known: {', '.join(BUILTIN_NAMES)}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        _check_name(v, "source name")
        if v == JOURNAL_SOURCE:
            raise ValueError(f"source name {JOURNAL_SOURCE!r} is reserved for the journal")
        return v

    @field_validator("paths")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        return _check_globs(v)


class LogPatternOptions(_Model):
    name: str = Field(description="value of the `pattern` label")
    ignore_case: bool = Field(False, description="match ASCII letters regardless of case")
    regex: str = Field(description="Python regex searched in each line (bytes; invalid UTF-8 never fails)")
    sources: list[str] = Field(default_factory=list, description="names of sources (or 'journal') to match in")
    files: list[str] = Field(
        default_factory=list, description="absolute globs to match in; each glob is its own source, named by itself"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "pattern name")

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str, info: ValidationInfo) -> str:
        compile_user_regex(v, bool(info.data.get("ignore_case", False)))
        return v

    @field_validator("files")
    @classmethod
    def _files(cls, v: list[str]) -> list[str]:
        return _check_globs(v) if v else v

    @model_validator(mode="after")
    def _somewhere(self) -> LogPatternOptions:
        if not self.sources and not self.files:
            raise ValueError(f"pattern {self.name!r} needs `sources` or `files` to say where it applies")
        return self


class JournalOptions(_Model):
    enabled: bool = Field(True, description="follow the journal when journald runs (status 'missing' otherwise)")
    units: list[str] = Field(default_factory=list, description="only these systemd units (journalctl --unit); [] = all")
    journalctl: str = Field("journalctl", description="journalctl program")


def _default_sources() -> list[LogSourceOptions]:
    return [LogSourceOptions(name=n, paths=list(g)) for n, g in BUILTIN_SOURCES.items()]


class LogwatchOptions(CollectorOptions):
    sources: list[LogSourceOptions] = Field(
        default_factory=_default_sources, description="named sets of files; the built-in patterns name auth, "
        "nginx_access, mev and syslog"
    )
    journal: JournalOptions = Field(default_factory=JournalOptions, description="the systemd journal source")
    builtin_patterns: list[str] = Field(
        default_factory=lambda: list(BUILTIN_NAMES), description="built-in patterns to count (all by default)"
    )
    patterns: list[LogPatternOptions] = Field(default_factory=list, description="your own named patterns")
    start_at: Literal["end", "beginning"] = Field(
        "end", description="where to start in a file seen for the first time at start-up; later files start at 0"
    )
    max_line_length: ByteSize = Field(64 * 1024, description="longer lines are cut to this and counted")
    max_bytes_per_pass: ByteSize = Field(16 << 20, description="read budget of one pass over all files")
    rotate_wait: Duration = Field(5.0, description="keep reading a rotated or deleted file until idle this long")
    rescan_interval: Duration = Field(
        10.0, description="a pass runs when inotify reports a change in a followed file's directory (at most "
        "every interval), and at least this often: for what inotify does not see (files written over NFS or "
        "CIFS, a directory created after the start, subdirectories of a `**` glob); at most the interval: "
        "a pass every interval, as without inotify")
    max_files_per_source: int = Field(256, ge=1, le=100_000, description="files followed per source at most")

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, v: list[LogSourceOptions]) -> list[LogSourceOptions]:
        names = [s.name for s in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate source name(s): {', '.join(dup)}")
        return v

    @field_validator("builtin_patterns")
    @classmethod
    def _builtins(cls, v: list[str]) -> list[str]:
        unknown = [n for n in v if n not in BUILTIN_NAMES]
        if unknown:
            raise ValueError(f"unknown built-in pattern(s) {', '.join(unknown)}; known: {', '.join(BUILTIN_NAMES)}")
        return v

    @field_validator("max_line_length")
    @classmethod
    def _max_line(cls, v: int) -> int:
        if not 256 <= v <= 16 << 20:
            raise ValueError("max_line_length must be between 256 bytes and 16MiB")
        return v

    @field_validator("max_bytes_per_pass")
    @classmethod
    def _budget(cls, v: int) -> int:
        if v < 1 << 16:
            raise ValueError("max_bytes_per_pass must be at least 64KiB")
        return v

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, v: list[LogPatternOptions], info: ValidationInfo) -> list[LogPatternOptions]:
        sources = info.data.get("sources")
        known = {s.name for s in sources} if sources is not None else None
        taken = set(info.data.get("builtin_patterns") or ())
        for i, p in enumerate(v):
            if p.name in taken:
                raise ValueError(f"patterns[{i}]: name {p.name!r} is already used (built-in or earlier pattern)")
            taken.add(p.name)
            if known is None:
                continue
            for s in p.sources:
                if s != JOURNAL_SOURCE and s not in known:
                    raise ValueError(
                        f"patterns[{i}].sources: unknown source {s!r}; known: {', '.join(sorted(known))}, journal"
                    )
        return v


def build_sources(opts: LogwatchOptions) -> tuple[list[FileSource], list[LinePattern]]:
    """File sources with the patterns each one counts, and the journal's patterns."""
    enabled = [p for p in BUILTIN_PATTERNS if p.name in opts.builtin_patterns]
    globs: dict[str, list[str]] = {s.name: list(s.paths) for s in opts.sources}
    pats: dict[str, list[LinePattern]] = {
        s.name: [p for p in enabled if (p.name in s.patterns if s.patterns is not None else s.name in p.sources)]
        for s in opts.sources
    }
    journal = [p for p in enabled if JOURNAL_SOURCE in p.sources]
    for p in opts.patterns:
        pattern = LinePattern(p.name, compile_user_regex(p.regex, p.ignore_case))
        for s in p.sources:
            (journal if s == JOURNAL_SOURCE else pats[s]).append(pattern)
        for g in p.files:
            globs.setdefault(g, [g])
            pats.setdefault(g, []).append(pattern)
    return [FileSource(n, tuple(globs[n]), tuple(pats[n])) for n in globs], journal


def families_from_stats(stats: dict[str, SourceStats]) -> list[Metric]:
    matches = LOG_MATCHES.counter()
    lines = LOG_LINES_READ.counter()
    size = LOG_READ_BYTES.counter()
    truncated = LOG_LINES_TRUNCATED.counter()
    errors = LOG_READ_ERRORS.counter()
    rotations = LOG_ROTATIONS.counter()
    status = LOG_SOURCE_STATUS.gauge()
    files = LOG_SOURCE_FILES.gauge()
    for name, st in sorted(stats.items()):
        for pattern, n in sorted(st.matches.items()):
            matches.add_metric([name, pattern], n)
        lines.add_metric([name], st.lines)
        size.add_metric([name], st.bytes)
        truncated.add_metric([name], st.truncated)
        errors.add_metric([name], st.read_errors)
        if name != JOURNAL_SOURCE:
            for mode in ROTATION_MODES:
                rotations.add_metric([name, mode], st.rotations[mode])
        for s in STATUSES:
            status.add_metric([name, s], 1.0 if st.status == s else 0.0)
        files.add_metric([name], st.files)
    return [matches, lines, size, truncated, errors, rotations, status, files]


LOG_MATCHES = MetricSpec(
    "mevwatch_log_matches", "counter",
    "Log lines that matched a named pattern",
    ("source", "pattern"),
)

LOG_LINES_READ = MetricSpec("mevwatch_log_lines_read", "counter", "Log lines read", ("source",))

LOG_READ_BYTES = MetricSpec("mevwatch_log_read_bytes", "counter", "Bytes of complete log lines read", ("source",))

LOG_LINES_TRUNCATED = MetricSpec(
    "mevwatch_log_lines_truncated", "counter",
    "Log lines longer than max_line_length, matched on their start only",
    ("source",),
)

LOG_READ_ERRORS = MetricSpec(
    "mevwatch_log_read_errors", "counter",
    "Files that became unreadable, failed reads and journalctl failures",
    ("source",),
)

LOG_ROTATIONS = MetricSpec(
    "mevwatch_log_rotations", "counter",
    "Followed files rotated away or deleted (rename) or truncated in place (truncate)",
    ("source", "mode"),
)

LOG_SOURCE_STATUS = MetricSpec(
    "mevwatch_log_source_status", "gauge",
    "State of a log source: ok, missing (no file or no journald) or unreadable; 1 for the current state",
    ("source", "status"),
)

LOG_SOURCE_FILES = MetricSpec("mevwatch_log_source_files", "gauge", "Files (or journal streams) followed", ("source",))


@register
class LogwatchCollector(StreamCollector[LogwatchOptions]):
    kind: ClassVar[str] = "logwatch"
    Options = LogwatchOptions
    #: seconds between passes over the files when there is no backlog
    default_interval: ClassVar[float] = 1.0
    default_timeout: ClassVar[float] = 30.0
    runbook_section = "strategy-errors"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        LOG_MATCHES,
        LOG_LINES_READ,
        LOG_READ_BYTES,
        LOG_LINES_TRUNCATED,
        LOG_READ_ERRORS,
        LOG_ROTATIONS,
        LOG_SOURCE_STATUS,
        LOG_SOURCE_FILES,
    )

    def __init__(self, ctx: CollectorContext, options: LogwatchOptions) -> None:
        super().__init__(ctx, options)
        file_sources, journal_patterns = build_sources(options)
        self.tailer = LogTailer(
            file_sources,
            instance=ctx.instance,
            state=ctx.state,
            rootfs=ctx.paths.rootfs,
            start_at=options.start_at,
            max_line=options.max_line_length,
            max_bytes_per_pass=options.max_bytes_per_pass,
            rotate_wait=options.rotate_wait,
            max_files_per_source=options.max_files_per_source,
        )
        self._journal_patterns = journal_patterns
        self._pass_timeout = options.timeout or self.default_timeout
        self.journal: JournalFollower | None = None
        self.stats: dict[str, SourceStats] = {}
        # what the last emit showed; a pass that finds the same emits nothing (an idle host's logs, most
        # seconds: the emit, the store's put and the alert engine's read of it were the collector's cost)
        self._emitted: tuple[dict[str, SourceStats], SourceStats | None] | None = None

    def families(self) -> Families:
        stats = dict(self.stats)
        if self.journal is not None:
            stats[JOURNAL_SOURCE] = self.journal.stats
        return families_from_stats(stats)

    def _shown(self) -> tuple[dict[str, SourceStats], SourceStats | None]:
        """The values families() shows, to compare with the next pass's (a pass's file stats are a copy;
        the journal's change under its own task, so they are copied here)."""
        return self.stats, self.journal.stats.copy() if self.journal is not None else None

    async def run(self, emit: Emit) -> None:
        opts = self.options
        journal_task: asyncio.Task[None] | None = None
        if opts.journal.enabled and self.journal is None:
            try:
                self.journal = JournalFollower(
                    self._journal_patterns, instance=self.ctx.instance, state=self.ctx.state,
                    journalctl=opts.journal.journalctl, units=opts.journal.units, rootfs=self.ctx.paths.rootfs,
                    max_line=opts.max_line_length,
                )
            except StateError as exc:
                raise CollectorError("state", str(exc)) from None
        if self.journal is not None:
            journal_task = asyncio.create_task(self.journal.run(), name=f"logwatch:{self.ctx.instance}:journal")
        self._emitted = None  # a run (a restart after a failure too) starts with an emit: it tells the supervisor
        loop = asyncio.get_running_loop()
        watch = self._dir_watch()
        try:
            while True:
                started = loop.time()
                try:
                    # Not ctx.timeout: for a stream that is min(timeout, interval), far too short for
                    # a pass that catches up on a backlog on a busy host.
                    result = await self.ctx.run_blocking(self.tailer.poll, timeout=self._pass_timeout)
                except StateError as exc:
                    raise CollectorError("state", str(exc)) from None
                more = False
                if result is not None:
                    more, self.stats = result
                shown = self._shown()
                if shown != self._emitted:
                    self._emitted = shown
                    emit(self.families())
                if more:
                    await asyncio.sleep(0)
                    continue
                if watch is not None:
                    watch.watch(self.tailer.directories)
                    await self._until_change(watch, started + self.options.rescan_interval - loop.time())
                # at most one pass per interval, however often the files change
                await asyncio.sleep(max(started + self.ctx.interval - loop.time(), 0.0))
        finally:
            if watch is not None:
                watch.close()
            if journal_task is not None:
                await cancel_and_wait(journal_task)

    @property
    def keepalive_interval(self) -> float:
        """The rescan interval: kept fresh at every interval, the snapshot woke the process (and the alert
        engine, whose tick follows the snapshots going stale) every second on a host with quiet logs."""
        return max(self.ctx.interval, self.options.rescan_interval)

    async def _until_change(self, watch: DirWatch, timeout: float) -> None:
        """Until a followed directory changed, the journal's figures moved, or ``timeout`` seconds passed."""
        if self.journal is None:
            await watch.wait(timeout)
            return
        moved = self.journal.moved
        if not moved.is_set():
            waits = [asyncio.ensure_future(watch.wait(timeout)), asyncio.ensure_future(moved.wait())]
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    await cancel_and_wait(w)
        moved.clear()

    def _dir_watch(self) -> DirWatch | None:
        """inotify on the followed files' directories, unless the rescan comes every interval anyway or the
        kernel gives no inotify instance (then a pass every interval, as without it; logged)."""
        if self.options.rescan_interval <= self.ctx.interval:
            return None
        try:
            return DirWatch()
        except OSError as exc:
            log.warning("logwatch_inotify_unavailable", instance=self.ctx.instance,
                        error=exc.strerror or str(exc), passes_every_s=self.ctx.interval)
            return None

    async def close(self) -> None:
        if self.journal is not None:
            self.journal.save_cursor(force=True)
        await self.ctx.run_blocking(self.tailer.close, timeout=5.0)
