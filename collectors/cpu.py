"""CPU: frequency governor and clocks, thermal throttling, load, and steal/iowait shares of CPU time.

Serves the runbook's "High Latency in Opportunity Detection" (``cpupower frequency-info``, MHz).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

from mevwatch.collectors._host import (
    PressureSource,
    enum_family,
    read_text,
    read_text_status,
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
    "CPU_MODES",
    "FREQUENCY_STATES",
    "CpuCollector",
    "CpuFreq",
    "CpuOptions",
    "ProcStat",
    "Throttle",
    "cpu_time_ratios",
    "cpuinfo_clock_is_fixed",
    "frequency_status",
    "list_cpus",
    "parse_cpuinfo",
    "parse_loadavg",
    "parse_proc_stat",
    "read_cpufreq",
    "read_throttle",
]

#: the /proc/stat columns that add up to wall time (guest time is already inside user and nice)
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
#: why frequency series are present or absent
FREQUENCY_STATES = ("ok", "virtual_machine", "no_driver", "unreadable")
#: seconds the per-CPU sysfs layout is kept before it is looked up again (sooner when the online CPUs change)
LAYOUT_TTL = 300.0
T = TypeVar("T")
_CPU_DIR_RE = re.compile(r"^cpu(\d+)$")


class CpuOptions(CollectorOptions):
    pass


# --- pure parsers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The aggregate ``cpu`` line of /proc/stat in clock ticks by mode, plus runnable/blocked tasks."""

    ticks: dict[str, int]
    procs_running: int | None = None
    procs_blocked: int | None = None
    online: tuple[int, ...] = ()  # the CPUs with a ``cpuN`` line: the kernel lists the online ones


# The lines of /proc/stat that matter, in one pass: the long ``intr`` and ``softirq`` lines are never split.
_STAT_RE = re.compile(r"^(cpu\d*|procs_running|procs_blocked)[ \t]+(.*)$", re.M)


def parse_proc_stat(text: str) -> ProcStat:
    """``/proc/stat`` -> aggregate ticks by mode (older kernels lack steal: 0), task counts, online CPUs."""
    ticks: dict[str, int] | None = None
    running = blocked = None
    online: list[int] = []
    for key, rest in _STAT_RE.findall(text):
        if key == "cpu":
            fields = rest.split()
            try:
                values = [int(v) for v in fields[: len(CPU_MODES)]]
            except ValueError:
                raise ValueError(f"non-numeric cpu line in /proc/stat: {key} {rest!r}") from None
            if len(values) < 4:
                raise ValueError(f"cpu line in /proc/stat has {len(values)} columns, expected >= 4")
            values += [0] * (len(CPU_MODES) - len(values))
            ticks = dict(zip(CPU_MODES, values, strict=True))
        elif key[0] == "c":
            online.append(int(key[3:]))
        elif rest.isdigit():
            if key == "procs_running":
                running = int(rest)
            else:
                blocked = int(rest)
    if ticks is None:
        raise ValueError("/proc/stat has no aggregate 'cpu' line")
    return ProcStat(ticks, running, blocked, tuple(online))


def cpu_time_ratios(prev: ProcStat, cur: ProcStat) -> dict[str, float] | None:
    """Share of CPU time per mode between two samples, 0..1; None when no time passed.

    iowait can go backwards on some kernels (it is an estimate per idle CPU); negative
    deltas count as 0 instead of producing a negative share.
    """
    deltas = {m: max(cur.ticks[m] - prev.ticks[m], 0) for m in CPU_MODES}
    total = sum(deltas.values())
    if total <= 0:
        return None
    return {m: d / total for m, d in deltas.items()}


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """``/proc/loadavg`` -> the 1, 5 and 15 minute load averages."""
    fields = text.split()
    if len(fields) < 3:
        raise ValueError(f"malformed /proc/loadavg: {text.strip()!r}")
    try:
        return float(fields[0]), float(fields[1]), float(fields[2])
    except ValueError:
        raise ValueError(f"malformed /proc/loadavg: {text.strip()!r}") from None


_CPUINFO_RE = re.compile(r"^[ \t]*(processor|cpu MHz|flags)[ \t]*:(.*)$", re.M)


