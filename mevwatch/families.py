"""Metric families: the objects collectors build on every run and renderers write out.

The same classes, constructor signatures and samples as prometheus-client 0.26's ``metrics_core``
(``Metric``, ``GaugeMetricFamily``, ``CounterMetricFamily``, ``InfoMetricFamily``,
``HistogramMetricFamily``), so its renderers and parser agree with ours, without importing
prometheus-client (its package pulls in http.server, wsgiref, urllib.request, email and the
compression modules: ~4 MiB of RSS the daemon never uses) and without validating every name of
every family on every build: a name is checked once per process, then remembered.

One difference: a metric name must match the classic ``[a-zA-Z_:][a-zA-Z0-9_:]*`` (what
prometheus-client enforces with PROMETHEUS_LEGACY_NAME_VALIDATION set). Both text renderers
replace other characters with ``_``, so a UTF-8 name would be exported under another name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "METRIC_NAME_RE",
    "SPEC_TYPES",
    "CounterMetricFamily",
    "GaugeMetricFamily",
    "HistogramMetricFamily",
    "InfoMetricFamily",
    "Metric",
    "MetricSpec",
    "Sample",
    "Timestamp",
    "float_to_go_string",
    "label_text",
]

METRIC_TYPES = frozenset(("counter", "gauge", "summary", "histogram", "gaugehistogram", "unknown", "info", "stateset"))

METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_MAX_REMEMBERED = 65536  # names are static in the code base; this only caps a runaway
_valid_names: set[str] = set()


def label_text(value: str) -> str:
    """``value`` as valid UTF-8 text: bytes that did not decode (a file name read with Python's
    surrogateescape, such as ``x\\udcff``) become a visible ``\\xff``; other lone surrogates ``\\udXXX``."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def check_metric_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a classic Prometheus metric name; each name is matched once."""
    if name in _valid_names:
        return
    if not name:
        raise ValueError("metric name cannot be empty")
    if METRIC_NAME_RE.fullmatch(name) is None:
        raise ValueError("invalid metric name " + name)
    if len(_valid_names) < _MAX_REMEMBERED:
        _valid_names.add(name)


class Timestamp:
    """A nanosecond-resolution timestamp (as prometheus-client's: ``str`` gives ``sec.nnnnnnnnn``)."""

    __slots__ = ("nsec", "sec")

    def __init__(self, sec: float, nsec: float) -> None:
        if nsec < 0 or nsec >= 1e9:
            raise ValueError(f"Invalid value for nanoseconds in Timestamp: {nsec}")
        if sec < 0:
            nsec = -nsec
        self.sec: int = int(sec)
        self.nsec: int = int(nsec)

    def __str__(self) -> str:
        return f"{self.sec}.{self.nsec:09d}"

    def __repr__(self) -> str:
        return f"Timestamp({self.sec}, {self.nsec})"

    def __float__(self) -> float:
        return float(self.sec) + float(self.nsec) / 1e9

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Timestamp) and self.sec == other.sec and self.nsec == other.nsec

    def __hash__(self) -> int:
        return hash((self.sec, self.nsec))

    def __lt__(self, other: Timestamp) -> bool:
        return self.nsec < other.nsec if self.sec == other.sec else self.sec < other.sec

    def __gt__(self, other: Timestamp) -> bool:
        return self.nsec > other.nsec if self.sec == other.sec else self.sec > other.sec


class Sample(NamedTuple):
    """One sample; the fields and their order are prometheus-client's ``Sample``'s."""

    name: str
    labels: dict[str, str]
    value: float
    timestamp: float | Timestamp | None = None
    exemplar: object | None = None  # unused by mevwatch; kept so the tuple has prometheus-client's shape
    native_histogram: object | None = None


# Sample(...) runs the NamedTuple's Python-level __new__; building the tuple directly is ~2x cheaper
# (families are rebuilt on every collector run). Always called with all six fields.
_new_tuple: Callable[[type[Sample], tuple[object, ...]], Sample] = tuple.__new__


