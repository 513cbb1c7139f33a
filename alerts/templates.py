"""Alert text templates: the Prometheus subset ``{{ $labels.x }}``, ``{{ or $labels.x $labels.y }}`` (the
first label that is not empty, Go's ``or``) and ``{{ $value | humanize }}``, and ``{{ $metric.NAME }}``: the
value of another metric for the alert's own series (same labels), e.g. the live and dead tuple counts beside a
table's dead share; ``{{ $metric.NAME | label "LABEL" }}``: a label of the series of NAME that carries every
label of the alert's own and whose value is not 0 (Prometheus' ``query ... != 0 | first | label``), so a fact
that changes while the alert holds (a stuck transaction's hash, the reason a target is down) is told in its text
without being part of its identity; ``| printf "%.0f"`` writes a value as a whole number (a block number, where
Prometheus' ``{{ $value }}`` would write 2.1e+07); ``{{ $threshold }}``
is the rule's threshold as configured (an override included), so a page says what the value was judged against
(the Prometheus export writes the number in); ``{{ $for }}`` is the rule's own ``for`` the same way, so a text
never names a wait the rule does not have; ``{{ $window }}`` is the window the rule counts or rates over (its
``increase``/``rate``, or its condition's ``increase``), so a text never names a window the rule does not count
over ("12 failed logins in the last {{ $window }}").

A template is checked when its rule is loaded (:func:`check_template`) and filled for each alert. Values are
written as Prometheus writes them (Go's float printing, its humanize functions), so an alert mevwatch raises and
the one Prometheus evaluates from the exported rule say the same thing.
"""

from __future__ import annotations

import decimal
import functools
import math
import re
from collections.abc import Callable, Mapping

__all__ = [
    "check_template", "duration", "for_text", "format_value", "go_float", "render_template", "template_metrics",
    "uses_window",
]

_TEMPLATE_RE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_EXPR_RE = re.compile(
    r"^\s*(?:\$metric\.(?P<of_metric>[A-Za-z_:][A-Za-z0-9_:]*)\s*\|\s*label\s+\"(?P<of_label>[A-Za-z_][A-Za-z0-9_]*)\""
    r"|(?:\$labels\.(?P<label>[A-Za-z_][A-Za-z0-9_]*)|(?P<value>\$value)"
    r"|or(?P<either>(?:\s+\$labels\.[A-Za-z_][A-Za-z0-9_]*){2,})"
    r"|\$metric\.(?P<metric>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<threshold>\$threshold)|(?P<for_>\$for)"
    r"|(?P<window>\$window))"
    r"(?:\s*\|\s*(?P<fn>humanize|humanize1024|humanizePercentage|humanizeDuration|printf\s+\"%\.0f\"))?)\s*$"
)


# Prometheus' template functions (template/template.go) and Go's float printing, character for character: an
# alert mevwatch raises and the one Prometheus evaluates from the exported rule carry the same text.


def _go_g4(v: float) -> str:
    """Go's ``%.4g``."""
    if v != v:
        return "NaN"
    if v in (math.inf, -math.inf):
        return "+Inf" if v > 0 else "-Inf"
    return f"{v:.4g}"


def go_float(v: float) -> str:
    """A float as Go's ``fmt`` prints it (``%v``: the shortest digits that read back as ``v``, with an
    exponent below 1e-4 and from 1e6 on), as Prometheus writes ``{{ $value }}``."""
    if v != v or v in (math.inf, -math.inf):
        return _go_g4(v)
    if v == 0:
        return "-0" if math.copysign(1.0, v) < 0 else "0"
    sign, digits, exp = decimal.Decimal(repr(v)).normalize().as_tuple()
    assert isinstance(exp, int)
    text = "".join(map(str, digits))
    point = len(text) + exp  # digits before the decimal point
    x = point - 1
    if x < -4 or x >= 6:  # strconv 'g' with the shortest precision decides on 6 digits
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        out = f"{mantissa}e{'-' if x < 0 else '+'}{abs(x):02d}"
    elif point <= 0:
        out = "0." + "0" * -point + text
    elif point >= len(text):
        out = text + "0" * (point - len(text))
    else:
        out = text[:point] + "." + text[point:]
    return ("-" if sign else "") + out


def _humanize(v: float) -> str:
    if v == 0 or v != v or v in (math.inf, -math.inf):
        return _go_g4(v)
    prefix = ""
    if abs(v) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
    else:
        for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
            if abs(v) >= 1:
                break
            prefix, v = p, v * 1000
    return _go_g4(v) + prefix


def _humanize1024(v: float) -> str:
    if abs(v) <= 1 or v != v or v in (math.inf, -math.inf):
        return _go_g4(v)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(v) < 1024:
            break
        prefix, v = p, v / 1024
    return _go_g4(v) + prefix


def _humanize_duration(v: float) -> str:
    if v != v or v in (math.inf, -math.inf):
        return _go_g4(v)
    if v == 0:
        return _go_g4(v) + "s"
    if abs(v) >= 1:
        sign = "-" if v < 0 else ""
        d = int(abs(v))
        s, m, h, days = d % 60, d // 60 % 60, d // 3600 % 24, d // 86400
        if days:
            return f"{sign}{days}d {h}h {m}m {s}s"
        if h:
            return f"{sign}{h}h {m}m {s}s"
        if m:
            return f"{sign}{m}m {s}s"
        return f"{sign}{_go_g4(abs(v))}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return f"{_go_g4(v)}{prefix}s"


