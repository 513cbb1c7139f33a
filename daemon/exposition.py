"""Prometheus text format 0.0.4 and OpenMetrics 1.0.0, byte for byte what prometheus-client 0.26 writes.

prometheus-client validates and escapes every name, label name and label value of every sample
on every render; here each series' escaped "name{labels} " prefix and each family's HELP/TYPE
lines are remembered: pure functions of names, labels and help, so nothing to invalidate. They
pay on bench/host.py's CPU per collection: rendering the memory, disk and cpu families of one
round costs 0.07 ms with them and 0.25 ms without (of about 1.3 ms of daemon CPU per collection).
Rendered text is cached in one place only, per kind, by the render cache (daemon/http.py).
Names are escaped as prometheus-client's default (``underscores``) scheme does: every character
outside the classic name alphabet becomes ``_``. Exemplars and native histograms are not
written (mevwatch's families have none; a sample with an exemplar is refused).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

import structlog

from mevwatch.collectors.base import MetricSpec
from mevwatch.families import (
    METRIC_NAME_RE,
    Metric,
    float_to_go_string,
    label_text,
)

__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "EXPOSITION_METRICS",
    "exposition_families",
    "render_openmetrics",
    "render_text",
]

log = structlog.get_logger("mevwatch.http")

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_go_float = float_to_go_string
_MINUS_INF = float("-inf")
# Values most samples carry (states, flags, counts, idle ratios), formatted once. Keys compare by
# numeric value, so int and bool values find them too (they render as floats do), and 0.0 also
# answers -0.0: the renderer checks the sign of a zero.
_ZERO = "0.0"
_COMMON_VALUES: dict[float, str] = {0.0: _ZERO, **{float(i): float_to_go_string(i) for i in range(1, 101)}}
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
_MAX_CACHED = 65536  # series are bounded by design; this only caps a runaway

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NOT_METRIC_RUNE = re.compile(r"[^a-zA-Z0-9_:]")
_NOT_LABEL_RUNE = re.compile(r"[^a-zA-Z0-9_]")


def _underscored(s: str, not_rune: re.Pattern[str]) -> str:
    """``s`` with every character outside the alphabet (and a leading digit) replaced by ``_``."""
    s = not_rune.sub("_", s)
    return "_" + s[1:] if s[:1].isdigit() else s


def _metric_name(s: str) -> str:
    return s if METRIC_NAME_RE.fullmatch(s) or not s else _underscored(s, _NOT_METRIC_RUNE)


def _label_name(s: str) -> str:
    return s if _LABEL_NAME.fullmatch(s) or not s else _underscored(s, _NOT_LABEL_RUNE)


# prometheus-client's OpenMetrics writer escapes sample names with the label-name alphabet (no ':').
_om_sample_name = _label_name


def _escape_value(v: str) -> str:
    if not v.isascii():
        v = label_text(v)  # a file name that is not UTF-8: its bytes shown, not a failed scrape
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labelstr(labels: dict[str, str]) -> str:
    return ",".join(f'{_label_name(k)}="{_escape_value(v)}"' for k, v in sorted(labels.items()))


# Escaped series prefixes 'name{...} '. Text format: keyed by the bare name or (name, *label names,
# *label values); OpenMetrics: (name, labels in given order). The formats escape names differently.
_prefixes: dict[str | tuple[str, ...], str] = {}
_om_prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}


def _prefix(key: str | tuple[str, ...], name: str, labels: dict[str, str]) -> str:
    out = f"{_metric_name(name)}{{{_labelstr(labels)}}} " if labels else f"{_metric_name(name)} "
    if len(_prefixes) < _MAX_CACHED:
        _prefixes[key] = out
    return out


def _om_prefix(name: str, labels: dict[str, str]) -> str:
    key = (name, tuple(labels.items()))
    out = _om_prefixes.get(key)
    if out is None:
        out = f"{_om_sample_name(name)}{{{_labelstr(labels)}}} " if labels else f"{_om_sample_name(name)} "
        if len(_om_prefixes) < _MAX_CACHED:
            _om_prefixes[key] = out
    return out


_headers: dict[tuple[str, str, str], str] = {}
_family_headers: dict[tuple[str, str, str], str] = {}  # (name, type, documentation) -> HELP and TYPE lines
_om_headers: dict[tuple[str, str, str, str], str] = {}


def _header(name: str, documentation: str, mtype: str) -> str:
    key = (name, documentation, mtype)
    out = _headers.get(key)
    if out is None:
        escaped = _metric_name(name)
        doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
        out = f"# HELP {escaped} {doc}\n# TYPE {escaped} {mtype}\n"
        if len(_headers) < _MAX_CACHED:
            _headers[key] = out
    return out


def _om_header(name: str, documentation: str, mtype: str, unit: str) -> str:
    key = (name, documentation, mtype, unit)
    out = _om_headers.get(key)
    if out is None:
        escaped = _metric_name(name)
        out = f"# HELP {escaped} {_escape_value(documentation)}\n# TYPE {escaped} {mtype}\n"
        if unit:
            out += f"# UNIT {escaped} {unit}\n"
        if len(_om_headers) < _MAX_CACHED:
            _om_headers[key] = out
    return out


def _family_header(key: tuple[str, str, str]) -> str:
    """The HELP and TYPE lines of a family keyed (name, type, documentation)."""
    mname, mtype, documentation = key
    if mtype == "counter":
        mname += "_total"
    elif mtype == "info":
        mname += "_info"
        mtype = "gauge"
    elif mtype == "stateset":
        mtype = "gauge"
    elif mtype == "gaugehistogram":
        mtype = "histogram"
    elif mtype == "unknown":
        mtype = "untyped"
    out = _header(mname, documentation, mtype)
    if len(_family_headers) < _MAX_CACHED:
        _family_headers[key] = out
    return out


def render_text(families: Iterable[Metric]) -> bytes:
    """``families`` in the text format, exactly as prometheus-client's ``generate_latest`` renders them.
    A family that cannot be rendered is left out, logged once and counted (see ``_isolated``)."""
    return _isolated(_render_text, families)


def render_openmetrics(families: Iterable[Metric]) -> bytes:
    """``families`` in OpenMetrics 1.0.0, without the closing ``# EOF`` line (the caller ends the body)."""
    return _isolated(_render_openmetrics, families)