def parse_cpuinfo(text: str) -> tuple[dict[int, float], bool]:
    """``/proc/cpuinfo`` -> (clock in Hz by processor where the kernel prints ``cpu MHz``, is a VM).

    A VM shows the ``hypervisor`` CPU flag (x86); other architectures print no MHz at all.
    """
    mhz: dict[int, float] = {}
    hypervisor = False
    processor: int | None = None
    # Only three of the ~25 lines per CPU matter: one regex pass finds them.
    for key, value in _CPUINFO_RE.findall(text):
        value = value.strip()
        if key == "processor":
            processor = int(value) if value.isdigit() else None
        elif key == "cpu MHz":
            if processor is not None:
                try:
                    mhz[processor] = float(value) * 1e6
                except ValueError:
                    continue
        elif not hypervisor and "hypervisor" in value.split():
            hypervisor = True
    return mhz, hypervisor


_APERFMPERF_RE = re.compile(r"^flags[ \t]*:.*\baperfmperf\b", re.M)


def cpuinfo_clock_is_fixed(text: str, mhz: dict[int, float]) -> bool:
    """Can the ``cpu MHz`` values of this /proc/cpuinfo change while the system runs?

    For a CPU without a cpufreq policy, x86 kernels print a clock measured from the APERF/MPERF
    counters when the CPU has them (flag ``aperfmperf``), else the fixed TSC clock (``cpu_khz``),
    which is what a VM without that flag shows. Other architectures print no clock at all.
    Fixed values are read once per layout instead of generating this long file on every run.
    """
    return not mhz or _APERFMPERF_RE.search(text) is None


# --- sysfs readers (fixture trees in tests) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuFreq:
    """cpufreq of one CPU; frequencies in Hz, None where the driver does not expose them."""

    governor: str | None = None
    available_governors: tuple[str, ...] = ()
    current_hz: float | None = None
    min_hz: float | None = None
    max_hz: float | None = None
    scaling_min_hz: float | None = None
    scaling_max_hz: float | None = None


@dataclass(frozen=True, slots=True)
class Throttle:
    """Thermal throttle events and time of one CPU's core and of its package."""

    package: str
    core_count: int | None = None
    core_seconds: float | None = None
    package_count: int | None = None
    package_seconds: float | None = None
    extra: dict[str, int] = field(default_factory=dict)


def list_cpus(sysfs: str | os.PathLike[str]) -> list[int]:
    """Numbers of the CPUs sysfs knows (``cpu0`` ... ``cpuN``), sorted."""
    try:
        names = os.listdir(f"{os.fspath(sysfs)}/devices/system/cpu")
    except OSError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := _CPU_DIR_RE.match(n)))


def _read_opt(path: str | None) -> str | None:
    """The stripped text of an optional file; None when it is absent (``path`` None) or unreadable."""
    if path is None:
        return None
    try:
        return read_text(path).strip()
    except OSError:
        return None


def _khz(path: str | None) -> float | None:
    raw = _read_opt(path)
    if raw is None:
        return None
    try:
        return int(raw) * 1000.0
    except ValueError:
        return None


def _int_opt(path: str | None) -> int | None:
    raw = _read_opt(path)
    return int(raw) if raw is not None and raw.isdigit() else None


def cpufreq_dir(sysfs: str, cpu: int) -> str | None:
    """The cpufreq directory of ``cpu`` with a trailing ``/``; None when the kernel has none (VM, no driver).

    PermissionError when it exists but cannot be listed.
    """
    d = f"{sysfs}/devices/system/cpu/cpu{cpu}/cpufreq"
    if not os.path.isdir(d):
        return None
    if not os.access(d, os.R_OK | os.X_OK):
        raise PermissionError(f"{d} is not readable")
    return d + "/"


def _listing(d: str) -> frozenset[str]:
    try:
        return frozenset(os.listdir(d))
    except OSError:
        return frozenset()


