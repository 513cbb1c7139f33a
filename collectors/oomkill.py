"""Kernel OOM kills as events, read from /dev/kmsg: who was killed, in which unit, and when.

A restart resumes after the last kmsg sequence number stored in the state DB, so no kill is
counted twice or missed; the counters themselves are stored too and never reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from mevwatch.collectors._host import unit_from_cgroup_path
from mevwatch.collectors.base import (
    CollectorContext,
    CollectorError,
    CollectorOptions,
    Emit,
    MetricSpec,
    StateError,
    StateStore,
    StreamCollector,
)
from mevwatch.collectors.registry import register
from mevwatch.families import Metric
from mevwatch.fields import Duration

__all__ = [
    "MIGRATIONS",
    "KmsgDrain",
    "KmsgRecord",
    "OomContext",
    "OomKillCollector",
    "OomKillOptions",
    "OomTracker",
    "OomVictim",
    "drain_kmsg",
    "parse_kmsg_line",
    "parse_oom_message",
]

#: a kmsg record is at most this long (the kernel's CONSOLE_EXT_LOG_MAX); a smaller read fails with EINVAL
_READ_SIZE = 8192
#: records handled per wake-up, so a kernel flooding the log cannot starve the event loop
_MAX_RECORDS_PER_DRAIN = 4096
_OTHER = "_other"
#: a cursor that only moved past kernel chatter is saved at most this often (and on stop)
_CURSOR_SAVE_INTERVAL = 5.0

_KILLED_RE = re.compile(r"Killed process (\d+) \((.+?)\)(?= |,|$)")
_RSS_RE = re.compile(r"\b(anon|file|shmem)-rss:(\d+)kB")

MIGRATIONS = [
    """
    CREATE TABLE oomkill_cursor (
        instance TEXT PRIMARY KEY,
        boot_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        overruns INTEGER NOT NULL
    );
    CREATE TABLE oomkill_counts (
        instance TEXT NOT NULL,
        comm TEXT NOT NULL,
        unit TEXT NOT NULL,
        kills INTEGER NOT NULL,
        PRIMARY KEY (instance, comm, unit)
    );
    CREATE TABLE oomkill_last_victim (
        instance TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        comm TEXT NOT NULL,
        unit TEXT NOT NULL,
        cgroup TEXT NOT NULL,
        oom_constraint TEXT NOT NULL,
        resident_bytes INTEGER,
        timestamp REAL NOT NULL
    )
    """,
]


class OomKillOptions(CollectorOptions):
    interval: Duration | None = Field(default=None, gt=0, description=(
        "not a polling period: kills are reported as the kernel logs them; the stream's samples are marked "
        "fresh this often and vanish 2x this after the stream died (default 30s)"))
    max_series: int = Field(
        200, ge=1, le=10000,
        description="distinct (comm, unit) counters kept; later new victims count under comm/unit '_other'",
    )


# --- pure parsers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KmsgRecord:
    priority: int  # facility * 8 + level
    seq: int
    timestamp_us: int  # CLOCK_MONOTONIC when the kernel logged it
    message: str


def parse_kmsg_line(line: str) -> KmsgRecord | None:
    """One /dev/kmsg line ``prio,seq,usec,flags[,...];message`` -> record.

    Continuation lines (`` KEY=value`` device properties) and lines that are not records give None.
    """
    if not line or line[0] == " ":
        return None
    head, sep, message = line.partition(";")
    fields = head.split(",")
    if not sep or len(fields) < 3:
        return None
    try:
        return KmsgRecord(int(fields[0]), int(fields[1]), int(fields[2]), message)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class OomContext:
    """The kernel's ``oom-kill:constraint=...,task_memcg=...,task=...,pid=...`` summary line."""

    pid: int
    comm: str
    constraint: str  # memcg, none, cpuset, memory_policy
    task_memcg: str
    oom_memcg: str


@dataclass(frozen=True, slots=True)
class OomVictim:
    """``[Memory cgroup ]Out of memory: Killed process PID (comm) ... anon-rss:..kB ...``."""

    pid: int
    comm: str
    memcg: bool
    resident_bytes: int | None


def parse_oom_message(message: str) -> OomContext | OomVictim | None:
    """An OOM killer line of the kernel log -> its context or its victim; any other line -> None."""
    if message.startswith("oom-kill:"):
        kv: dict[str, str] = {}
        for part in message[len("oom-kill:") :].split(","):
            key, sep, value = part.partition("=")
            if sep:
                kv[key.strip()] = value.strip()
        pid = kv.get("pid", "")
        if not pid.isdigit() or "task" not in kv:
            return None
        constraint = kv.get("constraint", "").removeprefix("CONSTRAINT_").lower()
        return OomContext(int(pid), kv["task"], constraint, kv.get("task_memcg", ""), kv.get("oom_memcg", ""))
    m = _KILLED_RE.search(message)
    if m is None:
        return None
    rss = [int(kb) * 1024 for _, kb in _RSS_RE.findall(message)]
    return OomVictim(
        pid=int(m.group(1)),
        comm=m.group(2),
        memcg=message.startswith("Memory cgroup out of memory"),
        resident_bytes=sum(rss) if rss else None,
    )


