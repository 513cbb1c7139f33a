"""Parsers shared by the host collectors: PSI pressure files and cgroup paths to systemd units."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mevwatch.families import GaugeMetricFamily, Metric, MetricSpec

__all__ = [
    "READ_STATES",
    "UNIT_SUFFIXES",
    "Pressure",
    "PressureSource",
    "ReadStatus",
    "enum_family",
    "parse_pressure",
    "parse_proc_cgroup",
    "pressure_families",
    "read_bytes",
    "read_fd",
    "read_small_at",
    "read_text",
    "read_text_status",
    "unit_from_cgroup_path",
]

#: systemd unit types whose cgroup holds processes (``system.slice/nginx.service``)
UNIT_SUFFIXES = (".service", ".scope", ".slice", ".socket", ".mount", ".swap")
_PROCESS_UNITS = tuple(s for s in UNIT_SUFFIXES if s != ".slice")

#: state of an optional kernel file: one of READ_STATES
ReadStatus = str
READ_STATES = ("ok", "missing", "disabled", "unreadable", "invalid")
_PRESSURE_RE = re.compile(
    r"^(some|full) avg10=(\d+(?:\.\d+)?) avg60=(\d+(?:\.\d+)?) avg300=(\d+(?:\.\d+)?) total=(\d+)$"
)


@dataclass(frozen=True, slots=True)
class Pressure:
    """One line of a PSI file: share of wall time stalled, as ratios 0..1, and total stall time."""

    avg10: float
    avg60: float
    avg300: float
    total_seconds: float


def parse_pressure(text: str) -> dict[str, Pressure]:
    """``/proc/pressure/{memory,cpu,io}`` -> ``{"some": Pressure, "full": Pressure}``.

    The kernel prints percentages and microseconds; they become ratios and seconds.
    A line that is not PSI raises ValueError naming it.
    """
    out: dict[str, Pressure] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        m = _PRESSURE_RE.match(line)
        if m is None:
            raise ValueError(f"not a PSI line: {line!r}")
        out[m.group(1)] = Pressure(
            avg10=float(m.group(2)) / 100.0,
            avg60=float(m.group(3)) / 100.0,
            avg300=float(m.group(4)) / 100.0,
            total_seconds=int(m.group(5)) / 1e6,
        )
    if not out:
        raise ValueError("empty PSI file")
    return out


_O_READ = os.O_RDONLY | os.O_CLOEXEC
_CHUNK = 65536


def read_fd(fd: int) -> bytes:
    """Everything left to read from ``fd``, read until EOF."""
    data = os.read(fd, _CHUNK)
    if not data:
        return data
    chunks = [data]
    while chunk := os.read(fd, _CHUNK):
        chunks.append(chunk)
    return data if len(chunks) == 1 else b"".join(chunks)


def read_small_at(dir_fd: int, path: str, size: int) -> bytes:
    """At most ``size`` bytes of a small /proc file, in one read, opened relative to ``dir_fd`` (the
    procfs directory): a scan over every process walks no path from the root for each file."""
    fd = os.open(path, _O_READ, dir_fd=dir_fd)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole content of a small kernel file: one open, reads until EOF, one close.

    procfs and sysfs files are generated on each read, so Python's buffered ``open()`` only adds
    work (fstat, TCGETS ioctl, lseek, a decoder); this is what every host collector reads with.
    OSError as ``open()`` raises it.
    """
    fd = os.open(path, _O_READ)
    try:
        return read_fd(fd)
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike[str]) -> str:
    """:func:`read_bytes` decoded as ASCII, a byte outside it replaced (kernel files are ASCII)."""
    return read_bytes(path).decode("ascii", "replace")