def read_cpufreq(sysfs: Path, cpu: int) -> CpuFreq | None:
    """cpufreq of ``cpu``, or None when the kernel has no cpufreq for it (VM, no driver)."""
    d = cpufreq_dir(os.fspath(sysfs), cpu)
    if d is None:
        return None
    static = _CpuFreqStatic.read(d, _listing(d))
    return static.current()


@dataclass(frozen=True, slots=True)
class _CpuFreqStatic:
    """What one CPU's cpufreq directory holds: which files exist, and the values fixed by the hardware.

    ``cpuinfo_{min,max}_freq`` are the CPU's limits and ``scaling_available_governors`` the governors
    built into or loaded in the kernel: read when the layout is (re)built, not on every run.
    """

    governor: str | None
    cur: str | None  # the file holding the current clock: scaling_cur_freq, else cpuinfo_cur_freq
    cur_fallback: str | None
    scaling_min: str | None
    scaling_max: str | None
    available_governors: tuple[str, ...]
    min_hz: float | None
    max_hz: float | None

    @classmethod
    def read(cls, d: str, files: frozenset[str]) -> _CpuFreqStatic:
        def path(name: str) -> str | None:
            return d + name if name in files else None

        return cls(
            governor=path("scaling_governor"),
            cur=path("scaling_cur_freq"),
            cur_fallback=path("cpuinfo_cur_freq"),
            scaling_min=path("scaling_min_freq"),
            scaling_max=path("scaling_max_freq"),
            available_governors=tuple((_read_opt(path("scaling_available_governors")) or "").split()),
            min_hz=_khz(path("cpuinfo_min_freq")),
            max_hz=_khz(path("cpuinfo_max_freq")),
        )

    def current(self) -> CpuFreq:
        """The values that change at run time, read now."""
        cur = _khz(self.cur)
        if not cur:
            cur = _khz(self.cur_fallback)
        return CpuFreq(
            governor=_read_opt(self.governor),
            available_governors=self.available_governors,
            current_hz=cur,
            min_hz=self.min_hz,
            max_hz=self.max_hz,
            scaling_min_hz=_khz(self.scaling_min),
            scaling_max_hz=_khz(self.scaling_max),
        )


@dataclass(frozen=True, slots=True)
class _ThrottleFiles:
    """The thermal_throttle files of one CPU that exist, and its (fixed) physical package."""

    package: str
    core_count: str | None
    core_ms: str | None
    package_count: str | None
    package_ms: str | None

    @classmethod
    def find(cls, cpu_dir: str) -> _ThrottleFiles | None:
        d = cpu_dir + "/thermal_throttle/"
        if not os.path.isdir(d):
            return None
        files = _listing(d)

        def path(name: str) -> str | None:
            return d + name if name in files else None

        return cls(
            package=_read_opt(cpu_dir + "/topology/physical_package_id") or "0",
            core_count=path("core_throttle_count"),
            core_ms=path("core_throttle_total_time_ms"),
            package_count=path("package_throttle_count"),
            package_ms=path("package_throttle_total_time_ms"),
        )

    def read(self, with_package: bool = True) -> Throttle:
        core_ms = _int_opt(self.core_ms)
        pkg_ms = _int_opt(self.package_ms) if with_package else None
        pkg_count = _int_opt(self.package_count) if with_package else None
        return Throttle(
            package=self.package,
            core_count=_int_opt(self.core_count),
            core_seconds=core_ms / 1000.0 if core_ms is not None else None,
            package_count=pkg_count,
            package_seconds=pkg_ms / 1000.0 if pkg_ms is not None else None,
        )


def read_throttle(sysfs: Path, cpu: int) -> Throttle | None:
    """Thermal throttle counters of ``cpu`` (x86 ``thermal_throttle/``), None when absent."""
    files = _ThrottleFiles.find(f"{os.fspath(sysfs)}/devices/system/cpu/cpu{cpu}")
    return files.read() if files is not None else None


@dataclass(frozen=True, slots=True)
class _CpuFiles:
    cpu: int
    label: str
    cpufreq: str | None  # directory, with its trailing /
    cpufreq_static: _CpuFreqStatic | None
    cpufreq_denied: bool
    throttle: _ThrottleFiles | None