class Metric:
    """A metric family and its samples."""

    __slots__ = ("documentation", "name", "samples", "type", "unit")

    def __init__(self, name: str, documentation: str, typ: str, unit: str = "") -> None:
        if unit and not name.endswith("_" + unit):
            name += "_" + unit
        if name not in _valid_names:
            check_metric_name(name)
        self.name: str = name
        self.documentation: str = documentation
        self.unit: str = unit
        if typ == "untyped":
            typ = "unknown"
        if typ not in METRIC_TYPES:
            raise ValueError("Invalid metric type: " + typ)
        self.type: str = typ
        self.samples: list[Sample] = []

    def add_sample(
        self, name: str, labels: dict[str, str], value: float, timestamp: float | Timestamp | None = None
    ) -> None:
        self.samples.append(_new_tuple(Sample, (name, labels, value, timestamp, None, None)))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Metric)
            and self.name == other.name
            and self.documentation == other.documentation
            and self.type == other.type
            and self.unit == other.unit
            and self.samples == other.samples
        )

    def __repr__(self) -> str:
        return f"Metric({self.name}, {self.documentation}, {self.type}, {self.unit}, {self.samples})"


def _one_of(labels: Sequence[str] | None, value: object) -> tuple[str, ...]:
    if labels is None:
        return ()
    if value is not None:
        raise ValueError("Can only specify at most one of value and labels.")
    return labels if type(labels) is tuple else tuple(labels)


class GaugeMetricFamily(Metric):
    __slots__ = ("_labelnames",)

    def __init__(
        self,
        name: str,
        documentation: str,
        value: float | None = None,
        labels: Sequence[str] | None = None,
        unit: str = "",
    ) -> None:
        Metric.__init__(self, name, documentation, "gauge", unit)
        self._labelnames = _one_of(labels, value)
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: float, timestamp: float | Timestamp | None = None) -> None:
        labelset = dict(zip(self._labelnames, labels))  # noqa: B905  # extra values dropped, as prometheus-client
        self.samples.append(_new_tuple(Sample, (self.name, labelset, value, timestamp, None, None)))


class CounterMetricFamily(Metric):
    """A counter; a trailing ``_total`` is dropped from the family name and added to its samples."""

    __slots__ = ("_labelnames",)

    def __init__(
        self,
        name: str,
        documentation: str,
        value: float | None = None,
        labels: Sequence[str] | None = None,
        created: float | None = None,
        unit: str = "",
    ) -> None:
        if name.endswith("_total"):
            name = name[:-6]
        Metric.__init__(self, name, documentation, "counter", unit)
        self._labelnames = _one_of(labels, value)
        if value is not None:
            self.add_metric([], value, created)

    def add_metric(
        self,
        labels: Sequence[str],
        value: float,
        created: float | None = None,
        timestamp: float | Timestamp | None = None,
    ) -> None:
        labelset = dict(zip(self._labelnames, labels))  # noqa: B905
        self.samples.append(_new_tuple(Sample, (self.name + "_total", labelset, value, timestamp, None, None)))
        if created is not None:
            self.samples.append(
                _new_tuple(Sample, (self.name + "_created", dict(labelset), created, timestamp, None, None))
            )


class HistogramMetricFamily(Metric):
    __slots__ = ("_labelnames",)

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[tuple[str, float]] | None = None,
        sum_value: float | None = None,
        labels: Sequence[str] | None = None,
        unit: str = "",
    ) -> None:
        Metric.__init__(self, name, documentation, "histogram", unit)
        if sum_value is not None and buckets is None:
            raise ValueError("sum value cannot be provided without buckets.")
        if labels is not None and buckets is not None:
            raise ValueError("Can only specify at most one of buckets and labels.")
        self._labelnames = () if labels is None else tuple(labels)
        if buckets is not None:
            self.add_metric([], buckets, sum_value)

    def add_metric(
        self,
        labels: Sequence[str],
        buckets: Sequence[tuple[str, float]],
        sum_value: float | None,
        timestamp: float | Timestamp | None = None,
    ) -> None:
        """``buckets``: (upper bound, cumulative count) pairs, sorted, ending with ``+Inf``."""
        pairs = list(zip(self._labelnames, labels))  # noqa: B905
        bucket_name = self.name + "_bucket"
        for bucket, value in buckets:
            self.samples.append(Sample(bucket_name, dict([*pairs, ("le", bucket)]), value, timestamp))
        # No _count and _sum when there are negative buckets (prometheus-client's rule).
        if float(buckets[0][0]) >= 0 and sum_value is not None:
            self.samples.append(Sample(self.name + "_count", dict(pairs), buckets[-1][1], timestamp))
            self.samples.append(Sample(self.name + "_sum", dict(pairs), sum_value, timestamp))


