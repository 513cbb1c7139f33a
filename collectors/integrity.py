"""File integrity of the MEV host: realtime inotify detection and periodic verify against a baseline.

The runbook's SecurityMonitor (section "Security Incidents") hashes three files and crashes on a
missing one; this sees content, mode, owner, type and inode changes of the whole watched set.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar, Literal

from asyncinotify import Event, Inotify, Mask, Watch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mevwatch.collectors._integrity_audit import AuditLog, who_wrote
from mevwatch.collectors._integrity_baseline import Baseline, BaselineStore, Who
from mevwatch.collectors._integrity_diff import CopyStore, ReportChanges
from mevwatch.collectors._integrity_scan import (
    DEFAULT_CHUNK,
    KINDS,
    FileRecord,
    RecordTable,
    Violation,
    WatchSet,
    compare,
    scan,
    verify_each,
)
from mevwatch.collectors._integrity_writers import UNKNOWN, WriterLog
from mevwatch.collectors.base import (
    CollectorContext,
    CollectorError,
    CollectorOptions,
    Emit,
    MetricSpec,
    StreamCollector,
)
from mevwatch.collectors.registry import register
from mevwatch.families import Metric, label_text
from mevwatch.fields import ByteSize, Duration, read_secret_file

__all__ = ["DirectoryOption", "IntegrityCollector", "IntegrityOptions", "read_hmac_key", "report_changes", "watch_set"]

RUNBOOK_FILES = ["/etc/mev/config.yaml", "/usr/local/bin/mev-engine", "/etc/mev/wallets.json"]
#: files whose content is never copied or shown in a diff (Wazuh's nodiff): wallets, keys, secrets
NODIFF_DEFAULT = [
    "/etc/mev/wallets.json", "*wallet*", "*keystore*", "*.key", "*.pem", "*.p12", "*.pfx", "*secret*",
    "*password*", "*passwd*", "*mnemonic*", "*.env", "**/keys/**", "id_rsa*", "id_ecdsa*", "id_ed25519*",
]

_WATCH_MASK = (
    Mask.MODIFY | Mask.ATTRIB | Mask.CLOSE_WRITE | Mask.MOVED_FROM | Mask.MOVED_TO | Mask.CREATE
    | Mask.DELETE | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ONLYDIR | Mask.DONT_FOLLOW | Mask.EXCL_UNLINK
)
_DIR_CHANGE = Mask.CREATE | Mask.MOVED_TO | Mask.DELETE | Mask.MOVED_FROM
# Events read per read(2): a burst of changes is drained in few wakeups.
_EVENT_CACHE = 4096
# Paths scanned at a time by a verify: only one batch of records is held beside the baseline.
_VERIFY_BATCH = 8192
REALTIME_STATES = ("ok", "overflow", "watch_limit", "unavailable")
# Changed files a verify looks up the writer of (the rest say unknown): the audit log is read once for all.
_ATTRIBUTE_MAX = 100


def _absolute(values: list[str]) -> list[str]:
    for v in values:
        if not v.startswith("/"):
            raise ValueError(f"{v!r} is not an absolute path")
    return values


class DirectoryOption(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="absolute directory path")
    recursive: bool = Field(True, description="include subdirectories")

    @field_validator("path")
    @classmethod
    def _abs(cls, v: str) -> str:
        return _absolute([v])[0]


class IntegrityOptions(CollectorOptions):
    files: list[str] = Field(
        default_factory=lambda: list(RUNBOOK_FILES), description="single files (absolute); absent ones too"
    )
    globs: list[str] = Field(
        default_factory=lambda: ["/etc/mev/**"], description="glob patterns; ** spans directories"
    )
    directories: list[DirectoryOption] = Field(default_factory=list, description="directory trees")
    exclude: list[str] = Field(
        default_factory=list, description="globs to skip: with a / the whole path, else the base name"
    )
    follow_symlinks: bool = Field(False, description="check the file a symlink names instead of the link")
    verify_interval: Duration = Field(3600.0, gt=0, description="time between full verifies of the whole set")
    verify_mode: Literal["quick", "full"] = Field(
        "quick", description="quick hashes only files whose size/mtime/ctime/inode changed; full hashes all"
    )
    verify_timeout: Duration = Field(1800.0, gt=0, description="a verify running longer fails")
    debounce: Duration = Field(0.03, ge=0, le=5, description="wait after an event before re-checking")
    hmac_key_file: Path | None = Field(None, description="key file; the baseline is HMAC-protected with it")
    hash_threads: int = Field(4, ge=1, le=64, description="threads hashing files during a verify")
    chunk_size: ByteSize = Field(DEFAULT_CHUNK, ge=4096, le=256 << 20, description="read size when hashing")
    max_violation_series: int = Field(500, ge=1, le=100_000, description="cap on violation series exported")
    auto_baseline: bool = Field(
        False, description="create the baseline from the current files when none exists (trust on first use)"
    )
    writers: bool = Field(
        True, description="name the process and user that wrote a changed file (fanotify, as root; for a writer "
        "that exited, the audit log)"
    )
    report_changes: list[str] = Field(
        default_factory=list, description="globs (read as exclude) of watched files whose change the page and "
        "diagnose show as a unified diff with secrets masked; a copy of each one's baseline version (UTF-8 text "
        "of at most report_changes_max_size, never a binary) is kept in the state DB; [] (default): no diff, "
        "no copy"
    )
    nodiff: list[str] = Field(
        default_factory=lambda: list(NODIFF_DEFAULT), description="globs (read as exclude) of files whose "
        "content is never copied or shown, even under report_changes (wallets, keys, secrets): their page says "
        "so instead of a diff"
    )
    report_changes_max_size: ByteSize = Field(
        64 << 10, ge=1, le=1 << 20, description="largest file report_changes copies and diffs"
    )
    audit_log: Path | None = Field(
        Path("/var/log/audit/audit.log"), description="auditd's log, read for the writer fanotify could not "
        "name (needs an audit watch on the files, such as auditctl -w /etc/mev -p wa); null: not read"
    )

    @field_validator("files", "globs")
    @classmethod
    def _abs_paths(cls, v: list[str]) -> list[str]:
        return _absolute(v)


def watch_set(options: IntegrityOptions, rootfs: Path | str = "/") -> WatchSet:
    return WatchSet.build(
        files=options.files,
        globs=options.globs,
        directories=[(d.path, d.recursive) for d in options.directories],
        excludes=options.exclude,
        rootfs=str(rootfs),
    )


def report_changes(options: IntegrityOptions) -> ReportChanges:
    return ReportChanges(options.report_changes, options.nodiff, options.report_changes_max_size,
                         options.follow_symlinks)


def read_hmac_key(options: IntegrityOptions) -> bytes | None:
    """The baseline HMAC key, or None when not configured; ValueError when the file is unusable."""
    if options.hmac_key_file is None:
        return None
    key = read_secret_file(options.hmac_key_file)
    if len(key) < 16:
        raise ValueError(f"HMAC key in {str(options.hmac_key_file)!r} is shorter than 16 characters")
    return key.encode()


INTEGRITY_VIOLATION = MetricSpec(
    "mevwatch_integrity_violation", "gauge",
    "1 while the file differs from its baseline in this way",
    ("path", "kind"),
)

INTEGRITY_FILE_CHANGED = MetricSpec(
    "mevwatch_integrity_file_changed", "gauge",
    "1 while the file differs from its baseline: one series, and one alert, per changed file for as long as it "
    "differs, whatever changes next (what changed is in mevwatch_integrity_file_change_info)",
    ("path",),
)
INTEGRITY_FILE_CHANGE = MetricSpec(
    "mevwatch_integrity_file_change", "info",
    "What a changed file's difference from its baseline is now: kinds lists every way it differs "
    "(content,inode,...), change what each was and is (sizes, sha256 prefixes, mode, owner, inode), writer the "
    "process and user that last wrote it (fanotify as root, or the audit log) or unknown and why, diff "
    "(report_changes only) a bounded unified diff of the file now against its baseline version with secrets "
    "masked, or why there is none, changed_at when it last changed (its ctime, RFC 3339 UTC); a new series "
    "at each change",
    ("path", "kinds", "change", "writer", "diff", "changed_at"),
)
INTEGRITY_FILE_CHANGES = MetricSpec(
    "mevwatch_integrity_file_changes", "gauge",
    "Changes of a changed file seen since it last matched its baseline (by this run of the daemon)",
    ("path",),
)
_CHANGE_MAX = 300  # characters of the change label
_WRITER_MAX = 200  # characters of the writer label
_SHA_TAIL = re.compile(r"(sha256=[0-9a-f]{12})[0-9a-f]+")  # a hash prefix tells the versions apart

INTEGRITY_VIOLATIONS = MetricSpec(
    "mevwatch_integrity_violations", "gauge",
    "Violations present, by kind (not capped)",
    ("kind",),
)

INTEGRITY_VIOLATION_SERIES_OVERFLOW = MetricSpec(
    "mevwatch_integrity_violation_series_overflow", "gauge",
    "Violations present but not exported as series (max_violation_series reached)",
)

INTEGRITY_FILES_WATCHED = MetricSpec("mevwatch_integrity_files_watched", "gauge", "Paths of the watched set that exist")

INTEGRITY_WATCHED_DIRECTORIES = MetricSpec(
    "mevwatch_integrity_watched_directories", "gauge",
    "Directories under inotify watch",
)

INTEGRITY_LAST_VERIFY_TIMESTAMP_SECONDS = MetricSpec(
    "mevwatch_integrity_last_verify_timestamp_seconds", "gauge",
    "Unix time the last verify ended",
)

INTEGRITY_LAST_VERIFY_DURATION_SECONDS = MetricSpec(
    "mevwatch_integrity_last_verify_duration_seconds", "gauge",
    "Duration of the last verify",
)

INTEGRITY_CHANGES_DETECTED = MetricSpec(
    "mevwatch_integrity_changes_detected", "counter",
    "Checks that found a file's violations changed",
    ("source",),
)

INTEGRITY_VERIFIES = MetricSpec(
    "mevwatch_integrity_verifies", "counter",
    "Verifies of the whole watched set",
    ("mode",),
)

INTEGRITY_QUEUE_OVERFLOWS = MetricSpec(
    "mevwatch_integrity_queue_overflows", "counter",
    "inotify event queue overflows (each forces a full verify)",
)

INTEGRITY_REALTIME_STATE = MetricSpec(
    "mevwatch_integrity_realtime_state", "gauge",
    "Realtime (inotify) detection state, 1 for the current one",
    ("state",),
)

INTEGRITY_BASELINE_PRESENT = MetricSpec("mevwatch_integrity_baseline_present", "gauge", "1 when a baseline exists")

INTEGRITY_BASELINE_TAMPERED = MetricSpec(
    "mevwatch_integrity_baseline_tampered", "gauge",
    "1 when the baseline does not match its HMAC",
)

INTEGRITY_BASELINE_CORRUPT = MetricSpec(
    "mevwatch_integrity_baseline_corrupt", "gauge",
    "1 when baseline rows cannot be decoded",
)


@register
class IntegrityCollector(StreamCollector[IntegrityOptions]):
    kind: ClassVar[str] = "integrity"
    Options = IntegrityOptions
    default_interval: ClassVar[float] = 15.0
    default_timeout: ClassVar[float] = 30.0
    runbook_section = "integrity-violation"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        INTEGRITY_VIOLATION,
        INTEGRITY_FILE_CHANGED,
        INTEGRITY_FILE_CHANGE,
        INTEGRITY_FILE_CHANGES,
        INTEGRITY_VIOLATIONS,
        INTEGRITY_VIOLATION_SERIES_OVERFLOW,
        INTEGRITY_FILES_WATCHED,
        INTEGRITY_WATCHED_DIRECTORIES,
        INTEGRITY_LAST_VERIFY_TIMESTAMP_SECONDS,
        INTEGRITY_LAST_VERIFY_DURATION_SECONDS,
        INTEGRITY_CHANGES_DETECTED,
        INTEGRITY_VERIFIES,
        INTEGRITY_QUEUE_OVERFLOWS,
        INTEGRITY_REALTIME_STATE,
        INTEGRITY_BASELINE_PRESENT,
        INTEGRITY_BASELINE_TAMPERED,
        INTEGRITY_BASELINE_CORRUPT,
    )

    def __init__(self, ctx: CollectorContext, options: IntegrityOptions) -> None:
        super().__init__(ctx, options)
        self.ws = watch_set(options, ctx.paths.rootfs)
        self.store: BaselineStore | None = None
        self.baseline = Baseline()
        # What the last checks found, without holding their records (the baseline is the one copy):
        # how many paths exist, the baseline's paths that do not (or are no longer watched), and the
        # paths that exist without a baseline record.
        self._files_watched = 0
        self._absent: set[str] = set()
        self._extra: set[str] = set()
        self._violations: dict[str, list[Violation]] = {}
        self._exported: set[tuple[str, str]] = set()
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._replan = False
        self._overflow = False
        self._recovering = False
        self._inotify: Inotify | None = None
        self._watches: dict[str, Watch] = {}
        self._wd_host: dict[int, str] = {}
        self._watch_limit = False
        self._changes = {"realtime": 0, "verify": 0}
        self._overflows = 0
        self._verifies = {"quick": 0, "full": 0}
        self._last_verify_ts = 0.0
        self._last_verify_s = 0.0
        # changed path -> (changes seen since it last matched its baseline, when it last changed)
        self._file_changes: dict[str, tuple[int, float]] = {}
        self._writers: WriterLog | None = None
        self._audit: AuditLog | None = None
        self._who: dict[str, str] = {}  # changed path -> its writer, as last looked up
        self._report = report_changes(options)
        self.copies: CopyStore | None = None
        self._diffs: dict[str, str] = {}  # changed path -> its masked diff (or why none), as of its last change

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        if self.ctx.state is None:
            raise CollectorError("no_state_db", "the integrity baseline needs the state DB")
        try:
            key = await self.ctx.run_blocking(read_hmac_key, self.options)
        except ValueError as exc:
            raise CollectorError("hmac_key", str(exc)) from None
        self.store = BaselineStore(self.ctx.state, self.options.instance, key)
        if self._report:
            self.copies = CopyStore(self.ctx.state, self.options.instance)
        try:
            self._inotify = Inotify(cache_size=_EVENT_CACHE)
        except OSError as exc:
            # Out of inotify instances: periodic verify still covers the set, realtime is off.
            self.ctx.log.warning("integrity_inotify_unavailable", error=str(exc))
            self._inotify = None
        reader = asyncio.create_task(self._read_events()) if self._inotify is not None else None
        if self.options.writers:
            if self.options.audit_log is not None:
                self._audit = AuditLog(str(self.options.audit_log))
            writers = WriterLog()
            if writers.open():
                self._writers = writers
                asyncio.get_running_loop().add_reader(writers.fd, writers.read)
            else:
                self.ctx.log.info("integrity_writers_unknown", reason=writers.error)
        try:
            await self._load_baseline()
            await self._plan_watches()
            await self._full_check(full=self.options.verify_mode == "full")
            self._recovering = False  # a verify that failed after an overflow is made good by this one
            emit(self.families())
            await self._loop(emit)
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            if self._inotify is not None:
                self._inotify.close()
                self._inotify = None
            self._watches.clear()
            self._wd_host.clear()
            if self._writers is not None:
                asyncio.get_running_loop().remove_reader(self._writers.fd)
                self._writers.close()
                self._writers = None

    async def _loop(self, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        next_verify = loop.time() + self.options.verify_interval
        next_poll = loop.time() + self.ctx.interval
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                # Python 3.11's wait_for (used by the blocking pool) can swallow a cancel that
                # races with its result; a stop must still stop.
                raise asyncio.CancelledError
            timeout = max(0.0, min(next_verify, next_poll) - loop.time())
            if not (self._pending or self._replan or self._overflow):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            self._wake.clear()
            if self._pending and not (self._replan or self._overflow) and self.options.debounce:
                # Editors and sed -i write, rename and chmod in quick succession: check once after.
                await asyncio.sleep(self.options.debounce)
            now = loop.time()
            reloaded = await self._reload_if_changed()
            if self._overflow or self._replan or reloaded:
                full = self._overflow
                self._overflow = False
                if full:
                    # Events were lost: state "overflow" until the full verify has looked at everything.
                    self._recovering = True
                    emit(self.families())
                if self._replan:
                    self._replan = False
                    await self._plan_watches()
                self._pending.clear()
                await self._full_check(full=full or self.options.verify_mode == "full")
                self._recovering = False
            elif now >= next_verify:
                self._pending.clear()
                await self._full_check(full=self.options.verify_mode == "full")
            elif self._pending:
                paths, self._pending = self._pending, set()
                await self._recheck(paths)
            if now >= next_verify:
                next_verify = loop.time() + self.options.verify_interval
            if now >= next_poll:
                next_poll = loop.time() + self.ctx.interval
            emit(self.families())

    # --- baseline --------------------------------------------------------------------------

    async def _load_baseline(self) -> None:
        assert self.store is not None
        self.baseline = await self.ctx.run_blocking(self.store.load)
        if self.baseline.tampered:
            self.ctx.log.error("integrity_baseline_tampered")
        if self.baseline.corrupt:
            self.ctx.log.error("integrity_baseline_corrupt", problems=self.baseline.corrupt[:10])
        if not self.baseline.present and self.options.auto_baseline:
            current = await self.ctx.run_blocking(self._record_all, timeout=self.options.verify_timeout)
            files = len(current)
            who = Who(os.getuid(), "mevwatch", None)
            await self.ctx.run_blocking(self.store.replace_all, current, who, "auto_baseline")
            del current  # not beside the copy loaded next: two at once would stay in the RSS
            self.baseline = await self.ctx.run_blocking(self.store.load)
            self.ctx.log.info("integrity_baseline_created", files=files)

    async def _reload_if_changed(self) -> bool:
        """Pick up a baseline written by ``mevwatch integrity accept`` while the daemon runs."""
        assert self.store is not None
        gen = await self.ctx.run_blocking(self.store.generation)
        if gen == self.baseline.generation:
            return False
        await self._load_baseline()
        return True

    # --- checking --------------------------------------------------------------------------

    def _record_all(self) -> RecordTable:
        """Records of the whole watched set, hashed in batches and held packed: a first baseline."""
        o = self.options
        return RecordTable(rec for _, rec, _, _ in verify_each(
            self.ws, {}, follow_symlinks=o.follow_symlinks, threads=o.hash_threads, chunk=o.chunk_size,
            batch=_VERIFY_BATCH,
        ) if rec is not None)

    def _check_all(self, full: bool) -> tuple[int, set[str], set[str], list[Violation], dict[str, float]]:
        """Verify the whole set in batches (one batch of records held at a time), keeping counts only:
        (paths that exist, baseline paths that do not or are no longer watched, paths without a
        baseline record, violations, the ctime of each path that has one)."""
        base, o = self.baseline.records, self.options
        present = in_base = 0
        absent: set[str] = set()
        extra: set[str] = set()
        violations: list[Violation] = []
        ctimes: dict[str, float] = {}
        for path, rec, exists, found in verify_each(self.ws, base, quick=not full,
                                                    follow_symlinks=o.follow_symlinks, threads=o.hash_threads,
                                                    chunk=o.chunk_size, batch=_VERIFY_BATCH):
            violations.extend(found)
            if found and rec is not None:
                ctimes[path] = rec.ctime_ns / 1e9
            known = path in base
            in_base += known
            if not exists:
                absent.add(path)
            else:
                present += 1
                if not known:
                    extra.add(path)
        if in_base < len(base):
            absent.update(p for p in base if not self.ws.covers(p))
        return present, absent, extra, violations, ctimes

    async def _full_check(self, full: bool) -> None:
        t0 = time.monotonic()
        checked: tuple[int, set[str], set[str], list[Violation], dict[str, float]] = await self.ctx.run_blocking(
            lambda: self._check_all(full), timeout=self.options.verify_timeout
        )
        self._files_watched, self._absent, self._extra, violations, ctimes = checked
        if not self.baseline.present:
            violations = []
        grouped: dict[str, list[Violation]] = {}
        for v in violations:
            grouped.setdefault(v.path, []).append(v)
        changed = []
        for path in set(grouped) | set(self._violations):
            if grouped.get(path) != self._violations.get(path):
                self._changes["verify"] += 1
                changed.append(path)
        self._violations = grouped
        self._note_changes(changed, ctimes)
        await self._attribute(sorted(p for p in changed if p in grouped)[:_ATTRIBUTE_MAX], self._last_verify_ts)
        if self.copies is not None and self.baseline.present:
            await self.ctx.run_blocking(self._sync_copies, timeout=self.options.verify_timeout)
        self._verifies["full" if full else "quick"] += 1
        self._last_verify_s = time.monotonic() - t0
        self._last_verify_ts = time.time()

    async def _recheck(self, paths: Iterable[str]) -> None:
        """Hash the changed paths again (never trusting stat: two writes can share a ctime tick)."""
        todo = sorted(p for p in paths if p in self.baseline.records or self.ws.covers(p))
        if not todo:
            return
        o = self.options
        found: dict[str, FileRecord] = await self.ctx.run_blocking(
            lambda: scan(self.ws, todo, follow_symlinks=o.follow_symlinks, threads=o.hash_threads, chunk=o.chunk_size),
            timeout=o.verify_timeout,
        )
        base = self.baseline.records
        changed = []
        ctimes = {p: rec.ctime_ns / 1e9 for p, rec in found.items()}
        for path in todo:
            rec = found.get(path)
            before = path in self._extra or (path in base and path not in self._absent)
            self._files_watched += (rec is not None) - before
            if rec is not None:
                self._absent.discard(path)
                if path not in base:
                    self._extra.add(path)
            else:
                self._extra.discard(path)
                if path in base:
                    self._absent.add(path)
            new = compare(path, self.baseline.records.get(path), rec) if self.baseline.present else []
            if new != self._violations.get(path, []):
                self._changes["realtime"] += 1
                changed.append(path)
            if new:
                self._violations[path] = new
            else:
                self._violations.pop(path, None)
        self._note_changes(changed, ctimes)
        await self._attribute([p for p in changed if p in self._violations], time.time() - 60)

    def _note_changes(self, changed: Iterable[str], ctimes: dict[str, float]) -> None:
        """Count each change of a file that differs from its baseline, and when it was made (its ctime, or when it
        was seen for a file that is gone); forget a file once it matches its baseline again."""
        now = time.time()
        for path in changed:
            if path in self._violations:
                count = self._file_changes.get(path, (0, 0.0))[0]
                self._file_changes[path] = (count + 1, ctimes.get(path, now))
        for path in set(self._file_changes) - set(self._violations):
            del self._file_changes[path]

    async def _attribute(self, paths: list[str], since: float) -> None:
        """Look up who wrote the files whose violations just changed (a file now gone: since ``since``)."""
        for path in set(self._who) - set(self._violations):
            del self._who[path]
        for path in set(self._diffs) - set(self._violations):
            del self._diffs[path]
        if paths and self._report:
            self._diffs.update(await self.ctx.run_blocking(
                lambda: {p: self._diff_of(p) for p in paths}, timeout=self.options.verify_timeout))
        if not paths or not self.options.writers:
            return
        writers, audit, real = self._writers, self._audit, self.ws.real
        self._who.update(await self.ctx.run_blocking(
            lambda: who_wrote(paths, writers, audit, real=real, since=since), timeout=self.options.verify_timeout,
        ))

    # --- report_changes: the baseline versions of small text files, and diffs against them ------

    def _sync_copies(self) -> None:
        assert self.copies is not None
        self._report.sync_copies(self.copies, self.baseline.records, self._violations, self.ws.real)

    def _diff_of(self, path: str) -> str:
        """The masked diff of a changed report_changes file against its baseline version, or why there is none
        (blocking)."""
        return self._report.diff(path, self._violations.get(path, ()), self.baseline.records.get(path),
                                 self.copies, self.ws.real(path))

    async def details(self) -> list[tuple[str, str]]:
        return [(f"diff {label_text(p)}", d) for p, d in sorted(self._diffs.items()) if d]

    # --- inotify ---------------------------------------------------------------------------

    async def _plan_watches(self) -> None:
        if self._inotify is None:
            return
        wanted = set(await self.ctx.run_blocking(self.ws.directories))
        for host in sorted(set(self._watches) - wanted):
            watch = self._watches.pop(host)
            self._wd_host.pop(watch.wd, None)
            with contextlib.suppress(OSError):  # already gone with its directory
                self._inotify.rm_watch(watch)
        self._watch_limit = False
        for host in sorted(wanted - set(self._watches)):
            try:
                watch = self._inotify.add_watch(self.ws.real(host), _WATCH_MASK)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    self._watch_limit = True
                    self.ctx.log.warning("integrity_watch_limit", watched=len(self._watches), wanted=len(wanted))
                    break
                continue  # vanished or not a directory any more; the next plan sees it
            self._watches[host] = watch
            self._wd_host[watch.wd] = host
            if self._writers is not None:
                try:
                    self._writers.mark(self.ws.real(host))
                except OSError as exc:
                    self.ctx.log.warning("integrity_writers_mark_failed", directory=host, error=str(exc))

    async def _read_events(self) -> None:
        assert self._inotify is not None
        async for ev in self._inotify:
            self._on_event(ev)

    def _on_event(self, ev: Event) -> None:
        mask = ev.mask
        self._wake.set()
        if Mask.Q_OVERFLOW in mask:
            self._overflows += 1
            self._overflow = True
            self.ctx.log.warning("integrity_queue_overflow")
            return
        watch = ev.watch
        host = self._wd_host.get(watch.wd) if watch is not None else None
        if Mask.IGNORED in mask:
            if watch is not None and host is not None and self._watches.get(host) is watch:
                del self._watches[host]
                del self._wd_host[watch.wd]
                self._replan = True
            return
        if host is None:
            return
        if ev.name is None:
            if mask & (Mask.DELETE_SELF | Mask.MOVE_SELF):
                self._replan = True
            self._pending.add(host)
            return
        path = host.rstrip("/") + "/" + str(ev.name)
        if Mask.ISDIR in mask and mask & _DIR_CHANGE:
            self._replan = True
        self._pending.add(path)

    def debug_state(self) -> dict[str, object]:
        return {
            "pending": len(self._pending), "violations": len(self._violations), "watches": len(self._watches),
            "realtime": self._realtime_state(), "overflows": self._overflows, "replan": self._replan,
            "generation": self.baseline.generation, "verifies": dict(self._verifies),
        }

    # --- metrics ---------------------------------------------------------------------------

    def _realtime_state(self) -> str:
        if self._inotify is None:
            return "unavailable"
        if self._overflow or self._recovering:
            return "overflow"
        if self._watch_limit:
            return "watch_limit"
        return "ok"

    def _describe(self, path: str, kinds: set[str]) -> dict[str, str]:
        """What changed (each kind: was -> is), who last wrote the file, its diff and when it last changed."""
        parts = [f"{v.kind}: {v.expected} -> {v.found}" for v in self._violations.get(path, []) if v.kind in kinds]
        change = _SHA_TAIL.sub(r"\1", "; ".join(parts))
        if len(change) > _CHANGE_MAX:
            change = change[:_CHANGE_MAX - 3] + "..."
        at = self._file_changes.get(path, (0, None))[1]
        return {
            "kinds": ",".join(k for k in KINDS if k in kinds),
            "change": label_text(change),
            "writer": label_text(self._who.get(path, UNKNOWN))[:_WRITER_MAX],
            "diff": label_text(self._diffs.get(path, "")),
            "changed_at": "unknown" if at is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
        }

    def families(self) -> list[Metric]:
        all_v = sorted(
            (v for vs in self._violations.values() for v in vs), key=lambda v: (KINDS.index(v.kind), v.path)
        )
        present = {(v.path, v.kind) for v in all_v}
        # Series already exported stay, so a capped set does not flap between scrapes.
        keep = self._exported & present
        for v in all_v:
            if len(keep) >= self.options.max_violation_series:
                break
            keep.add((v.path, v.kind))
        self._exported = keep
        viol = INTEGRITY_VIOLATION.gauge()
        # a name that is not UTF-8 is shown with its bytes escaped (x\xff): the label and the alert stay
        # valid UTF-8; two names that show alike are one series
        for label in sorted({(label_text(path), kind) for path, kind in keep}):
            viol.add_metric(list(label), 1.0)
        by_file: dict[str, set[str]] = {}
        for path, kind in keep:
            by_file.setdefault(label_text(path), set()).add(kind)
        # one series per changed file whose labels stay while it differs (an alert's identity); what the
        # difference is now goes in the info series beside it, a new one at each change
        changed = INTEGRITY_FILE_CHANGED.gauge()
        change = INTEGRITY_FILE_CHANGE.info(labels=("path",))
        file_changes = INTEGRITY_FILE_CHANGES.gauge()
        shown = {label_text(p): p for p in self._violations}
        for path, kinds in sorted(by_file.items()):
            real = shown.get(path, path)
            changed.add_metric([path], 1.0)
            change.add_metric([path], self._describe(real, kinds))
            file_changes.add_metric([path], float(self._file_changes.get(real, (1, 0.0))[0]))
        per_kind = INTEGRITY_VIOLATIONS.gauge()
        counts = dict.fromkeys(KINDS, 0)
        for v in all_v:
            counts[v.kind] += 1
        for kind in KINDS:
            per_kind.add_metric([kind], float(counts[kind]))
        changes = INTEGRITY_CHANGES_DETECTED.counter()
        for source, n in self._changes.items():
            changes.add_metric([source], float(n))
        verifies = INTEGRITY_VERIFIES.counter()
        for mode, n in self._verifies.items():
            verifies.add_metric([mode], float(n))
        realtime = INTEGRITY_REALTIME_STATE.gauge()
        state = self._realtime_state()
        for s in REALTIME_STATES:
            realtime.add_metric([s], 1.0 if s == state else 0.0)
        b = self.baseline
        return [
            viol,
            changed,
            change,
            file_changes,
            per_kind,
            INTEGRITY_VIOLATION_SERIES_OVERFLOW.gauge(float(len(present) - len(keep))),
            INTEGRITY_FILES_WATCHED.gauge(float(self._files_watched)),
            INTEGRITY_WATCHED_DIRECTORIES.gauge(float(len(self._watches))),
            INTEGRITY_LAST_VERIFY_TIMESTAMP_SECONDS.gauge(self._last_verify_ts),
            INTEGRITY_LAST_VERIFY_DURATION_SECONDS.gauge(self._last_verify_s),
            changes,
            verifies,
            INTEGRITY_QUEUE_OVERFLOWS.counter(float(self._overflows)),
            realtime,
            INTEGRITY_BASELINE_PRESENT.gauge(float(b.present)),
            INTEGRITY_BASELINE_TAMPERED.gauge(float(b.tampered)),
            INTEGRITY_BASELINE_CORRUPT.gauge(float(bool(b.corrupt))),
        ]