@dataclass(frozen=True, slots=True)
class OomEvent:
    pid: int
    comm: str
    unit: str
    cgroup: str
    constraint: str
    resident_bytes: int | None
    timestamp_us: int


@dataclass(slots=True)
class OomTracker:
    """Turns kmsg records into OOM kill events; the kernel prints the context line just before the kill."""

    _contexts: dict[int, OomContext] = field(default_factory=dict)

    def feed(self, record: KmsgRecord) -> OomEvent | None:
        parsed = parse_oom_message(record.message)
        if isinstance(parsed, OomContext):
            if len(self._contexts) >= 64:  # a context whose kill line never came
                self._contexts.pop(next(iter(self._contexts)))
            self._contexts[parsed.pid] = parsed
            return None
        if parsed is None:
            return None
        ctx = self._contexts.pop(parsed.pid, None)
        cgroup = ctx.task_memcg if ctx is not None else ""
        constraint = ctx.constraint if ctx is not None else ("memcg" if parsed.memcg else "")
        return OomEvent(
            pid=parsed.pid,
            comm=parsed.comm,
            unit=unit_from_cgroup_path(cgroup) if cgroup else "",
            cgroup=cgroup,
            constraint=constraint,
            resident_bytes=parsed.resident_bytes,
            timestamp_us=record.timestamp_us,
        )


# --- reading /dev/kmsg ----------------------------------------------------------------------


@dataclass(slots=True)
class KmsgDrain:
    lines: list[str]
    overruns: int  # EPIPE: records were overwritten before we read them
    eof: bool  # the source ended (a FIFO whose writer closed; /dev/kmsg never ends)
    more: bool  # stopped at the per-drain limit with records still waiting


def drain_kmsg(read: Callable[[], bytes], partial: bytearray) -> KmsgDrain:
    """Read records until the source would block.

    /dev/kmsg returns one record per read; a FIFO (fixtures) may return several or a part of
    one, so bytes after the last newline are kept in ``partial`` for the next drain.
    """
    out = KmsgDrain([], 0, False, False)
    for _ in range(_MAX_RECORDS_PER_DRAIN):
        try:
            chunk = read()
        except BlockingIOError:
            return out
        except BrokenPipeError:  # EPIPE
            out.overruns += 1
            continue
        if not chunk:
            out.eof = True
            return out
        partial.extend(chunk)
        end = partial.rfind(b"\n")
        if end >= 0:
            out.lines.extend(partial[:end].decode("utf-8", "replace").split("\n"))
            del partial[: end + 1]
    out.more = True
    return out


# --- the collector --------------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    boot_id: str
    seq: int = -1  # last record handled; -1: none yet
    overruns: int = 0
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    last: OomEvent | None = None
    last_wall: float = 0.0


OOM_KILLS = MetricSpec(
    "mevwatch_oom_kills", "counter",
    "Processes killed by the kernel OOM killer, by command and systemd unit (or cgroup path), from the kernel log",
    ("comm", "unit"),
)

OOM_KMSG_OVERRUNS = MetricSpec(
    "mevwatch_oom_kmsg_overruns", "counter",
    "Times kernel log records were overwritten before mevwatch read them (kills may be missed)",
)

OOM_LAST_VICTIM_INFO = MetricSpec(
    "mevwatch_oom_last_victim_info", "gauge",
    "The last process the OOM killer killed (always 1)",
    ("pid", "comm", "unit", "cgroup", "constraint"),
)

OOM_LAST_KILL_TIMESTAMP_SECONDS = MetricSpec(
    "mevwatch_oom_last_kill_timestamp_seconds", "gauge",
    "Unix time of the last OOM kill",
)

OOM_LAST_VICTIM_RESIDENT_BYTES = MetricSpec(
    "mevwatch_oom_last_victim_resident_bytes", "gauge",
    "Resident memory of the last OOM victim when it was killed",
)