class InfoMetricFamily(Metric):
    __slots__ = ("_labelnames",)

    def __init__(
        self,
        name: str,
        documentation: str,
        value: dict[str, str] | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        Metric.__init__(self, name, documentation, "info")
        self._labelnames = _one_of(labels, value)
        if value is not None:
            self.add_metric([], value)

    def add_metric(
        self, labels: Sequence[str], value: dict[str, str], timestamp: float | Timestamp | None = None
    ) -> None:
        self.samples.append(
            Sample(self.name + "_info", dict(dict(zip(self._labelnames, labels)), **value), 1, timestamp)  # noqa: B905
        )


_INF = float("inf")
_MINUS_INF = float("-inf")
_GO_EXPONENTS = tuple(f"e+{dot - 1:02d}" for dot in range(17))  # by the position of the point in repr


def float_to_go_string(d: float) -> str:
    """``d`` as Go's strconv formats it in the exposition formats (prometheus-client's ``floatToGoString``)."""
    if type(d) is not float:
        d = float(d)
    if _MINUS_INF < d < 1e6:
        # Finite and below 1e6: Python's repr is what Go writes (the common case, decided in two compares).
        return repr(d)
    if 1e6 <= d < 1e16:
        # Go switches to exponents sooner than Python: here repr has 7 to 16 digits before the point.
        s = repr(d)
        dot = s.find(".")
        return f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.") + _GO_EXPONENTS[dot]
    if d != d:
        return "NaN"
    if d == _INF:
        return "+Inf"
    if d == _MINUS_INF:
        return "-Inf"
    return repr(d)  # from 1e16 on repr writes an exponent, as Go does


#: the family types a metric may be declared with
SPEC_TYPES = frozenset({"gauge", "counter", "histogram", "info", "stateset", "summary"})
# Base units a family name may end in, so docs and dashboards know the unit without a second declaration.
_UNIT_SUFFIXES = ("seconds", "bytes", "ratio", "hertz", "wei", "ether", "blocks", "celsius")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric, declared once: name, type, help and label names; it builds its families.

    ``name`` is the family name as built (counters without ``_total``, info without ``_info``);
    ``labels`` are every label of its samples, in the order ``add_metric`` takes their values (for
    info families the family's labels first, then the info keys). ``unit`` defaults to the base unit
    the name ends in. docs/metrics.md is generated from these declarations, and the contract test
    checks that what a collector emits is what it declared, help text included.
    """

    name: str
    type: str
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""

    def __post_init__(self) -> None:
        if self.type not in SPEC_TYPES:
            raise ValueError(f"{self.name}: unknown metric type {self.type!r}")
        if not self.unit:
            unit = next((u for u in _UNIT_SUFFIXES if self.name.endswith("_" + u)), "")
            object.__setattr__(self, "unit", unit)

    @property
    def sample_names(self) -> tuple[str, ...]:
        """Series names this family exposes in the Prometheus text format."""
        match self.type:
            case "counter":
                return (self.name + "_total",)
            case "info":
                return (self.name + "_info",)
            case "histogram":
                return (self.name + "_bucket", self.name + "_count", self.name + "_sum")
            case "summary":
                return (self.name, self.name + "_count", self.name + "_sum")
        return (self.name,)

    def gauge(self, value: float | None = None) -> GaugeMetricFamily:
        """A new gauge family of this metric: empty, for ``add_metric`` with the declared labels; or, for a
        metric without labels, with ``value`` as its one sample."""
        self._is("gauge")
        if value is not None:
            return GaugeMetricFamily(self.name, self.help, value=value)
        return GaugeMetricFamily(self.name, self.help, labels=self.labels)

    def counter(self, value: float | None = None) -> CounterMetricFamily:
        """A new counter family of this metric, as :meth:`gauge` builds a gauge."""
        self._is("counter")
        if value is not None:
            return CounterMetricFamily(self.name, self.help, value=value)
        return CounterMetricFamily(self.name, self.help, labels=self.labels)

    def histogram(self) -> HistogramMetricFamily:
        """A new, empty histogram family with the declared labels (``le`` is added per bucket)."""
        self._is("histogram")
        return HistogramMetricFamily(self.name, self.help, labels=self.labels)

    def info(self, value: dict[str, str] | None = None, labels: Sequence[str] = ()) -> InfoMetricFamily:
        """A new info family: ``value`` as its one sample, or empty for ``add_metric`` with ``labels``, the
        declared labels that are not info keys."""
        self._is("info")
        if value is not None:
            return InfoMetricFamily(self.name, self.help, value=value)
        return InfoMetricFamily(self.name, self.help, labels=labels)

    def _is(self, typ: str) -> None:
        if self.type != typ:
            raise TypeError(f"{self.name} is declared a {self.type}, not a {typ}")
