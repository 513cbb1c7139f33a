"""State of the MEV stack's services: from systemd (``systemctl show``) or, without systemd, from /proc.

The runbook's quick diagnostic asks ``systemctl is-active`` for each service; here every
ActiveState is a 0/1 series, with restart counts and since-when.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mevwatch.aio import wait_for
from mevwatch.collectors._host import read_small_at
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
from mevwatch.redaction import redact

__all__ = [
    "ACTIVE_STATES",
    "LOAD_STATES",
    "ProcInfo",
    "ServicesCollector",
    "ServicesOptions",
    "UnitSpec",
    "UnitState",
    "match_processes",
    "mono_usec_to_wall",
    "parse_proc_stat",
    "parse_systemctl_show",
    "scan_processes",
    "systemd_booted",
]

ACTIVE_STATES = ("active", "reloading", "inactive", "failed", "activating", "deactivating")
LOAD_STATES = ("loaded", "not-found", "bad-setting", "error", "masked")
SHOW_PROPERTIES = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "NRestarts",
    "MainPID",
    "StateChangeTimestampMonotonic",
    "ExecMainStartTimestampMonotonic",
)
DEFAULT_UNITS = (
    "ethereum-erigon", "mev-detection", "mev-execution", "mev-analytics", "nginx", "redis", "postgresql",
)
# Process names of the default units where systemd is not there to ask (comm is cut at 15 characters).
DEFAULT_COMM = {"ethereum-erigon": "erigon", "redis": "redis-server", "postgresql": "postgres"}
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\@-]{1,255}$")
_NO_SYSTEMD = ("not been booted with systemd", "Failed to connect to bus", "System has not been booted")


# --- systemd -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnitState:
    load_state: str
    active_state: str
    sub_state: str
    restarts: int | None  # None where systemd is too old to count (NRestarts came in v235)
    main_pid: int
    state_change_usec: int  # CLOCK_MONOTONIC microseconds; 0 = never
    main_start_usec: int


def _int(value: str | None) -> int:
    if not value or not value.isdigit():
        return 0
    return int(value)


def parse_systemctl_show(text: str, count: int) -> list[UnitState]:
    """Blocks of ``systemctl show`` (one per unit asked, in order, separated by blank lines)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"systemctl show: not a Key=value line: {line[:200]!r}")
        current[key] = value
    if current:
        blocks.append(current)
    if len(blocks) != count:
        raise ValueError(f"systemctl show returned {len(blocks)} unit blocks for {count} units")
    out = []
    for b in blocks:
        if "ActiveState" not in b or "LoadState" not in b:
            raise ValueError(f"systemctl show: a block without ActiveState/LoadState: {sorted(b)}")
        nrestarts = b.get("NRestarts")
        out.append(
            UnitState(
                load_state=b["LoadState"],
                active_state=b["ActiveState"],
                sub_state=b.get("SubState", ""),
                restarts=int(nrestarts) if nrestarts and nrestarts.isdigit() else None,
                main_pid=_int(b.get("MainPID")),
                state_change_usec=_int(b.get("StateChangeTimestampMonotonic")),
                main_start_usec=_int(b.get("ExecMainStartTimestampMonotonic")),
            )
        )
    return out


def mono_usec_to_wall(usec: int, now_wall: float, now_mono: float) -> float:
    """A systemd CLOCK_MONOTONIC timestamp as Unix time (systemd's wall-clock ones depend on its locale)."""
    return now_wall - (now_mono - usec / 1e6)


def systemd_booted(rootfs: Path) -> bool:
    """sd_booted(): systemd is PID 1 when it created /run/systemd/system."""
    return (rootfs / "run" / "systemd" / "system").is_dir()


# --- processes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcInfo:
    pid: int
    comm: str
    state: str
    start_ticks: int  # clock ticks after boot
    cmdline: str = ""


def parse_proc_stat(text: str) -> tuple[str, str, int]:
    """(comm, state, starttime ticks) of /proc/<pid>/stat; comm may hold spaces and parentheses."""
    open_, close = text.find("("), text.rfind(")")
    if open_ < 0 or close < open_:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:120]!r}")
    rest = text[close + 2:].split()
    if len(rest) < 20:
        raise ValueError(f"/proc/<pid>/stat has {len(rest) + 2} fields, expected at least 22")
    return text[open_ + 1: close], rest[0], int(rest[19])


