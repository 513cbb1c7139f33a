"""Alert text templates: the Prometheus subset ``{{ $labels.x }}`` and ``{{ $value | humanize }}``, and
``{{ $metric.NAME }}``: the value of another metric for the alert's own series (same labels), e.g. the live and
dead tuple counts beside a table's dead share.

A template is checked when its rule is loaded (:func:`check_template`) and filled for each alert.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping

__all__ = ["check_template", "render_template", "template_metrics"]

_TEMPLATE_RE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_EXPR_RE = re.compile(
    r"^\s*(?:\$labels\.(?P<label>[A-Za-z_][A-Za-z0-9_]*)|(?P<value>\$value)"
    r"|\$metric\.(?P<metric>[A-Za-z_:][A-Za-z0-9_:]*))"
    r"(?:\s*\|\s*(?P<fn>humanize|humanize1024|humanizePercentage|humanizeDuration))?\s*$"
)


def _humanize(v: float, base: float, units: tuple[str, ...]) -> str:
    if v == 0 or abs(v) < 1:
        return f"{v:.4g}"
    i = 0
    while abs(v) >= base and i < len(units) - 1:
        v /= base
        i += 1
    return f"{v:.4g}{units[i]}"


def _duration(v: float) -> str:
    if v < 1:
        return f"{v * 1000:.4g}ms"
    parts, rest = [], int(v)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def _format(value: float, fn: str | None) -> str:
    if value != value:
        return "NaN"
    if fn == "humanize":
        return _humanize(value, 1000.0, ("", "k", "M", "G", "T", "P"))
    if fn == "humanize1024":
        return _humanize(value, 1024.0, ("", "Ki", "Mi", "Gi", "Ti", "Pi"))
    if fn == "humanizePercentage":
        return f"{value * 100:.4g}%"
    if fn == "humanizeDuration":
        return _duration(value)
    return f"{value:.6g}"


def check_template(text: str) -> str:
    """``text`` when every ``{{ }}`` in it is supported; a ValueError naming the first that is not."""
    for m in _TEMPLATE_RE.finditer(text):
        if not _EXPR_RE.match(m.group(1)):
            raise ValueError(
                f"unsupported template expression {m.group(0)!r}: use {{{{ $labels.NAME }}}}, "
                "{{ $metric.NAME }} or {{ $value }} with an optional | humanize, humanize1024, "
                "humanizePercentage, humanizeDuration"
            )
    if "{{" in _TEMPLATE_RE.sub("", text):
        raise ValueError("unclosed '{{' in template")
    return text


@functools.lru_cache(maxsize=1024)
def template_metrics(text: str) -> tuple[str, ...]:
    """The metrics a template reads with ``{{ $metric.NAME }}``, in order, once each."""
    out: dict[str, None] = {}
    for m in _TEMPLATE_RE.finditer(text):
        e = _EXPR_RE.match(m.group(1))
        if e is not None and e.group("metric"):
            out[e.group("metric")] = None
    return tuple(out)


def render_template(
    text: str, labels: Mapping[str, str], value: float, lookup: Callable[[str], float | None] | None = None
) -> str:
    """Fill a checked template; a missing label renders empty, as in Prometheus; a ``$metric`` with no sample
    for the series (or no ``lookup``) renders "unknown", never a stale or made-up number."""

    def sub(m: re.Match[str]) -> str:
        e = _EXPR_RE.match(m.group(1))
        if e is None:
            return m.group(0)
        if e.group("label"):
            return labels.get(e.group("label"), "")
        if e.group("metric"):
            v = lookup(e.group("metric")) if lookup is not None else None
            return "unknown" if v is None else _format(v, e.group("fn"))
        return _format(value, e.group("fn"))

    return _TEMPLATE_RE.sub(sub, text)