@register
class OomKillCollector(StreamCollector[OomKillOptions]):
    kind: ClassVar[str] = "oomkill"
    Options = OomKillOptions
    default_interval: ClassVar[float] = 30.0
    runbook_section = "memory-high"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        OOM_KILLS,
        OOM_KMSG_OVERRUNS,
        OOM_LAST_VICTIM_INFO,
        OOM_LAST_KILL_TIMESTAMP_SECONDS,
        OOM_LAST_VICTIM_RESIDENT_BYTES,
    )

    def __init__(self, ctx: CollectorContext, options: OomKillOptions) -> None:
        super().__init__(ctx, options)
        self._dirty = False  # the cursor moved since the last save
        self._saved_at = 0.0

    async def run(self, emit: Emit) -> None:
        path = self.ctx.paths.devfs / "kmsg"
        fd = _open_kmsg(path)
        loop = asyncio.get_running_loop()
        try:
            boot_id = _boot_id(self.ctx.paths.procfs)
            state, resume = self._load(boot_id)
            partial = bytearray()

            def read() -> bytes:
                return _kmsg_read(fd)

            if not resume:
                # First run ever: start at the end of the ring buffer, learning its last sequence number
                # so a restart knows where it stopped. Kills already in the buffer are history.
                while True:
                    drained = _drain_or_fail(read, partial, path)
                    for line in drained.lines:
                        rec = parse_kmsg_line(line)
                        if rec is not None:
                            state.seq = max(state.seq, rec.seq)
                    if not drained.more:
                        break
                    await asyncio.sleep(0)
                self._save(state, [])
            tracker = OomTracker()
            emit(self._families(state))
            readable = asyncio.Event()
            loop.add_reader(fd, readable.set)
            try:
                first = resume
                while True:
                    drained = _drain_or_fail(read, partial, path)
                    changed = self._handle(state, tracker, drained, first)
                    first = first and not drained.lines
                    if changed:
                        emit(self._families(state))
                    if drained.eof:
                        raise CollectorError("kmsg_eof", f"{path} ended")
                    if drained.more:
                        await asyncio.sleep(0)
                        continue
                    readable.clear()
                    await readable.wait()
            finally:
                loop.remove_reader(fd)
                if self._dirty:
                    with contextlib.suppress(CollectorError):
                        self._save(state, [])
        finally:
            os.close(fd)

    def _handle(self, state: _State, tracker: OomTracker, drained: KmsgDrain, first: bool) -> bool:
        """Count the kills among newly read records and persist; True when exported values changed.

        A kill is saved together with the cursor at once, so a crash can neither lose nor repeat it;
        a cursor that only moved past other records is saved lazily, since reading those again after
        a crash counts nothing.
        """
        events: list[OomEvent] = []
        last_seq = state.seq
        overruns = drained.overruns
        for line in drained.lines:
            rec = parse_kmsg_line(line)
            if rec is None or rec.seq <= last_seq:
                continue  # already handled before a restart
            if first and last_seq >= 0 and rec.seq > last_seq + 1:
                # Records were overwritten while mevwatch was not running: kills may be missed.
                overruns += 1
            first = False
            last_seq = rec.seq
            event = tracker.feed(rec)
            if event is not None:
                events.append(event)
        if last_seq == state.seq and not overruns:
            return False
        if not events and not overruns:
            state.seq = last_seq
            self._dirty = True
            if time.monotonic() - self._saved_at >= _CURSOR_SAVE_INTERVAL:
                self._save(state, [])
            return False
        new_counts = dict(state.counts)
        for ev in events:
            key = (ev.comm, ev.unit)
            if key not in new_counts and len(new_counts) >= self.options.max_series:
                key = (_OTHER, _OTHER)
            new_counts[key] = new_counts.get(key, 0) + 1
        new = _State(state.boot_id, last_seq, state.overruns + overruns, new_counts, state.last, state.last_wall)
        if events:
            new.last = events[-1]
            new.last_wall = _wall_time(new.last.timestamp_us)
            for ev in events:
                self.ctx.log.warning(
                    "oom_kill", pid=ev.pid, comm=ev.comm, unit=ev.unit, cgroup=ev.cgroup, constraint=ev.constraint
                )
        self._save(new, [k for k in new_counts if new_counts[k] != state.counts.get(k)])
        state.seq, state.overruns, state.counts = new.seq, new.overruns, new.counts
        state.last, state.last_wall = new.last, new.last_wall
        return True

    # --- persistence ------------------------------------------------------------------------

    def _db(self) -> StateStore | None:
        db = self.ctx.state
        if db is not None:
            try:
                db.migrate("oomkill", MIGRATIONS)
            except StateError as exc:
                raise CollectorError("state_unusable", str(exc)) from None
        return db

    def _load(self, boot_id: str) -> tuple[_State, bool]:
        """The stored state and whether to resume from it (False: first run, start at the end)."""
        db = self._db()
        state = _State(boot_id)
        if db is None:
            return state, False
        inst = self.ctx.instance
        try:
            cursor = db.query("SELECT boot_id, seq, overruns FROM oomkill_cursor WHERE instance = ?", (inst,))
            counts = db.query("SELECT comm, unit, kills FROM oomkill_counts WHERE instance = ?", (inst,))
            last = db.query(
                "SELECT pid, comm, unit, cgroup, oom_constraint, resident_bytes, timestamp "
                "FROM oomkill_last_victim WHERE instance = ?",
                (inst,),
            )
        except StateError as exc:
            raise CollectorError("state_unusable", str(exc)) from None
        state.counts = {(str(c), str(u)): int(k) for c, u, k in counts}
        if last:
            pid, comm, unit, cgroup, constraint, rss, wall = last[0]
            state.last = OomEvent(int(pid), comm, unit, cgroup, constraint, rss, 0)
            state.last_wall = float(wall)
        if not cursor:
            return state, False
        stored_boot, seq, overruns = cursor[0]
        state.overruns = int(overruns)
        # After a reboot the sequence numbers start again: every record in the buffer is new.
        state.seq = int(seq) if stored_boot == boot_id else -1
        return state, True

    def _save(self, state: _State, changed: list[tuple[str, str]]) -> None:
        db = self.ctx.state
        if db is None:
            return
        inst = self.ctx.instance
        try:
            with db.transaction() as tx:
                tx.execute(
                    "INSERT INTO oomkill_cursor(instance, boot_id, seq, overruns) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(instance) DO UPDATE SET boot_id = excluded.boot_id, seq = excluded.seq, "
                    "overruns = excluded.overruns",
                    (inst, state.boot_id, state.seq, state.overruns),
                )
                for comm, unit in changed:
                    tx.execute(
                        "INSERT INTO oomkill_counts(instance, comm, unit, kills) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT(instance, comm, unit) DO UPDATE SET kills = excluded.kills",
                        (inst, comm, unit, state.counts[(comm, unit)]),
                    )
                if changed and state.last is not None:
                    ev = state.last
                    tx.execute(
                        "INSERT OR REPLACE INTO oomkill_last_victim(instance, pid, comm, unit, cgroup, "
                        "oom_constraint, resident_bytes, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (inst, ev.pid, ev.comm, ev.unit, ev.cgroup, ev.constraint, ev.resident_bytes,
                         state.last_wall),
                    )
        except StateError as exc:
            # Not counted in memory either: after the restart the records are read again.
            raise CollectorError("state_write_failed", str(exc)) from None
        self._dirty = False
        self._saved_at = time.monotonic()

    # --- output -----------------------------------------------------------------------------

    def _families(self, state: _State) -> list[Metric]:
        kills = OOM_KILLS.counter()
        for (comm, unit), n in sorted(state.counts.items()):
            kills.add_metric([comm, unit], float(n))
        out: list[Metric] = [
            kills,
            OOM_KMSG_OVERRUNS.counter(float(state.overruns)),
        ]
        if state.last is not None:
            ev = state.last
            info = OOM_LAST_VICTIM_INFO.gauge()
            info.add_metric([str(ev.pid), ev.comm, ev.unit, ev.cgroup, ev.constraint], 1.0)
            out.append(info)
            out.append(
                OOM_LAST_KILL_TIMESTAMP_SECONDS.gauge(state.last_wall)
            )
            if ev.resident_bytes is not None:
                out.append(
                    OOM_LAST_VICTIM_RESIDENT_BYTES.gauge(float(ev.resident_bytes))
                )
        return out