def _btime(procfs: Path) -> float:
    with open(procfs / "stat", encoding="ascii") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def scan_processes(
    procfs: Path, with_cmdline: bool, comms: frozenset[str] | None = None, pids: frozenset[int] = frozenset()
) -> list[ProcInfo]:
    """Every live (non-zombie) process; the command line only when a unit matches on it.

    With ``comms``, only the processes of those names (and ``pids``): the short comm file is read
    first and stat only for a match, so a host's hundreds of other processes cost one small read
    each (0.9 ms instead of 3.8-5.8 ms for 126 processes; the scan was the largest part of this
    collector's idle cost). Files are opened relative to procfs, without Path objects, for the same reason.
    """
    out = []
    dir_fd = os.open(procfs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in os.listdir(dir_fd):
            if not name.isdigit():
                continue
            try:
                if comms is not None and int(name) not in pids:
                    try:
                        comm = read_small_at(dir_fd, name + "/comm", 64).rstrip(b"\n").decode("utf-8", "replace")
                    except FileNotFoundError:
                        comm = None  # a tree without comm files (a fixture): stat has the name too
                    if comm is not None and comm not in comms:
                        continue
                stat = read_small_at(dir_fd, name + "/stat", 4096).decode("utf-8", "replace")
                comm, state, start = parse_proc_stat(stat)
                if comms is not None and comm not in comms and int(name) not in pids:
                    continue
                cmdline = ""
                if with_cmdline:
                    with open(f"{procfs}/{name}/cmdline", "rb") as fb:
                        cmdline = fb.read().replace(b"\0", b" ").strip().decode("utf-8", "replace")
            except (OSError, ValueError):
                continue  # exited while we looked
            if state in ("Z", "X"):
                continue
            out.append(ProcInfo(int(name), comm, state, start, cmdline))
    finally:
        os.close(dir_fd)
    return out


def _read_pidfile(path: str) -> int | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            first = f.readline().strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


# --- options -----------------------------------------------------------------------------


class UnitSpec(BaseModel):
    """A service: its systemd unit name, and how to find it among processes when there is no systemd."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="systemd unit name (the `unit` label)")
    comm: str | None = Field(None, description="process backend: process name (/proc/PID/comm)")
    cmdline: str | None = Field(None, description="process backend: regex searched in the command line")
    pidfile: str | None = Field(None, description="process backend: file holding the main PID")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _UNIT_NAME.match(v):
            raise ValueError(f"{v!r} is not a systemd unit name")
        return v

    @field_validator("cmdline")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return v

    @field_validator("pidfile")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError(f"{v!r} is not an absolute path")
        return v

    @property
    def process_comm(self) -> str | None:
        if self.comm is not None:
            return self.comm[:15]
        if self.cmdline is None and self.pidfile is None:
            base = self.name.removesuffix(".service")
            return DEFAULT_COMM.get(base, base)[:15]
        return None


class ServicesOptions(CollectorOptions):
    backend: Literal["auto", "systemd", "process"] = Field(
        "auto", description="systemd when it is PID 1 (auto), or always systemd / process"
    )
    systemctl: str = Field("systemctl", description="systemctl binary (name on PATH or absolute path)")
    systemctl_timeout: Duration = Field(
        3.0, gt=0, description="systemctl is killed after this long (a hung D-Bus never hangs the collector)"
    )
    units: list[UnitSpec] = Field(
        default_factory=lambda: [UnitSpec(name=u) for u in DEFAULT_UNITS],
        description="services to watch; a name, or {name, comm, cmdline, pidfile}",
    )

    @field_validator("units")
    @classmethod
    def _unique(cls, v: list[UnitSpec]) -> list[UnitSpec]:
        names = [u.name for u in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate unit {', '.join(dupes)}")
        return v


def match_processes(procs: Iterable[ProcInfo], spec: UnitSpec, pidfile_pid: int | None = None) -> list[ProcInfo]:
    """The processes of one service, oldest first (the first is taken as the main process)."""
    if spec.pidfile is not None:
        matched = [p for p in procs if p.pid == pidfile_pid]
    else:
        comm = spec.process_comm
        rx = re.compile(spec.cmdline) if spec.cmdline is not None else None
        matched = [
            p for p in procs
            if (comm is None or p.comm == comm) and (rx is None or rx.search(p.cmdline) is not None)
        ]
    return sorted(matched, key=lambda p: (p.start_ticks, p.pid))


@dataclass(slots=True)
class _Seen:
    """What the process backend remembers of one service between runs."""

    main_pid: int | None = None
    restarts: int = 0
    up: bool | None = None
    changed_wall: float = 0.0


@dataclass(slots=True)
class _ProcessResult:
    procs: list[ProcInfo] = field(default_factory=list)
    pidfile_pids: dict[str, int | None] = field(default_factory=dict)
    btime: float = 0.0


# --- the collector -----------------------------------------------------------------------


SERVICE_STATE = MetricSpec(
    "mevwatch_service_state", "gauge",
    "1 for the service's ActiveState (active, reloading, inactive, failed, activating, deactivating)",
    ("unit", "state"),
)

SERVICE_UP = MetricSpec("mevwatch_service_up", "gauge", "1 if the service is active (or reloading)", ("unit",))

SERVICE_RESTARTS = MetricSpec(
    "mevwatch_service_restarts", "counter",
    "Automatic restarts (systemd NRestarts), or main-PID changes seen by the process backend",
    ("unit",),
)

SERVICE_STATE_CHANGE_TIMESTAMP_SECONDS = MetricSpec(
    "mevwatch_service_state_change_timestamp_seconds", "gauge",
    "Unix time the service entered its current state (process backend: when mevwatch saw the change, or the process "
    "start time when first seen running)",
    ("unit",),
)

SERVICE_START_TIME_SECONDS = MetricSpec(
    "mevwatch_service_start_time_seconds", "gauge",
    "Unix time the service's main process started",
    ("unit",),
)

SERVICE_PROCESSES = MetricSpec(
    "mevwatch_service_processes", "gauge",
    "Processes matched for the service (process backend)",
    ("unit",),
)

SERVICES_BACKEND = MetricSpec(
    "mevwatch_services_backend", "gauge",
    "1 for the backend the service states come from",
    ("backend",),
)

SERVICES_SYSTEMD_AVAILABLE = MetricSpec(
    "mevwatch_services_systemd_available", "gauge",
    "1 if systemd is PID 1 on this host",
)

SERVICE_LOAD_STATE = MetricSpec(
    "mevwatch_service_load_state", "gauge",
    "1 for the unit's LoadState (not-found: no such unit)",
    ("unit", "state"),
)


@register
class ServicesCollector(PollCollector[ServicesOptions]):
    kind: ClassVar[str] = "services"
    Options = ServicesOptions
    default_interval: ClassVar[float] = 15.0
    default_timeout: ClassVar[float] = 10.0
    runbook_section = "service-down"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        SERVICE_STATE,
        SERVICE_UP,
        SERVICE_RESTARTS,
        SERVICE_STATE_CHANGE_TIMESTAMP_SECONDS,
        SERVICE_START_TIME_SECONDS,
        SERVICE_PROCESSES,
        SERVICES_BACKEND,
        SERVICES_SYSTEMD_AVAILABLE,
        SERVICE_LOAD_STATE,
    )

    def __init__(self, ctx: CollectorContext, options: ServicesOptions) -> None:
        super().__init__(ctx, options)
        self._seen: dict[str, _Seen] = {u.name: _Seen() for u in options.units}
        self._clk_tck = os.sysconf("SC_CLK_TCK")

    async def collect(self) -> Families:
        booted = systemd_booted(self.ctx.paths.rootfs)
        backend = self.options.backend
        if backend == "auto":
            backend = "systemd" if booted else "process"
        elif backend == "systemd" and not booted:
            raise CollectorError(
                "systemd_unavailable",
                f"systemd is not running here ({self.ctx.paths.rootfs / 'run/systemd/system'} is missing); "
                "use backend: process",
            )
        if backend == "systemd":
            families = await self._systemd()
        else:
            families = await self._process()
        info = SERVICES_BACKEND.gauge()
        for b in ("systemd", "process"):
            info.add_metric([b], 1.0 if b == backend else 0.0)
        families.append(info)
        families.append(
            SERVICES_SYSTEMD_AVAILABLE.gauge(float(booted))
        )
        return families

    # --- systemd backend ---

    async def _systemctl_show(self, units: Sequence[str]) -> str:
        exe = shutil.which(self.options.systemctl)
        if exe is None:
            raise CollectorError("systemd_unavailable", f"{self.options.systemctl} not found")
        argv = [exe, "show", "--no-pager", "--property=" + ",".join(SHOW_PROPERTIES), "--", *units]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # so a timeout kills systemctl and anything it spawned
            env={**os.environ, "SYSTEMD_PAGER": "", "LC_ALL": "C"},
        )
        timeout = min(self.options.systemctl_timeout, self.ctx.timeout * 0.8)
        try:
            out, err = await wait_for(proc.communicate(), timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await wait_for(proc.wait(), 1.0)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise CollectorError(
                "systemctl_timeout", f"systemctl show did not answer within {timeout:g}s; killed"
            ) from None
        stderr = err.decode("utf-8", "replace").strip()
        if proc.returncode != 0:
            if any(s in stderr for s in _NO_SYSTEMD):
                raise CollectorError("systemd_unavailable", f"systemd not available: {redact(stderr[:300])}")
            raise CollectorError(
                "systemctl_failed", f"systemctl show exited {proc.returncode}: {redact(stderr[:300])}"
            )
        return out.decode("utf-8", "replace")

    async def _systemd(self) -> list[Metric]:
        names = [u.name for u in self.options.units]
        text = await self._systemctl_show(names)
        try:
            states = parse_systemctl_show(text, len(names))
        except ValueError as exc:
            raise CollectorError("parse_error", str(exc)) from None
        now_wall, now_mono = time.time(), time.monotonic()
        fams = _Families()
        for name, st in zip(names, states, strict=True):
            fams.state(name, st.active_state)
            fams.up.add_metric([name], 1.0 if st.active_state in ("active", "reloading") else 0.0)
            for s in LOAD_STATES:
                fams.load.add_metric([name, s], 1.0 if s == st.load_state else 0.0)
            if st.restarts is not None:
                fams.restarts.add_metric([name], float(st.restarts))
            if st.state_change_usec:
                fams.since.add_metric([name], mono_usec_to_wall(st.state_change_usec, now_wall, now_mono))
            if st.main_pid and st.main_start_usec:
                fams.start.add_metric([name], mono_usec_to_wall(st.main_start_usec, now_wall, now_mono))
        return fams.all(with_load=True)

    # --- process backend ---

    def _scan(self) -> _ProcessResult:
        procfs = self.ctx.paths.procfs
        root = str(self.ctx.paths.rootfs).rstrip("/")
        units = self.options.units
        pidfile_pids = {u.name: _read_pidfile(root + u.pidfile) for u in units if u.pidfile is not None}
        # Only the named processes are read when every unit has a process name or a pidfile; a unit
        # matched on its command line alone needs them all.
        named = [u.process_comm for u in units if u.pidfile is None]
        comms = None if None in named else frozenset(c for c in named if c is not None)
        return _ProcessResult(
            procs=scan_processes(
                procfs, any(u.cmdline is not None for u in units), comms,
                frozenset(p for p in pidfile_pids.values() if p is not None),
            ),
            pidfile_pids=pidfile_pids,
            btime=_btime(procfs),
        )

    async def _process(self) -> list[Metric]:
        try:
            res = await self.ctx.run_blocking(self._scan)
        except (OSError, ValueError) as exc:
            raise CollectorError("procfs_unreadable", f"cannot scan processes: {exc}") from None
        now_wall = time.time()
        fams = _Families()
        for u in self.options.units:
            matched = match_processes(res.procs, u, res.pidfile_pids.get(u.name))
            seen = self._seen.setdefault(u.name, _Seen())
            up = bool(matched)
            if matched:
                pid = matched[0].pid
                if seen.main_pid is not None and pid != seen.main_pid:
                    seen.restarts += 1
                seen.main_pid = pid
                start = res.btime + matched[0].start_ticks / self._clk_tck
                fams.start.add_metric([u.name], start)
            if up != seen.up:
                # The first sight of a running service dates from its start, not from our first look.
                seen.changed_wall = (
                    res.btime + matched[0].start_ticks / self._clk_tck if up and seen.up is None else now_wall
                )
                seen.up = up
            fams.state(u.name, "active" if up else "inactive")
            fams.up.add_metric([u.name], 1.0 if up else 0.0)
            fams.restarts.add_metric([u.name], float(seen.restarts))
            fams.since.add_metric([u.name], seen.changed_wall)
            fams.processes.add_metric([u.name], float(len(matched)))
        return fams.all(with_load=False)


class _Families:
    def __init__(self) -> None:
        self.active = SERVICE_STATE.gauge()
        self.up = SERVICE_UP.gauge()
        self.load = SERVICE_LOAD_STATE.gauge()
        self.restarts = SERVICE_RESTARTS.counter()
        self.since = SERVICE_STATE_CHANGE_TIMESTAMP_SECONDS.gauge()
        self.start = SERVICE_START_TIME_SECONDS.gauge()
        self.processes = SERVICE_PROCESSES.gauge()

    def state(self, unit: str, state: str) -> None:
        for s in ACTIVE_STATES:
            self.active.add_metric([unit, s], 1.0 if s == state else 0.0)

    def all(self, with_load: bool) -> list[Metric]:
        fams: list[Metric] = [self.active, self.up, self.restarts, self.since, self.start]
        fams.append(self.load if with_load else self.processes)
        return fams