@dataclass(frozen=True, slots=True)
class _Layout:
    """Per-CPU sysfs files found by one look at the tree, kept until the online CPUs change or it expires."""

    cpus: tuple[_CpuFiles, ...]
    hypervisor_type: bool  # /sys/hypervisor/type exists (a Xen guest, even without the CPU flag)
    online: tuple[int, ...]  # the online CPUs (from /proc/stat) when the layout was built
    expires: float  # time.monotonic() after which it is built again

    @classmethod
    def discover(cls, sysfs: str, online: tuple[int, ...], now: float) -> _Layout:
        rows = []
        for cpu in list_cpus(sysfs):
            try:
                d = cpufreq_dir(sysfs, cpu)
                denied = False
            except PermissionError:
                d, denied = None, True
            rows.append(_CpuFiles(
                cpu=cpu,
                label=str(cpu),
                cpufreq=d,
                cpufreq_static=_CpuFreqStatic.read(d, _listing(d)) if d is not None else None,
                cpufreq_denied=denied,
                throttle=_ThrottleFiles.find(f"{sysfs}/devices/system/cpu/cpu{cpu}"),
            ))
        return cls(tuple(rows), os.path.isfile(f"{sysfs}/hypervisor/type"), online, now + LAYOUT_TTL)


def frequency_status(cpufreq_present: bool, unreadable: bool, virtual: bool) -> str:
    if unreadable:
        return "unreadable"
    if cpufreq_present:
        return "ok"
    return "virtual_machine" if virtual else "no_driver"


# --- the collector --------------------------------------------------------------------------


CPU_LOAD_AVERAGE = MetricSpec(
    "mevwatch_cpu_load_average", "gauge",
    "Runnable and uninterruptible tasks averaged over the window",
    ("window",),
)

CPU_PROCS_RUNNING = MetricSpec("mevwatch_cpu_procs_running", "gauge", "Tasks runnable right now (/proc/stat)")

CPU_PROCS_BLOCKED = MetricSpec("mevwatch_cpu_procs_blocked", "gauge", "Tasks blocked on I/O right now (/proc/stat)")

CPU_SECONDS = MetricSpec("mevwatch_cpu_seconds", "counter", "CPU time of all CPUs by mode (/proc/stat)", ("mode",))

CPU_TIME_RATIO = MetricSpec(
    "mevwatch_cpu_time_ratio", "gauge",
    "Share of CPU time per mode since the previous run, 0..1 (steal: taken by the hypervisor; iowait: idle waiting "
    "for I/O)",
    ("mode",),
)

CPU_LOGICAL_PROCESSORS = MetricSpec(
    "mevwatch_cpu_logical_processors", "gauge",
    "Logical CPUs the kernel knows (to read load per CPU)",
)

CPU_LOAD_PER_CPU = MetricSpec(
    "mevwatch_cpu_load_per_cpu", "gauge",
    "Load average over the window divided by the logical CPUs (above 1: tasks wait for a CPU)",
    ("window",),
)

CPU_FREQUENCY_HERTZ = MetricSpec(
    "mevwatch_cpu_frequency_hertz", "gauge",
    "Current clock of the CPU (cpufreq, else /proc/cpuinfo 'cpu MHz')",
    ("cpu",),
)

CPU_FREQUENCY_SCALING_STATUS = MetricSpec(
    "mevwatch_cpu_frequency_scaling_status", "gauge",
    "Why cpufreq series are present or absent (1 for the current state): ok, virtual_machine (a VM has no cpufreq), "
    "no_driver (no cpufreq driver loaded), unreadable",
    ("status",),
)

CPU_PRESSURE_RATIO = MetricSpec(
    "mevwatch_cpu_pressure_ratio", "gauge",
    "Share of wall time some (or all: full) tasks stalled on CPU (PSI), averaged over the window, 0..1",
    ("kind", "window"),
)

CPU_PRESSURE_STALLED_SECONDS = MetricSpec(
    "mevwatch_cpu_pressure_stalled_seconds", "counter",
    "Time some (or all: full) tasks stalled on CPU (PSI total)",
    ("kind",),
)

