"""Host memory: meminfo, swap, PSI, kernel OOM kills, watched cgroups and the largest processes.

Serves the runbook's "High Memory Usage Leading to OOM Kills" (``free``, ``ps aux --sort=-%mem``).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator

from mevwatch.collectors._host import (
    PressureSource,
    enum_family,
    parse_proc_cgroup,
    read_small_at,
    read_text_status,
    unit_from_cgroup_path,
)
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

__all__ = [
    "CgroupLayout",
    "CgroupMemory",
    "MemoryCollector",
    "MemoryOptions",
    "ProcessGroup",
    "detect_memory_cgroup",
    "meminfo_fields",
    "parse_keyed_counts",
    "parse_meminfo",
    "parse_proc_stat_rss",
    "parse_vmstat",
    "read_cgroup_memory",
    "resolve_unit_cgroup",
    "top_processes",
    "vmstat_oom_kills",
]

#: v1 reports "no limit" as PAGE_COUNTER_MAX pages; anything this large is unlimited
_V1_UNLIMITED = 1 << 62
_UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".swap", ".slice")


class MemoryOptions(CollectorOptions):
    units: list[str] = Field(
        default_factory=lambda: ["ethereum-erigon", "mev-detection", "mev-execution", "mev-analytics"],
        validate_default=True,
        description="systemd units whose cgroup memory and OOM kills are watched ('.service' implied)",
    )
    cgroups: list[str] = Field(
        default_factory=list,
        description="cgroup paths (relative to the memory hierarchy root) watched like units",
    )
    top_processes: int = Field(
        10, ge=0, le=100, description="the N largest processes by RSS, labelled comm and unit (0: off)"
    )

    @field_validator("units")
    @classmethod
    def _units(cls, v: list[str]) -> list[str]:
        out = []
        for name in v:
            name = name.strip()
            if not name or "/" in name:
                raise ValueError(f"unit name must be a systemd unit like 'mev-detection.service', got {name!r}")
            out.append(name if name.endswith(_UNIT_SUFFIXES) else name + ".service")
        return out

    @field_validator("cgroups")
    @classmethod
    def _cgroups(cls, v: list[str]) -> list[str]:
        out = []
        for path in v:
            parts = [p for p in path.strip().split("/") if p]
            if not parts or any(p in (".", "..") for p in parts):
                raise ValueError(f"cgroup path must name a cgroup below the hierarchy root, got {path!r}")
            out.append("/" + "/".join(parts))
        return out


# --- pure parsers ---------------------------------------------------------------------------


# A line as the kernel writes it: "Key:   <number>[ kB]", the key printable ASCII without spaces or
# ':', so str.partition and str.split would cut it exactly where the expression does.
_MEMINFO_LINE = re.compile(r"^([!-9;-~]+): *([0-9]+)( kB)?$", re.M)


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` -> bytes by field (``kB`` values scaled; HugePages_* counts kept)."""
    fields = _MEMINFO_LINE.findall(text)
    if len(fields) != text.count("\n") or not text.endswith("\n"):
        return _parse_meminfo_lines(text)  # not only kernel-written lines: the line parser says what is wrong
    out = {key: int(value) * 1024 if kb else int(value) for key, value, kb in fields}
    if "MemTotal" not in out:
        raise ValueError("meminfo has no MemTotal")
    return out


#: the meminfo fields the collector exports (in kB as the kernel prints them)
MEMINFO_FIELDS = ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SReclaimable", "SwapTotal", "SwapFree")
_MEMINFO_FIELDS_RE = re.compile(rf"^({'|'.join(MEMINFO_FIELDS)}): *([0-9]+) kB$", re.M)