def read_text_status(path: str | os.PathLike[str]) -> tuple[str | None, ReadStatus, str]:
    """Read an optional kernel file: (text or None, status, detail for the log).

    ``disabled`` is what the kernel answers for a PSI file when booted with ``psi=0``.
    """
    try:
        return read_text(path), "ok", ""
    except FileNotFoundError:
        return None, "missing", f"{os.fspath(path)} does not exist"
    except PermissionError as exc:
        return None, "unreadable", f"{os.fspath(path)}: {exc.strerror}"
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            return None, "disabled", f"{os.fspath(path)}: {exc.strerror}"
        return None, "unreadable", f"{os.fspath(path)}: {exc.strerror or exc}"


def unit_from_cgroup_path(path: str) -> str:
    """The systemd unit a cgroup belongs to (its deepest unit component), else the cgroup path.

    ``/system.slice/mev-detection.service`` -> ``mev-detection.service``;
    ``/user.slice/user-1000.slice/session-3.scope`` -> ``session-3.scope``;
    ``/docker/abc`` (no systemd) -> ``/docker/abc``; the root cgroup ``/`` -> ``""``.
    """
    path = "/" + path.strip().strip("/")
    if path == "/":
        return ""
    parts = path[1:].split("/")
    # A service's processes sit in its cgroup or in a child cgroup the service created.
    for part in reversed(parts):
        if part.endswith(_PROCESS_UNITS):
            return part
    if parts[-1].endswith(".slice"):
        return parts[-1]
    return path


def parse_proc_cgroup(text: str) -> str:
    """``/proc/<pid>/cgroup`` -> the path that best names the process's service.

    Prefers a path holding a systemd unit (the ``name=systemd`` v1 hierarchy or the v2 unified
    one), then the memory controller's path, then any non-root path; ``/`` when in the root.
    """
    by_hierarchy: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for c in (controllers.split(",") if controllers else [""]):
            by_hierarchy.setdefault(c, path)
    order = ["name=systemd", "", "memory"]
    for key in order:
        path = by_hierarchy.get(key, "")
        if any(p.endswith(_PROCESS_UNITS) for p in path.strip("/").split("/")):
            return path
    for key in ["memory", "", "name=systemd", *sorted(by_hierarchy)]:
        path = by_hierarchy.get(key, "")
        if path and path != "/":
            return path
    return "/"


def enum_family(
    spec: MetricSpec,
    rows: Sequence[tuple[Sequence[str], str]],
    states: Sequence[str] = READ_STATES,
) -> GaugeMetricFamily:
    """An enum as node_exporter exports one: every state a 0/1 series, the current one 1.

    ``spec`` is a gauge whose last label is ``status``; ``rows`` are (values of the other labels,
    current state).
    """
    fam = spec.gauge()
    for values, current in rows:
        for state in states:
            fam.add_metric([*values, state], 1.0 if state == current else 0.0)
    return fam


class PressureSource:
    """One PSI file (``/proc/pressure/memory``...) and the families built from it, for memory and cpu."""

    def __init__(self, path: str, ratio: MetricSpec, stalled: MetricSpec) -> None:
        self.path = path
        self.ratio = ratio
        self.stalled = stalled

    def read(self, families: list[Metric]) -> tuple[ReadStatus, str]:
        """Append the families to ``families``; (status, detail for the log) of the file."""
        text, status, detail = read_text_status(self.path)
        if text is None:
            return status, detail
        try:
            psi = parse_pressure(text)
        except ValueError as exc:
            return "invalid", str(exc)
        families.extend(pressure_families(self.ratio, self.stalled, psi))
        return "ok", ""


def pressure_families(ratio_spec: MetricSpec, stalled_spec: MetricSpec, psi: dict[str, Pressure]) -> list[Metric]:
    """The PSI families: a ratio gauge labelled kind and window, a stalled-seconds counter labelled kind."""
    ratio = ratio_spec.gauge()
    stalled = stalled_spec.counter()
    for kind, p in sorted(psi.items()):
        ratio.add_metric([kind, "10s"], p.avg10)
        ratio.add_metric([kind, "60s"], p.avg60)
        ratio.add_metric([kind, "300s"], p.avg300)
        stalled.add_metric([kind], p.total_seconds)
    return [ratio, stalled]