CPU_SOURCE_STATUS = MetricSpec(
    "mevwatch_cpu_source_status", "gauge",
    "State of each optional CPU source (1 for the current state): ok, missing, disabled, unreadable, invalid",
    ("source", "status"),
)

CPU_FREQUENCY_MIN_HERTZ = MetricSpec(
    "mevwatch_cpu_frequency_min_hertz", "gauge",
    "Lowest clock the CPU supports",
    ("cpu",),
)

CPU_FREQUENCY_MAX_HERTZ = MetricSpec(
    "mevwatch_cpu_frequency_max_hertz", "gauge",
    "Highest clock the CPU supports",
    ("cpu",),
)

CPU_SCALING_FREQUENCY_MIN_HERTZ = MetricSpec(
    "mevwatch_cpu_scaling_frequency_min_hertz", "gauge",
    "Lowest clock the cpufreq policy allows",
    ("cpu",),
)

CPU_SCALING_FREQUENCY_MAX_HERTZ = MetricSpec(
    "mevwatch_cpu_scaling_frequency_max_hertz", "gauge",
    "Highest clock the cpufreq policy allows (below the hardware maximum: capped)",
    ("cpu",),
)

CPU_FREQUENCY_GOVERNOR = MetricSpec(
    "mevwatch_cpu_frequency_governor", "gauge",
    "cpufreq governor of the CPU: 1 for the active one, 0 for every other available one",
    ("cpu", "governor"),
)

CPU_CORE_THROTTLES = MetricSpec(
    "mevwatch_cpu_core_throttles", "counter",
    "Times the core was thermally throttled",
    ("cpu",),
)

CPU_CORE_THROTTLED_SECONDS = MetricSpec(
    "mevwatch_cpu_core_throttled_seconds", "counter",
    "Time the core spent thermally throttled",
    ("cpu",),
)

CPU_PACKAGE_THROTTLES = MetricSpec(
    "mevwatch_cpu_package_throttles", "counter",
    "Times the package was thermally throttled",
    ("package",),
)

CPU_PACKAGE_THROTTLED_SECONDS = MetricSpec(
    "mevwatch_cpu_package_throttled_seconds", "counter",
    "Time the package spent thermally throttled",
    ("package",),
)