def _render_text(families: Iterable[Metric]) -> bytes:
    output: list[str] = []
    append = output.append
    get_header = _family_headers.get
    get_prefix = _prefixes.get
    get_common = _COMMON_VALUES.get
    go_float = _go_float
    copysign = math.copysign
    for metric in families:
        base = metric.name
        hkey = (base, metric.type, metric.documentation)
        append(get_header(hkey) or _family_header(hkey))
        om_samples: dict[str, list[str]] | None = None
        for s in metric.samples:
            sname, labels, value, timestamp = s.name, s.labels, s.value, s.timestamp
            # one key per series: the bare name, or the name, the label names and the label values (in
            # their given order; the length tells how many labels, so no two series share a key)
            key = (sname, *labels, *labels.values()) if labels else sname
            prefix = get_prefix(key) or _prefix(key, sname, labels)
            v = get_common(value)
            if v is None:
                # finite floats below 1e6 are written as repr writes them (see float_to_go_string)
                v = repr(value) if type(value) is float and _MINUS_INF < value < 1e6 else go_float(value)
            elif v is _ZERO and copysign(1.0, value) < 0:
                v = "-0.0"  # -0.0 == 0.0: the table cannot tell them apart
            line = f"{prefix}{v}\n" if timestamp is None else f"{prefix}{v} {int(float(timestamp) * 1000):d}\n"
            if sname != base and sname.endswith(_OM_SUFFIXES) and sname[: len(base)] == base:
                suffix = sname[len(base) :]
                if suffix in _OM_SUFFIXES:
                    if om_samples is None:
                        om_samples = {}
                    om_samples.setdefault(suffix, []).append(line)
                    continue
            append(line)
        if om_samples:
            for suffix, lines in sorted(om_samples.items()):
                append(_header(base + suffix, metric.documentation, "gauge"))
                output.extend(lines)
    return "".join(output).encode("utf-8")


def _render_openmetrics(families: Iterable[Metric]) -> bytes:
    output: list[str] = []
    for metric in families:
        output.append(_om_header(metric.name, metric.documentation, metric.type, metric.unit))
        for s in metric.samples:
            if s.exemplar:
                raise ValueError(f"{s.name}: exemplars are not supported")
            if s.native_histogram:
                continue  # not part of OpenMetrics 1.0.0
            value = "" if s.value is None else _go_float(s.value)
            if s.timestamp is None:
                output.append(f"{_om_prefix(s.name, s.labels)}{value}\n")
            else:
                output.append(f"{_om_prefix(s.name, s.labels)}{value} {s.timestamp}\n")
    return "".join(output).encode("utf-8")


# --- one family that cannot be rendered never takes the others down (node_exporter's ContinueOnError) ---

EXPOSITION_FAMILY_ERRORS = MetricSpec(
    "mevwatch_exposition_family_errors", "counter",
    "Renders of /metrics that left a metric family out because it could not be written", ("family",))
EXPOSITION_METRICS: tuple[MetricSpec, ...] = (EXPOSITION_FAMILY_ERRORS,)
_family_errors: dict[str, int] = {}


def _isolated(render: Callable[[Iterable[Metric]], bytes], families: Iterable[Metric]) -> bytes:
    """All families at once (the usual case, no cost added); after a failure, family by family."""
    fams = families if isinstance(families, list | tuple) else list(families)
    try:
        return render(fams)
    except Exception:  # whatever one family holds, the scrape goes on without it
        pass
    parts: list[bytes] = []
    for metric in fams:
        try:
            parts.append(render((metric,)))
        except Exception as exc:
            name = getattr(metric, "name", type(metric).__name__)
            if name not in _family_errors:
                log.error("metric_family_not_rendered", family=name, error=f"{type(exc).__name__}: {exc}",
                          action="left out of /metrics; the other families are served")
            if name in _family_errors or len(_family_errors) < _MAX_CACHED:
                _family_errors[name] = _family_errors.get(name, 0) + 1
    return b"".join(parts)


def exposition_errors_seen() -> int:
    """How many family renders failed so far (the supervisor's heartbeat republishes when it grows)."""
    return sum(_family_errors.values())


def exposition_families() -> list[Metric]:
    fam = EXPOSITION_FAMILY_ERRORS.counter()
    for name, n in sorted(_family_errors.items()):
        fam.add_metric([label_text(name)], float(n))
    return [fam]