def meminfo_fields(text: str) -> dict[str, int]:
    """The MEMINFO_FIELDS of ``/proc/meminfo`` in bytes: one regex pass that builds only those (the file
    has ~55). When MemTotal is not among them, parse_meminfo says what is wrong (ValueError)."""
    out = {key: int(value) * 1024 for key, value in _MEMINFO_FIELDS_RE.findall(text)}
    if "MemTotal" not in out:
        return parse_meminfo(text)
    return out


def _parse_meminfo_lines(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or not fields or len(fields) > 2:
            raise ValueError(f"malformed meminfo line: {line!r}")
        try:
            value = int(fields[0])
        except ValueError:
            raise ValueError(f"malformed meminfo value: {line!r}") from None
        if len(fields) == 2:
            if fields[1] != "kB":
                raise ValueError(f"unknown meminfo unit {fields[1]!r} in {line!r}")
            value *= 1024
        out[key.strip()] = value
    if "MemTotal" not in out:
        raise ValueError("meminfo has no MemTotal")
    return out


def parse_keyed_counts(text: str) -> dict[str, int]:
    """``key value`` lines (``/proc/vmstat``, ``memory.events``, ``memory.oom_control``) -> ints."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"expected 'key value', got {line!r}")
        try:
            out[fields[0]] = int(fields[1])
        except ValueError:
            raise ValueError(f"value of {fields[0]!r} is not an integer: {fields[1]!r}") from None
    return out


def vmstat_oom_kills(text: str) -> int | None:
    """``oom_kill`` of ``/proc/vmstat``, None before Linux 4.13, without parsing its other ~170 lines.

    ValueError when the ``oom_kill`` line is not ``oom_kill <integer>``, or when there is none and
    the file is not ``key value`` lines.
    """
    # The kernel writes "oom_kill N\n" once; the last one wins, as in parse_vmstat's dict.
    start = ("\n" + text).rfind("\noom_kill ")
    if start < 0:
        return parse_keyed_counts(text).get("oom_kill")
    end = text.find("\n", start)
    fields = text[start: end if end >= 0 else len(text)].split()
    if len(fields) != 2:
        raise ValueError(f"expected 'key value', got {' '.join(fields)!r}")
    try:
        return int(fields[1])
    except ValueError:
        raise ValueError(f"value of 'oom_kill' is not an integer: {fields[1]!r}") from None


parse_vmstat = parse_keyed_counts


def parse_proc_stat_rss(data: bytes) -> tuple[str, int]:
    """``/proc/<pid>/stat`` -> (comm, resident pages). The comm may hold spaces and parentheses.

    Takes bytes: the scan of every process is the collector's main cost, and decoding only the
    comm halves it.
    """
    lpar, rpar = data.find(b"("), data.rfind(b")")
    if lpar < 0 or rpar < lpar:
        raise ValueError(f"malformed stat line: {data[:80]!r}")
    rest = data[rpar + 2 :].split(None, 22)
    if len(rest) < 22:
        raise ValueError(f"stat line has {len(rest) + 2} fields, expected >= 24")
    # rest[0] is field 3 (state); rss is field 24
    return data[lpar + 1 : rpar].decode("utf-8", "replace"), int(rest[21])


# --- cgroups --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    version: int  # 1 or 2
    root: Path  # root of the memory hierarchy


@dataclass(frozen=True, slots=True)
class CgroupMemory:
    usage_bytes: int
    limit_bytes: int | None  # None: unlimited
    oom_kills: int | None  # None: kernel too old to count them


def detect_memory_cgroup(sysfs: Path) -> CgroupLayout | None:
    """Where the memory controller is mounted: v1 ``memory/`` (also on hybrid hosts), else v2."""
    base = sysfs / "fs" / "cgroup"
    if (base / "memory" / "memory.usage_in_bytes").is_file():
        return CgroupLayout(1, base / "memory")
    try:
        controllers = (base / "cgroup.controllers").read_text(encoding="ascii").split()
    except OSError:
        return None
    return CgroupLayout(2, base) if "memory" in controllers else None


def resolve_unit_cgroup(layout: CgroupLayout, unit: str) -> Path | None:
    """The cgroup of a systemd unit: ``system.slice/<unit>`` or under any (nested) slice."""
    direct = layout.root / "system.slice" / unit
    if direct.is_dir():
        return direct
    name = glob.escape(unit)  # template units hold '@', and a unit name may hold '[' too
    for pattern in (f"*.slice/{name}", f"*.slice/*.slice/{name}", name):
        for cand in sorted(layout.root.glob(pattern)):
            if cand.is_dir():
                return cand
    return None


def read_cgroup_memory(layout: CgroupLayout, cgroup: Path) -> CgroupMemory:
    """Usage, limit and OOM kills of one cgroup; OSError/ValueError when its files are bad."""
    if layout.version == 2:
        usage = int((cgroup / "memory.current").read_text(encoding="ascii"))
        raw_max = (cgroup / "memory.max").read_text(encoding="ascii").strip()
        limit = None if raw_max == "max" else int(raw_max)
        events = parse_keyed_counts((cgroup / "memory.events").read_text(encoding="ascii"))
        return CgroupMemory(usage, limit, events.get("oom_kill"))
    usage = int((cgroup / "memory.usage_in_bytes").read_text(encoding="ascii"))
    raw_limit = int((cgroup / "memory.limit_in_bytes").read_text(encoding="ascii"))
    control = parse_keyed_counts((cgroup / "memory.oom_control").read_text(encoding="ascii"))
    return CgroupMemory(usage, None if raw_limit >= _V1_UNLIMITED else raw_limit, control.get("oom_kill"))


# --- processes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessGroup:
    comm: str
    unit: str
    resident_bytes: int
    processes: int


def top_processes(procfs: Path, n: int, page_size: int) -> list[ProcessGroup]:
    """The ``n`` largest processes by RSS, those sharing comm and unit summed into one group.

    One ``stat`` read per process; the cgroup is read only for the ``n`` winners. Processes
    that exit during the scan are skipped. OSError when ``procfs`` itself cannot be listed.
    """
    ranked: list[tuple[int, int, str]] = []
    dir_fd = os.open(procfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in os.listdir(dir_fd):
            if not name.isdigit():
                continue
            try:
                comm, pages = parse_proc_stat_rss(read_small_at(dir_fd, f"{name}/stat", 4096))
            except (OSError, ValueError):
                continue
            if pages > 0:  # kernel threads have no RSS
                ranked.append((pages, int(name), comm))
        ranked.sort(reverse=True)
        groups: dict[tuple[str, str], list[int]] = {}
        for pages, pid, comm in ranked[:n]:
            try:
                cgroup = read_small_at(dir_fd, f"{pid}/cgroup", 65536).decode()
                unit = unit_from_cgroup_path(parse_proc_cgroup(cgroup))
            except (OSError, UnicodeDecodeError):
                unit = ""
            acc = groups.setdefault((comm, unit), [0, 0])
            acc[0] += pages * page_size
            acc[1] += 1
    finally:
        os.close(dir_fd)
    return [ProcessGroup(c, u, b, k) for (c, u), (b, k) in groups.items()]


# --- the collector --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    unit: str
    cgroup: str  # configured cgroup path, "" for a unit


MEMORY_TOTAL_BYTES = MetricSpec("mevwatch_memory_total_bytes", "gauge", "Usable RAM (MemTotal)")

MEMORY_AVAILABLE_BYTES = MetricSpec(
    "mevwatch_memory_available_bytes", "gauge",
    "Memory available to new work without swapping (MemAvailable)",
)

MEMORY_FREE_BYTES = MetricSpec("mevwatch_memory_free_bytes", "gauge", "Unused RAM (MemFree)")

MEMORY_BUFFERS_BYTES = MetricSpec("mevwatch_memory_buffers_bytes", "gauge", "Block device buffers (Buffers)")

MEMORY_CACHED_BYTES = MetricSpec(
    "mevwatch_memory_cached_bytes", "gauge",
    "Page cache and reclaimable slab (Cached + SReclaimable), what `free` shows as cache",
)

MEMORY_USED_RATIO = MetricSpec(
    "mevwatch_memory_used_ratio", "gauge",
    "Share of RAM not available (1 - MemAvailable / MemTotal), 0..1",
)

MEMORY_SWAP_TOTAL_BYTES = MetricSpec("mevwatch_memory_swap_total_bytes", "gauge", "Swap space (SwapTotal)")

MEMORY_SWAP_FREE_BYTES = MetricSpec("mevwatch_memory_swap_free_bytes", "gauge", "Unused swap (SwapFree)")

MEMORY_PRESSURE_RATIO = MetricSpec(
    "mevwatch_memory_pressure_ratio", "gauge",
    "Share of wall time some (or all: full) tasks stalled on memory (PSI), averaged over the window, 0..1",
    ("kind", "window"),
)

MEMORY_PRESSURE_STALLED_SECONDS = MetricSpec(
    "mevwatch_memory_pressure_stalled_seconds", "counter",
    "Time some (or all: full) tasks stalled on memory (PSI total)",
    ("kind",),
)

MEMORY_OOM_KILLS = MetricSpec(
    "mevwatch_memory_oom_kills", "counter",
    "Processes killed by the kernel OOM killer since boot (/proc/vmstat oom_kill)",
)

MEMORY_TOP_PROCESS_RESIDENT_BYTES = MetricSpec(
    "mevwatch_memory_top_process_resident_bytes", "gauge",
    "Resident memory of the largest processes, summed over those sharing comm and unit",
    ("comm", "unit"),
)

MEMORY_TOP_PROCESSES = MetricSpec(
    "mevwatch_memory_top_processes", "gauge",
    "How many of the largest processes share this comm and unit",
    ("comm", "unit"),
)

MEMORY_SOURCE_STATUS = MetricSpec(
    "mevwatch_memory_source_status", "gauge",
    "State of each optional memory source (1 for the current state): ok, missing, disabled, unreadable, invalid",
    ("source", "status"),
)

MEMORY_CGROUP_USAGE_BYTES = MetricSpec(
    "mevwatch_memory_cgroup_usage_bytes", "gauge",
    "Memory charged to the watched cgroup",
    ("unit", "cgroup"),
)

MEMORY_CGROUP_LIMIT_BYTES = MetricSpec(
    "mevwatch_memory_cgroup_limit_bytes", "gauge",
    "Memory limit of the watched cgroup (absent when unlimited)",
    ("unit", "cgroup"),
)

MEMORY_CGROUP_USED_RATIO = MetricSpec(
    "mevwatch_memory_cgroup_used_ratio", "gauge",
    "Usage of the watched cgroup over its limit, 0..1 (absent when unlimited)",
    ("unit", "cgroup"),
)

MEMORY_CGROUP_OOM_KILLS = MetricSpec(
    "mevwatch_memory_cgroup_oom_kills", "counter",
    "Processes of the watched cgroup killed by the OOM killer (memory.events / memory.oom_control)",
    ("unit", "cgroup"),
)

MEMORY_SWAP_USED_RATIO = MetricSpec(
    "mevwatch_memory_swap_used_ratio", "gauge",
    "Share of swap in use, 0..1 (absent without swap)",
)

MEMORY_CGROUP_STATUS = MetricSpec(
    "mevwatch_memory_cgroup_status", "gauge",
    "State of the watched cgroup (1 for the current state): ok, missing, unreadable, invalid",
    ("unit", "cgroup", "status"),
)


@register
class MemoryCollector(PollCollector[MemoryOptions]):
    kind: ClassVar[str] = "memory"
    Options = MemoryOptions
    default_interval: ClassVar[float] = 15.0
    default_timeout: ClassVar[float] = 10.0
    runbook_section = "memory-high"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MEMORY_TOTAL_BYTES,
        MEMORY_AVAILABLE_BYTES,
        MEMORY_FREE_BYTES,
        MEMORY_BUFFERS_BYTES,
        MEMORY_CACHED_BYTES,
        MEMORY_USED_RATIO,
        MEMORY_SWAP_TOTAL_BYTES,
        MEMORY_SWAP_FREE_BYTES,
        MEMORY_PRESSURE_RATIO,
        MEMORY_PRESSURE_STALLED_SECONDS,
        MEMORY_OOM_KILLS,
        MEMORY_TOP_PROCESS_RESIDENT_BYTES,
        MEMORY_TOP_PROCESSES,
        MEMORY_SOURCE_STATUS,
        MEMORY_CGROUP_USAGE_BYTES,
        MEMORY_CGROUP_LIMIT_BYTES,
        MEMORY_CGROUP_USED_RATIO,
        MEMORY_CGROUP_OOM_KILLS,
        MEMORY_SWAP_USED_RATIO,
        MEMORY_CGROUP_STATUS,
    )

    def __init__(self, ctx: CollectorContext, options: MemoryOptions) -> None:
        super().__init__(ctx, options)
        # Path strings built once: pathlib joins on every run cost more than the reads.
        self._meminfo_path = os.fspath(ctx.paths.proc("meminfo"))
        self._psi = PressureSource(
            os.fspath(ctx.paths.proc("pressure", "memory")), MEMORY_PRESSURE_RATIO, MEMORY_PRESSURE_STALLED_SECONDS
        )
        self._vmstat_path = os.fspath(ctx.paths.proc("vmstat"))
        self._targets = [_Target(u, "") for u in options.units] + [_Target(_unit_of(c), c) for c in options.cgroups]
        self._page_size = os.sysconf("SC_PAGE_SIZE")

    async def collect(self) -> Families:
        paths = self.ctx.paths
        meminfo_path = self._meminfo_path
        text, status, detail = read_text_status(meminfo_path)
        if text is None:
            raise CollectorError(f"meminfo_{status}", detail)
        try:
            mem = meminfo_fields(text)
        except ValueError as exc:
            raise CollectorError("meminfo_invalid", f"{meminfo_path}: {exc}") from None
        families: list[Metric] = _meminfo_families(mem)
        sources: list[tuple[Sequence[str], str]] = []

        sources.append((["pressure"], self._pressure(families)))
        sources.append((["vmstat"], self._vmstat(families)))
        targets = self._targets
        if targets:
            layout = detect_memory_cgroup(paths.sysfs)
            sources.append((["cgroup"], "ok" if layout is not None else "missing"))
            families.extend(_cgroup_families(layout, targets))
        if self.options.top_processes > 0:
            try:
                groups = await self.ctx.run_blocking(
                    top_processes, paths.procfs, self.options.top_processes, self._page_size
                )
                sources.append((["processes"], "ok"))
                families.extend(_process_families(groups))
            except OSError as exc:
                self.ctx.log.debug("processes_unreadable", error=str(exc))
                sources.append((["processes"], "unreadable"))
        families.append(
            enum_family(MEMORY_SOURCE_STATUS, sources)
        )
        # A family without samples (no cgroup limit set, no swap) is left out rather than rendered empty.
        return [f for f in families if f.samples]

    def _pressure(self, families: list[Metric]) -> str:
        status, detail = self._psi.read(families)
        if status != "ok":
            self.ctx.log.debug("pressure_unavailable", status=status, detail=detail)
        return status

    def _vmstat(self, families: list[Metric]) -> str:
        text, status, _ = read_text_status(self._vmstat_path)
        if text is None:
            return status
        try:
            oom_kills = vmstat_oom_kills(text)
        except ValueError:
            return "invalid"
        if oom_kills is None:  # before Linux 4.13
            return "missing"
        families.append(
            MEMORY_OOM_KILLS.counter(float(oom_kills))
        )
        return "ok"


def _unit_of(cgroup: str) -> str:
    unit = unit_from_cgroup_path(cgroup)
    return "" if unit.startswith("/") else unit


def _meminfo_families(mem: dict[str, int]) -> list[Metric]:
    total = mem["MemTotal"]
    # Kernels before 3.14 lack MemAvailable; free + page cache is the estimate `free` used then.
    available = mem.get("MemAvailable", mem.get("MemFree", 0) + mem.get("Buffers", 0) + mem.get("Cached", 0))
    out: list[Metric] = [
        MEMORY_TOTAL_BYTES.gauge(total),
        MEMORY_AVAILABLE_BYTES.gauge(available),
        MEMORY_FREE_BYTES.gauge(mem.get("MemFree", 0)),
        MEMORY_BUFFERS_BYTES.gauge(mem.get("Buffers", 0)),
        MEMORY_CACHED_BYTES.gauge(mem.get("Cached", 0) + mem.get("SReclaimable", 0)),
        MEMORY_USED_RATIO.gauge((1.0 - available / total) if total > 0 else 0.0),
        MEMORY_SWAP_TOTAL_BYTES.gauge(mem.get("SwapTotal", 0)),
        MEMORY_SWAP_FREE_BYTES.gauge(mem.get("SwapFree", 0)),
    ]
    swap_total = mem.get("SwapTotal", 0)
    if swap_total > 0:
        out.append(
            MEMORY_SWAP_USED_RATIO.gauge(1.0 - mem.get("SwapFree", 0) / swap_total)
        )
    return out


def _cgroup_families(layout: CgroupLayout | None, targets: Sequence[_Target]) -> list[Metric]:
    usage = MEMORY_CGROUP_USAGE_BYTES.gauge()
    limit = MEMORY_CGROUP_LIMIT_BYTES.gauge()
    ratio = MEMORY_CGROUP_USED_RATIO.gauge()
    kills = MEMORY_CGROUP_OOM_KILLS.counter()
    rows: list[tuple[Sequence[str], str]] = []
    for t in targets:
        lv = [t.unit, t.cgroup]
        if layout is None:
            rows.append((lv, "missing"))
            continue
        path = resolve_unit_cgroup(layout, t.unit) if not t.cgroup else layout.root / t.cgroup.lstrip("/")
        if path is None or not path.is_dir():
            rows.append((lv, "missing"))
            continue
        try:
            m = read_cgroup_memory(layout, path)
        except FileNotFoundError:
            rows.append((lv, "missing"))
            continue
        except OSError:
            rows.append((lv, "unreadable"))
            continue
        except ValueError:
            rows.append((lv, "invalid"))
            continue
        rows.append((lv, "ok"))
        usage.add_metric(lv, float(m.usage_bytes))
        if m.limit_bytes is not None:
            limit.add_metric(lv, float(m.limit_bytes))
            if m.limit_bytes > 0:
                ratio.add_metric(lv, m.usage_bytes / m.limit_bytes)
        if m.oom_kills is not None:
            kills.add_metric(lv, float(m.oom_kills))
    status = enum_family(
        MEMORY_CGROUP_STATUS,
        rows,
        states=("ok", "missing", "unreadable", "invalid"),
    )
    return [usage, limit, ratio, kills, status]


def _process_families(groups: Sequence[ProcessGroup]) -> list[Metric]:
    rss = MEMORY_TOP_PROCESS_RESIDENT_BYTES.gauge()
    count = MEMORY_TOP_PROCESSES.gauge()
    for g in sorted(groups, key=lambda g: -g.resident_bytes):
        rss.add_metric([g.comm, g.unit], float(g.resident_bytes))
        count.add_metric([g.comm, g.unit], float(g.processes))
    return [rss, count]
