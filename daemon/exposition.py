"""Prometheus text format 0.0.4, byte for byte what prometheus_client's ``generate_latest`` writes.

prometheus_client validates and escapes every name, label name and label value of every sample
on every render; here each series' "name{labels} " prefix is built once and remembered, which
makes a render about 3x cheaper (a render follows every collector run that a scrape sees).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import SupportsFloat

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om
from prometheus_client.utils import floatToGoString

_go_float: Callable[[float], str] = floatToGoString  # Go's float formatting, as prometheus_client writes it

__all__ = ["CONTENT_TYPE_OPENMETRICS", "CONTENT_TYPE_TEXT", "render_openmetrics", "render_text"]

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
_MAX_CACHED = 65536  # series are bounded by design; this only caps a runaway

_prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}  # (name, labels in given order) -> 'name{...} '


def _escape_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _prefix(name: str, labels: dict[str, str]) -> str:
    key = (name, tuple(labels.items()))
    out = _prefixes.get(key)
    if out is None:
        escaped = om.escape_metric_name(name, om.UNDERSCORES)
        if labels:
            labelstr = ",".join(
                f'{om.escape_label_name(k, om.UNDERSCORES)}="{_escape_value(v)}"'
                for k, v in sorted(labels.items())
            )
            out = f"{escaped}{{{labelstr}}} "
        else:
            out = f"{escaped} "
        if len(_prefixes) < _MAX_CACHED:
            _prefixes[key] = out
    return out


def _sample_line(name: str, labels: dict[str, str], value: float, timestamp: SupportsFloat | None) -> str:
    if timestamp is None:
        return f"{_prefix(name, labels)}{_go_float(value)}\n"
    return f"{_prefix(name, labels)}{_go_float(value)} {int(float(timestamp) * 1000):d}\n"


_headers: dict[tuple[str, str, str], str] = {}


def _header(name: str, documentation: str, mtype: str) -> str:
    key = (name, documentation, mtype)
    out = _headers.get(key)
    if out is None:
        escaped = om.escape_metric_name(name, om.UNDERSCORES)
        doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
        out = f"# HELP {escaped} {doc}\n# TYPE {escaped} {mtype}\n"
        if len(_headers) < _MAX_CACHED:
            _headers[key] = out
    return out


def render_text(families: Iterable[Metric]) -> bytes:
    """``families`` in the text format, exactly as ``prometheus_client.generate_latest`` renders them."""
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


class _FamiliesView:
    """The registry-shaped object prometheus_client's OpenMetrics renderer expects."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def render_openmetrics(families: Iterable[Metric]) -> bytes:
    """``families`` in OpenMetrics 1.0.0, without the closing ``# EOF`` line (the caller ends the body)."""
    text: bytes = om.generate_latest(_FamiliesView(families))  # type: ignore[no-untyped-call]
    return text[: -len(b"# EOF\n")] if text.endswith(b"# EOF\n") else text