def _open_kmsg(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CollectorError("kmsg_missing", f"{path} does not exist (container without /dev/kmsg?)") from None
    except PermissionError:
        raise CollectorError(
            "kmsg_unreadable", f"{path}: permission denied (needs root or CAP_SYSLOG when dmesg_restrict=1)"
        ) from None
    except OSError as exc:
        raise CollectorError("kmsg_unreadable", f"{path}: {exc.strerror or exc}") from None


def _kmsg_read(fd: int) -> bytes:
    return os.read(fd, _READ_SIZE)


def _drain_or_fail(read: Callable[[], bytes], partial: bytearray, path: Path) -> KmsgDrain:
    try:
        return drain_kmsg(read, partial)
    except OSError as exc:
        raise CollectorError("kmsg_read_failed", f"{path}: {exc.strerror or exc}") from None


def _boot_id(procfs: Path) -> str:
    with contextlib.suppress(OSError):
        return (procfs / "sys" / "kernel" / "random" / "boot_id").read_text(encoding="ascii").strip()
    return ""


def _wall_time(timestamp_us: int) -> float:
    """A kmsg timestamp (CLOCK_MONOTONIC microseconds) as Unix time."""
    return time.time() - (time.clock_gettime(time.CLOCK_MONOTONIC) - timestamp_us / 1e6)
