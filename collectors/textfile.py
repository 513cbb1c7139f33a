"""Metrics written by other programs (cron jobs, backup scripts) as ``*.prom`` files, as node_exporter's textfile.

Each file is parsed with prometheus-client's text-format parser and checked the way node_exporter checks
it: a file with a syntax error, client-side timestamps, a family typed twice, a repeated series or a name
in mevwatch's own ``mevwatch_`` namespace is reported and skipped as a whole, and the others are served.
Writers should write a temporary file and rename it into place, so a half-written file is never read.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from mevwatch.collectors.base import CollectorContext, CollectorOptions, Families, MetricSpec, PollCollector
from mevwatch.collectors.registry import register
from mevwatch.families import Metric

__all__ = ["FileResult", "TextfileCollector", "TextfileOptions", "merge_files", "parse_textfile", "read_directories"]

OWN_PREFIX = "mevwatch_"
_COMMENT_RE = re.compile(r"#\s+(HELP|TYPE)\s+(\S+)")


class TextfileOptions(CollectorOptions):
    directories: list[Path] = Field(
        default_factory=lambda: [Path("/var/lib/mevwatch/textfile")],
        description="directories whose *.prom files are read (like node_exporter's "
        "--collector.textfile.directory)",
    )
    max_file_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="a larger file is reported and skipped (bounds memory per file)"
    )


def parse_textfile(text: str) -> list[Metric]:
    """The families of one ``.prom`` file; ValueError naming the first problem when the file is invalid."""
    seen: dict[tuple[str, str], int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        m = _COMMENT_RE.match(line)
        if m is not None:
            key = (m.group(1), m.group(2))
            if key in seen:
                raise ValueError(f"line {n}: second {key[0]} line for {key[1]} (first on line {seen[key]})")
            seen[key] = n
    from prometheus_client.parser import text_string_to_metric_families

    try:
        parsed = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise ValueError(f"text format: {exc}") from None
    written = {line.split("{", 1)[0].split(None, 1)[0] for line in text.splitlines()
               if line.strip() and not line.lstrip().startswith("#")}
    families: dict[str, Metric] = {}
    series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for fam in parsed:
        if not fam.samples:
            continue
        if fam.name.startswith(OWN_PREFIX):
            raise ValueError(f"{fam.name}: the {OWN_PREFIX} namespace belongs to mevwatch's own metrics")
        out = families.get(fam.name)
        if out is None:
            out = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
        elif out.type != fam.type:
            raise ValueError(f"{fam.name}: typed both {out.type} and {fam.type}")
        for s in fam.samples:
            if s.name not in written:
                raise ValueError(f"{fam.name}: {fam.type} samples must be named {s.name}")
            if s.timestamp is not None:
                raise ValueError(f"{s.name}: client-side timestamps are not supported")
            key = (s.name, tuple(sorted(s.labels.items())))
            if key in series:
                raise ValueError(f"{s.name}{dict(key[1]) or ''}: the same series twice")
            series.add(key)
            out.add_sample(s.name, dict(s.labels), s.value)
    return list(families.values())


@dataclass(frozen=True, slots=True)
class FileResult:
    path: str
    mtime: float
    families: tuple[Metric, ...] = ()
    error: str = ""


@dataclass(frozen=True, slots=True)
class Gathered:
    files: tuple[FileResult, ...]
    directory_errors: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def read_directories(directories: Iterable[Path], max_file_bytes: int) -> Gathered:
    """Read and parse every ``*.prom`` file (blocking: run in the pool)."""
    files: list[FileResult] = []
    dir_errors: list[tuple[str, str]] = []
    for directory in directories:
        try:
            names = sorted(e.name for e in os.scandir(directory) if e.name.endswith(".prom"))
        except OSError as exc:
            dir_errors.append((str(directory), exc.strerror or str(exc)))
            continue
        for name in names:
            path = directory / name
            try:
                with open(path, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    if st.st_size > max_file_bytes:
                        files.append(FileResult(str(path), st.st_mtime,
                                                error=f"{st.st_size} bytes, over max_file_bytes {max_file_bytes}"))
                        continue
                    raw = fh.read(max_file_bytes + 1)
            except OSError as exc:
                files.append(FileResult(str(path), math.nan, error=exc.strerror or str(exc)))
                continue
            try:
                families = parse_textfile(raw.decode("utf-8"))
            except UnicodeDecodeError:
                files.append(FileResult(str(path), st.st_mtime, error="not valid UTF-8"))
            except ValueError as exc:
                files.append(FileResult(str(path), st.st_mtime, error=str(exc)))
            else:
                files.append(FileResult(str(path), st.st_mtime, tuple(families)))
    return Gathered(tuple(files), tuple(dir_errors))


def merge_files(files: Iterable[FileResult]) -> tuple[list[Metric], dict[str, str]]:
    """Families of the valid files merged by name (node_exporter merges them too), and the files that
    clash with an earlier one (a family typed differently, or a series both files write) with the reason."""
    merged: dict[str, Metric] = {}
    owner: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
    clashes: dict[str, str] = {}
    for f in files:
        if f.error:
            continue
        problem = ""
        for fam in f.families:
            have = merged.get(fam.name)
            if have is not None and have.type != fam.type:
                problem = f"{fam.name} is {fam.type} here but {have.type} in another file"
                break
            for s in fam.samples:
                other = owner.get((s.name, tuple(sorted(s.labels.items()))))
                if other is not None:
                    problem = f"{s.name}{s.labels or ''} is also written by {other}"
                    break
            if problem:
                break
        if problem:
            clashes[f.path] = problem
            continue
        for fam in f.families:
            have = merged.get(fam.name)
            if have is None:
                have = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for s in fam.samples:
                owner[(s.name, tuple(sorted(s.labels.items())))] = f.path
                have.samples.append(s)
    return list(merged.values()), clashes


TEXTFILE_MTIME_SECONDS = MetricSpec(
    "mevwatch_textfile_mtime_seconds", "gauge",
    "Unix mtime of each textfile whose metrics are served",
    ("file",),
)

TEXTFILE_FILE_ERROR = MetricSpec(
    "mevwatch_textfile_file_error", "gauge",
    "1 when a textfile was invalid and skipped, 0 when it was read",
    ("file",),
)

TEXTFILE_SCRAPE_ERROR = MetricSpec(
    "mevwatch_textfile_scrape_error", "gauge",
    "1 when a directory could not be read or any textfile was skipped",
)


@register
class TextfileCollector(PollCollector[TextfileOptions]):
    """Serves the ``*.prom`` files of its directories, with each file's mtime and validity."""

    kind: ClassVar[str] = "textfile"
    Options = TextfileOptions
    default_enabled: ClassVar[bool] = False
    default_interval: ClassVar[float] = 15.0
    default_timeout: ClassVar[float] = 5.0
    runbook_section = "collector-failing"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        TEXTFILE_MTIME_SECONDS,
        TEXTFILE_FILE_ERROR,
        TEXTFILE_SCRAPE_ERROR,
    )

    def __init__(self, ctx: CollectorContext, options: TextfileOptions) -> None:
        super().__init__(ctx, options)
        self._errors: dict[str, str] = {}  # skipped file or unreadable directory -> reason, of the last run

    async def collect(self) -> Families:
        got = await self.ctx.run_blocking(read_directories, tuple(self.options.directories),
                                          self.options.max_file_bytes)
        families, clashes = merge_files(got.files)
        errors = {f.path: f.error for f in got.files if f.error} | clashes
        errors |= dict(got.directory_errors)
        for path, reason in errors.items():
            if self._errors.get(path) != reason:  # once per new problem, not on every run
                self.ctx.log.warning("textfile_skipped", file=path, reason=reason)
        self._errors = errors
        mtime = TEXTFILE_MTIME_SECONDS.gauge()
        bad = TEXTFILE_FILE_ERROR.gauge()
        for f in got.files:
            if f.path in errors:
                bad.add_metric((f.path,), 1.0)
            else:
                bad.add_metric((f.path,), 0.0)
                mtime.add_metric((f.path,), f.mtime)
        scrape_error = TEXTFILE_SCRAPE_ERROR.gauge(1.0 if errors else 0.0)
        return [*families, mtime, bad, scrape_error]

    async def details(self) -> list[tuple[str, str]]:
        """Which files were skipped and why (the parser's message is no label value)."""
        return [(f"textfile {path}", f"skipped: {reason}") for path, reason in sorted(self._errors.items())]