def format_value(value: float, fn: str | None) -> str:
    """``value`` as ``{{ X | fn }}`` (``{{ X }}`` without ``fn``) renders it, as Prometheus does."""
    if fn is not None and fn.startswith("printf"):  # Go's %.0f: a block number, a count, as an integer
        return _go_g4(value) if value != value or value in (math.inf, -math.inf) else f"{value:.0f}"
    if fn == "humanize":
        return _humanize(value)
    if fn == "humanize1024":
        return _humanize1024(value)
    if fn == "humanizePercentage":
        return _go_g4(value * 100) + "%"
    if fn == "humanizeDuration":
        return _humanize_duration(value)
    return go_float(value)


def duration(seconds: float) -> str:
    """A Prometheus duration (``1h30m``, ``90s``, ``500ms``), as a rule's ``for`` is written."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            out.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(out)


def for_text(seconds: float) -> str:
    """A rule's ``for`` (or window) as ``{{ $for }}`` (``{{ $window }}``) renders it: a Prometheus duration
    (``5m``, ``1h30m``, ``0s``), as the exported rule's ``for`` is written."""
    return duration(seconds)


def _duration_field(seconds: float | None, fn: str | None) -> str:
    if seconds is None:
        return "unknown"
    return for_text(seconds) if fn is None else format_value(seconds, fn)


def check_template(text: str) -> str:
    """``text`` when every ``{{ }}`` in it is supported; a ValueError naming the first that is not."""
    for m in _TEMPLATE_RE.finditer(text):
        if not _EXPR_RE.match(m.group(1)):
            raise ValueError(
                f"unsupported template expression {m.group(0)!r}: use {{{{ $labels.NAME }}}}, "
                "{{ or $labels.NAME $labels.OTHER }}, "
                "{{ $metric.NAME }}, {{ $metric.NAME | label \"LABEL\" }}, {{ $threshold }}, {{ $for }}, "
                "{{ $window }} or {{ $value }} with an optional | humanize, humanize1024, humanizePercentage, "
                "humanizeDuration or printf \"%.0f\" (a whole number, never 2.1e+07)"
            )
    if "{{" in _TEMPLATE_RE.sub("", text):
        raise ValueError("unclosed '{{' in template")
    return text


@functools.lru_cache(maxsize=1024)
def template_metrics(text: str) -> tuple[str, ...]:
    """The metrics a template reads with ``{{ $metric.NAME }}`` (a value or a label), in order, once each."""
    out: dict[str, None] = {}
    for m in _TEMPLATE_RE.finditer(text):
        e = _EXPR_RE.match(m.group(1))
        if e is not None and (e.group("metric") or e.group("of_metric")):
            out[e.group("metric") or e.group("of_metric")] = None
    return tuple(out)


def uses_window(text: str) -> bool:
    """Does the (checked) template name ``{{ $window }}``?"""
    return any((e := _EXPR_RE.match(m.group(1))) is not None and e.group("window")
               for m in _TEMPLATE_RE.finditer(text))


def render_template(
    text: str, labels: Mapping[str, str], value: float, lookup: Callable[[str], float | None] | None = None,
    threshold: float | None = None, for_: float | None = None, *, window: float | None = None,
    label_of: Callable[[str, str], str | None] | None = None,
) -> str:
    """Fill a checked template; a missing label renders empty, as in Prometheus; a ``$metric`` with no sample
    for the series (or no ``lookup``), and ``$threshold``, ``$for`` or ``$window`` without one, render "unknown",
    never a stale or made-up number. ``$for`` and ``$window`` render as a Prometheus duration (``5m``) unless a
    function is given. ``label_of(NAME, LABEL)`` answers ``{{ $metric.NAME | label "LABEL" }}`` ("unknown" when
    it has no series)."""

    def sub(m: re.Match[str]) -> str:
        e = _EXPR_RE.match(m.group(1))
        if e is None:
            return m.group(0)
        if e.group("of_metric"):
            found = label_of(e.group("of_metric"), e.group("of_label")) if label_of is not None else None
            return "unknown" if found is None else found
        if e.group("label"):
            return labels.get(e.group("label"), "")
        if e.group("either"):
            names = [n.removeprefix("$labels.") for n in e.group("either").split()]
            return next((labels[n] for n in names if labels.get(n)), "")
        if e.group("metric"):
            v = lookup(e.group("metric")) if lookup is not None else None
            return "unknown" if v is None else format_value(v, e.group("fn"))
        if e.group("for_"):
            return _duration_field(for_, e.group("fn"))
        if e.group("window"):
            return _duration_field(window, e.group("fn"))
        if e.group("threshold"):
            return "unknown" if threshold is None else format_value(threshold, e.group("fn"))
        return format_value(value, e.group("fn"))

    return _TEMPLATE_RE.sub(sub, text)
