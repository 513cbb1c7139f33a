"""Prometheus text format 0.0.4 and OpenMetrics 1.0.0, byte for byte what prometheus-client 0.26 writes.

prometheus-client validates and escapes every name, label name and label value of every sample
on every render; here each series' "name{labels} " prefix is built once and remembered, which
makes a render about 3x cheaper (a render follows every collector run that a scrape sees).
Names are escaped as prometheus-client's default (``underscores``) scheme does: every character
outside the classic name alphabet becomes ``_``. Exemplars and native histograms are not
written (mevwatch's families have none; a sample with an exemplar is refused).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import SupportsFloat

from mevwatch.daemon.families import Metric, float_to_go_string

__all__ = ["CONTENT_TYPE_OPENMETRICS", "CONTENT_TYPE_TEXT", "render_openmetrics", "render_text"]

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_go_float = float_to_go_string
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
_MAX_CACHED = 65536  # series are bounded by design; this only caps a runaway

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NOT_METRIC_RUNE = re.compile(r"[^a-zA-Z0-9_:]")
_NOT_LABEL_RUNE = re.compile(r"[^a-zA-Z0-9_]")


def _underscored(s: str, not_rune: re.Pattern[str]) -> str:
    """``s`` with every character outside the alphabet (and a leading digit) replaced by ``_``."""
    s = not_rune.sub("_", s)
    return "_" + s[1:] if s[:1].isdigit() else s


def _metric_name(s: str) -> str:
    return s if _METRIC_NAME.fullmatch(s) or not s else _underscored(s, _NOT_METRIC_RUNE)


def _label_name(s: str) -> str:
    return s if _LABEL_NAME.fullmatch(s) or not s else _underscored(s, _NOT_LABEL_RUNE)


def _om_sample_name(s: str) -> str:
    # prometheus-client's OpenMetrics writer escapes sample names with the label-name alphabet (no ':').
    return s if _LABEL_NAME.fullmatch(s) or not s else _underscored(s, _NOT_LABEL_RUNE)


def _escape_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labelstr(labels: dict[str, str]) -> str:
    return ",".join(f'{_label_name(k)}="{_escape_value(v)}"' for k, v in sorted(labels.items()))


# (name, labels in given order) -> 'name{...} ', one cache per format (they escape names differently)
_prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
_om_prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}


def _prefix(name: str, labels: dict[str, str]) -> str:
    key = (name, tuple(labels.items()))
    out = _prefixes.get(key)
    if out is None:
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


def _sample_line(name: str, labels: dict[str, str], value: float, timestamp: SupportsFloat | None) -> str:
    if timestamp is None:
        return f"{_prefix(name, labels)}{_go_float(value)}\n"
    return f"{_prefix(name, labels)}{_go_float(value)} {int(float(timestamp) * 1000):d}\n"


_headers: dict[tuple[str, str, str], str] = {}
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


def render_text(families: Iterable[Metric]) -> bytes:
    """``families`` in the text format, exactly as prometheus-client's ``generate_latest`` renders them."""
    output: list[str] = []
    for metric in families:
        mname, mtype = metric.name, metric.type
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
        output.append(_header(mname, metric.documentation, mtype))
        om_samples: dict[str, list[str]] = {}
        base = metric.name
        for s in metric.samples:
            sname = s.name
            if sname != base and sname.startswith(base) and sname[len(base):] in _OM_SUFFIXES:
                om_samples.setdefault(sname[len(base):], []).append(
                    _sample_line(sname, s.labels, s.value, s.timestamp)
                )
            else:
                output.append(_sample_line(sname, s.labels, s.value, s.timestamp))
        for suffix, lines in sorted(om_samples.items()):
            output.append(_header(base + suffix, metric.documentation, "gauge"))
            output.extend(lines)
    return "".join(output).encode("utf-8")


def render_openmetrics(families: Iterable[Metric]) -> bytes:
    """``families`` in OpenMetrics 1.0.0, without the closing ``# EOF`` line (the caller ends the body)."""
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