@register
class CpuCollector(PollCollector[CpuOptions]):
    kind: ClassVar[str] = "cpu"
    Options = CpuOptions
    default_interval: ClassVar[float] = 15.0
    default_timeout: ClassVar[float] = 5.0
    runbook_section = "cpu-governor"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        CPU_LOAD_AVERAGE,
        CPU_PROCS_RUNNING,
        CPU_PROCS_BLOCKED,
        CPU_SECONDS,
        CPU_TIME_RATIO,
        CPU_LOGICAL_PROCESSORS,
        CPU_LOAD_PER_CPU,
        CPU_FREQUENCY_HERTZ,
        CPU_FREQUENCY_SCALING_STATUS,
        CPU_PRESSURE_RATIO,
        CPU_PRESSURE_STALLED_SECONDS,
        CPU_SOURCE_STATUS,
        CPU_FREQUENCY_MIN_HERTZ,
        CPU_FREQUENCY_MAX_HERTZ,
        CPU_SCALING_FREQUENCY_MIN_HERTZ,
        CPU_SCALING_FREQUENCY_MAX_HERTZ,
        CPU_FREQUENCY_GOVERNOR,
        CPU_CORE_THROTTLES,
        CPU_CORE_THROTTLED_SECONDS,
        CPU_PACKAGE_THROTTLES,
        CPU_PACKAGE_THROTTLED_SECONDS,
    )

    def __init__(self, ctx: CollectorContext, options: CpuOptions) -> None:
        super().__init__(ctx, options)
        self._prev: ProcStat | None = None
        paths = ctx.paths
        # Path strings built once: pathlib joins on every run cost more than the reads.
        self._stat_path = os.fspath(paths.proc("stat"))
        self._loadavg_path = os.fspath(paths.proc("loadavg"))
        self._cpuinfo_path = os.fspath(paths.proc("cpuinfo"))
        self._psi = PressureSource(
            os.fspath(paths.proc("pressure", "cpu")), CPU_PRESSURE_RATIO, CPU_PRESSURE_STALLED_SECONDS
        )
        self._sysfs = os.fspath(paths.sysfs)
        self._layout: _Layout | None = None
        # the layout, /proc/cpuinfo's clocks and its VM flag, when those clocks cannot change
        # (cpuinfo_clock_is_fixed): read once per layout, not on every run
        self._fixed_cpuinfo: tuple[_Layout, dict[int, float], bool] | None = None
        self._clk_tck = os.sysconf("SC_CLK_TCK")

    def _current_layout(self, online: tuple[int, ...]) -> _Layout:
        """The per-CPU sysfs layout, looked up again when the online CPUs changed or it expired."""
        now = time.monotonic()
        layout = self._layout
        if layout is None or layout.online != online or now >= layout.expires:
            layout = self._layout = _Layout.discover(self._sysfs, online, now)
        return layout

    async def collect(self) -> Families:
        stat = self._core_file(self._stat_path, "stat", parse_proc_stat)
        load = self._core_file(self._loadavg_path, "loadavg", parse_loadavg)
        families: list[Metric] = []

        load_fam = CPU_LOAD_AVERAGE.gauge()
        for window, value in zip(("1m", "5m", "15m"), load, strict=True):
            load_fam.add_metric([window], value)
        families.append(load_fam)
        if stat.procs_running is not None:
            families.append(CPU_PROCS_RUNNING.gauge(stat.procs_running))
        if stat.procs_blocked is not None:
            families.append(CPU_PROCS_BLOCKED.gauge(stat.procs_blocked))
        families.extend(self._time_families(stat))

        layout = self._current_layout(stat.online)
        cpus = len(layout.cpus) or os.cpu_count() or 0
        families.append(CPU_LOGICAL_PROCESSORS.gauge(cpus))
        if cpus:
            per_cpu = CPU_LOAD_PER_CPU.gauge()
            for window, value in zip(("1m", "5m", "15m"), load, strict=True):
                per_cpu.add_metric([window], value / cpus)
            families.append(per_cpu)
        families.extend(self._frequency_families(layout))
        sources: list[tuple[Sequence[str], str]] = [
            (["thermal_throttle"], self._throttle_families(layout, families)),
            (["pressure"], self._pressure(families)),
        ]
        families.append(enum_family(CPU_SOURCE_STATUS, sources))
        # A family without samples (no limit set, no cpufreq) is left out rather than rendered empty.
        return [f for f in families if f.samples]

    def _core_file(self, path: str, name: str, parse: Callable[[str], T]) -> T:
        text, status, detail = read_text_status(path)
        if text is None:
            raise CollectorError(f"{name}_{status}", detail)
        try:
            return parse(text)
        except ValueError as exc:
            raise CollectorError(f"{name}_invalid", f"{path}: {exc}") from None

    def _time_families(self, stat: ProcStat) -> list[Metric]:
        hz = self._clk_tck
        seconds = CPU_SECONDS.counter()
        for mode in CPU_MODES:
            seconds.add_metric([mode], stat.ticks[mode] / hz)
        out: list[Metric] = [seconds]
        prev, self._prev = self._prev, stat
        ratios = cpu_time_ratios(prev, stat) if prev is not None else None
        if ratios is not None:
            # The first run has no previous sample: a share since boot would hide a current steal burst.
            ratio = CPU_TIME_RATIO.gauge()
            for mode in CPU_MODES:
                ratio.add_metric([mode], ratios[mode])
            out.append(ratio)
        return out

    def _frequency_families(self, layout: _Layout) -> list[Metric]:
        freqs: dict[int, CpuFreq] = {}
        unreadable = False
        for c in layout.cpus:
            if c.cpufreq_denied:
                unreadable = True
            elif c.cpufreq is not None and c.cpufreq_static is not None:
                freqs[c.cpu] = c.cpufreq_static.current()
        # /proc/cpuinfo is long and costly to generate: read only when a clock or the VM flag is needed.
        need_clock = not layout.cpus or any(
            (f := freqs.get(c.cpu)) is None or f.current_hz is None for c in layout.cpus
        )
        need_virtual = not freqs and not unreadable and not layout.hypervisor_type
        cpuinfo_hz: dict[int, float] = {}
        virtual = layout.hypervisor_type
        if need_clock or need_virtual:
            info = self._cpuinfo(layout)
            if info is not None:
                cpuinfo_hz, flag = info
                virtual = virtual or flag
        status = frequency_status(bool(freqs), unreadable, virtual)

        current = CPU_FREQUENCY_HERTZ.gauge()
        hw_min = CPU_FREQUENCY_MIN_HERTZ.gauge()
        hw_max = CPU_FREQUENCY_MAX_HERTZ.gauge()
        sc_min = CPU_SCALING_FREQUENCY_MIN_HERTZ.gauge()
        sc_max = CPU_SCALING_FREQUENCY_MAX_HERTZ.gauge()
        governor = CPU_FREQUENCY_GOVERNOR.gauge()
        for c in layout.cpus:
            lv = [c.label]
            f = freqs.get(c.cpu)
            cur = f.current_hz if f is not None and f.current_hz is not None else cpuinfo_hz.get(c.cpu)
            if cur is not None:
                current.add_metric(lv, cur)
            if f is None:
                continue
            for fam, value in ((hw_min, f.min_hz), (hw_max, f.max_hz), (sc_min, f.scaling_min_hz),
                               (sc_max, f.scaling_max_hz)):
                if value is not None:
                    fam.add_metric(lv, value)
            names = list(f.available_governors)
            if f.governor is not None and f.governor not in names:
                names.append(f.governor)
            for name in names:
                governor.add_metric([c.label, name], 1.0 if name == f.governor else 0.0)
        if not layout.cpus:  # sysfs without cpu dirs: /proc/cpuinfo is all there is
            for cpu, hz in sorted(cpuinfo_hz.items()):
                current.add_metric([str(cpu)], hz)
        scaling_status = enum_family(
            CPU_FREQUENCY_SCALING_STATUS,
            [([], status)],
            states=FREQUENCY_STATES,
        )
        return [current, hw_min, hw_max, sc_min, sc_max, governor, scaling_status]

    def _cpuinfo(self, layout: _Layout) -> tuple[dict[int, float], bool] | None:
        """/proc/cpuinfo's (clocks, VM flag); None when unreadable. Fixed clocks (cpuinfo_clock_is_fixed)
        are kept with the layout instead of read again on every run."""
        kept = self._fixed_cpuinfo
        if kept is not None and kept[0] is layout:
            return kept[1], kept[2]
        text, _, _ = read_text_status(self._cpuinfo_path)
        if text is None:
            return None
        mhz, flag = parse_cpuinfo(text)
        if cpuinfo_clock_is_fixed(text, mhz):
            self._fixed_cpuinfo = (layout, mhz, flag)
        return mhz, flag

    def _throttle_families(self, layout: _Layout, families: list[Metric]) -> str:
        core = CPU_CORE_THROTTLES.counter()
        core_s = CPU_CORE_THROTTLED_SECONDS.counter()
        pkg = CPU_PACKAGE_THROTTLES.counter()
        pkg_s = CPU_PACKAGE_THROTTLED_SECONDS.counter()
        seen_packages: set[str] = set()
        found = False
        for c in layout.cpus:
            if c.throttle is None:
                continue
            found = True
            # every CPU of a package repeats its package counters: read them from the first one only
            first_of_package = c.throttle.package not in seen_packages
            t = c.throttle.read(with_package=first_of_package)
            if t.core_count is not None:
                core.add_metric([c.label], float(t.core_count))
            if t.core_seconds is not None:
                core_s.add_metric([c.label], t.core_seconds)
            if first_of_package:
                seen_packages.add(t.package)
                if t.package_count is not None:
                    pkg.add_metric([t.package], float(t.package_count))
                if t.package_seconds is not None:
                    pkg_s.add_metric([t.package], t.package_seconds)
        if not found:
            return "missing"
        families.extend([core, core_s, pkg, pkg_s])
        return "ok"

    def _pressure(self, families: list[Metric]) -> str:
        return self._psi.read(families)[0]
