"""HTTP probes of the MEV engine (``/health``, ``/api/v2/opportunities``): up, status, latency, JSON check.

A failing target is a measurement (``mevwatch_http_up 0`` with an error reason), not a collector failure.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mevwatch.collectors._json import JsonTooDeep, loads_bounded
from mevwatch.collectors.base import CollectorContext, CollectorOptions, Families, MetricSpec, PollCollector
from mevwatch.collectors.registry import register
from mevwatch.families import (
    Metric,
)
from mevwatch.fields import ByteSize, Duration
from mevwatch.redaction import redact_url

__all__ = [
    "DEFAULT_BUCKETS",
    "FieldCheck",
    "HttpCollector",
    "HttpOptions",
    "HttpTarget",
    "LatencyHistogram",
    "ProbeResult",
    "classify_error",
    "parse_check",
]

# Fine steps around the runbook's 15 ms detection-latency budget, so p50/p99 either side of it are resolvable.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


# --- JSON field check ----------------------------------------------------------------------------

_CHECK_RE = re.compile(r'^\s*(?P<path>(?:"[^"]*"|[^\s=!<>"])+)\s*(?:(?P<op>==|!=|<=|>=|<|>)\s*(?P<value>.+?))?\s*$')
_SEGMENT_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*|\"[^\"]*\")|\[(\d+)\]")
_MISSING = object()


@dataclass(frozen=True, slots=True)
class FieldCheck:
    """``path op literal`` (or a bare path: the field must exist and be truthy) on a JSON document."""

    text: str
    path: tuple[str | int, ...]
    op: str | None
    value: Any

    def value_in(self, doc: Any) -> tuple[Any, str]:
        """(the value at the path, "") or (_MISSING, why not) in one decoded JSON document."""
        current: Any = doc
        for seg in self.path:
            if isinstance(seg, int):
                if not isinstance(current, list) or seg >= len(current):
                    return _MISSING, f"{_fmt_path(self.path)}: no element [{seg}]"
                current = current[seg]
            else:
                if not isinstance(current, dict) or seg not in current:
                    return _MISSING, f"{_fmt_path(self.path)}: field {seg!r} missing"
                current = current[seg]
        return current, ""

    def evaluate(self, doc: Any) -> tuple[bool, str]:
        """(passed, why not) for one decoded JSON document."""
        current, why = self.value_in(doc)
        if current is _MISSING:
            return False, why
        if self.op is None:
            ok = bool(current)  # JSON's falsy values (null, false, 0, "", [], {}) are Python's too
            return ok, "" if ok else f"{_fmt_path(self.path)} is {json.dumps(current)[:80]}"
        if self.op in ("==", "!="):
            equal = _json_equal(current, self.value)
            ok = equal if self.op == "==" else not equal
        else:
            if isinstance(current, bool) or not isinstance(current, int | float):
                return False, f"{_fmt_path(self.path)} is {json.dumps(current)[:80]}, not a number"
            ok = {
                "<": current < self.value, "<=": current <= self.value,
                ">": current > self.value, ">=": current >= self.value,
            }[self.op]
        return ok, "" if ok else f"{_fmt_path(self.path)} is {json.dumps(current)[:80]}"


def _json_equal(a: Any, b: Any) -> bool:
    # JSON semantics: true is not 1, and 1 equals 1.0.
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and bool(a == b)


def _fmt_path(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "$"


def parse_check(text: str) -> FieldCheck:
    """Parse ``status == "ok"``, ``$.data.healthy == true``, ``items[0].id``, ``count >= 1``.

    The right-hand side is a JSON literal (double-quoted string, number, true, false, null);
    ``<``/``>`` comparisons need a number. Raises ValueError with what is wrong.
    """
    m = _CHECK_RE.match(text)
    if not m:
        raise ValueError(f"invalid check {text!r}: use `<path> <op> <json literal>`, e.g. status == \"ok\"")
    raw_path, op, raw_value = m.group("path"), m.group("op"), m.group("value")
    if raw_path.startswith("$"):
        raw_path = raw_path[1:].lstrip(".")
    path: list[str | int] = []
    pos = 0
    while pos < len(raw_path):
        if raw_path[pos] == "." and path:
            pos += 1
        seg = _SEGMENT_RE.match(raw_path, pos)
        if seg is None:
            raise ValueError(f"invalid field path {m.group('path')!r} at {raw_path[pos:]!r}: "
                             "use names joined by '.', and [N] for list elements")
        if seg.group(1) is not None:
            path.append(seg.group(1).strip('"'))
        else:
            path.append(int(seg.group(2)))
        pos = seg.end()
    if not path and op is None:
        raise ValueError(f"invalid check {text!r}: no field path")
    value: Any = None
    if op is not None:
        try:
            value = json.loads(raw_value)
        except json.JSONDecodeError:
            raise ValueError(
                f"invalid value {raw_value!r} in check {text!r}: use a JSON literal such as \"ok\", 1, true, null"
            ) from None
        if isinstance(value, dict | list):
            raise ValueError(f"invalid value {raw_value!r} in check {text!r}: only scalar literals compare")
        if op in ("<", "<=", ">", ">=") and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"operator {op} in check {text!r} needs a number on the right")
    return FieldCheck(text=text.strip(), path=tuple(path), op=op, value=value)


# --- errors and latency --------------------------------------------------------------------------

ERROR_REASONS = ("timeout", "refused", "reset", "connect", "tls", "http_status", "invalid_json",
                 "check_failed", "too_large", "other")


def classify_error(exc: BaseException) -> str:
    """A short, bounded error class for an aiohttp/OS failure of one probe."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "tls"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_err = exc.os_error
        if isinstance(os_err, ConnectionRefusedError):
            return "refused"
        if isinstance(os_err, TimeoutError):
            return "timeout"
        return "connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | ConnectionResetError
                   | aiohttp.ClientOSError):
        return "reset"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return "other"


class LatencyHistogram:
    """Cumulative bucket counts kept across runs (a histogram is a counter of observations)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        acc = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            acc += n
            out.append((_le(bound), float(acc)))
        out.append(("+Inf", float(self.count)))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


# --- options -------------------------------------------------------------------------------------


class HttpTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="label value for this target (e.g. health)")
    url: str = Field(description="http(s) URL to probe; userinfo and API keys are redacted in labels and logs")
    method: Literal["GET", "HEAD", "POST"] = Field("GET", description="HTTP method")
    expect_status: list[int] = Field(
        default_factory=lambda: [200], description="status codes that count as up (default [200])"
    )
    json_check: str | None = Field(
        None, description='optional check on the JSON body, e.g. `status == "ok"`; non-JSON then fails'
    )
    timeout: Duration = Field(2.0, description="whole-request timeout of one probe (connect + body)")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers")
    latency_field: str | None = Field(None, description=(
        "JSON path of a latency the target reports about itself, e.g. the engine's detection latency "
        "(`latency.detection_ms`); exported as mevwatch_http_reported_latency_seconds and judged by the "
        "runbook's 15 ms budget (EngineLatencyHigh), unlike the probe's own round trip"))
    latency_unit: Literal["s", "ms", "us"] = Field("ms", description="unit of latency_field's number")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or len(v) > 64 or not all(c.isalnum() or c in "-_." for c in v):
            raise ValueError("name must be 1-64 characters of letters, digits, '-', '_' or '.'")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"url must start with http:// or https:// and name a host, got {redact_url(v)!r}")
        return v

    @field_validator("expect_status")
    @classmethod
    def _status(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("expect_status needs at least one status code")
        for code in v:
            if not 100 <= code <= 599:
                raise ValueError(f"status code {code} is not in 100..599")
        return v

    @field_validator("json_check")
    @classmethod
    def _check(cls, v: str | None) -> str | None:
        if v is not None:
            parse_check(v)
        return v

    @field_validator("latency_field")
    @classmethod
    def _latency_field(cls, v: str | None) -> str | None:
        if v is not None and parse_check(v).op is not None:
            raise ValueError(f"latency_field {v!r} is a JSON path (e.g. latency.detection_ms), not a check")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("timeout must be greater than 0")
        return v


def _default_targets() -> list[HttpTarget]:
    return [
        HttpTarget(name="health", url="http://127.0.0.1:8090/health", json_check='status == "ok"'),
        HttpTarget(name="opportunities", url="http://127.0.0.1:8090/api/v2/opportunities"),
    ]


class HttpOptions(CollectorOptions):
    targets: list[HttpTarget] = Field(
        default_factory=_default_targets, description="URLs to probe, each with a unique name"
    )
    buckets: list[float] = Field(
        default_factory=lambda: list(DEFAULT_BUCKETS), description="latency histogram bucket bounds in seconds"
    )
    max_body: ByteSize = Field(1024 * 1024, description="a larger response body fails the probe (too_large)")

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("buckets must not be empty")
        if any(not math.isfinite(b) or b <= 0 for b in v):
            raise ValueError("bucket bounds must be finite and greater than 0")
        if any(a >= b for a, b in pairwise(v)):
            raise ValueError("bucket bounds must be strictly increasing")
        return v

    @field_validator("targets")
    @classmethod
    def _unique(cls, v: list[HttpTarget]) -> list[HttpTarget]:
        names = [t.name for t in v]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"duplicate target name {name!r}")
        return v


# --- the collector -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeResult:
    up: bool
    status: int  # 0 when no HTTP response came back
    seconds: float | None  # time to the full body; None without a response
    reason: str  # "" when up
    check_ok: bool | None  # None when no check is configured or no body was read
    message: str = ""
    reported_latency: float | None = None  # seconds, from latency_field of the body


HTTP_UP = MetricSpec(
    "mevwatch_http_up", "gauge",
    "1 when the probe got an expected status and passed its JSON check",
    ("target",),
)

HTTP_STATUS_CODE = MetricSpec(
    "mevwatch_http_status_code", "gauge",
    "HTTP status of the last probe (0: no response)",
    ("target",),
)

HTTP_PROBE_DURATION_SECONDS = MetricSpec(
    "mevwatch_http_probe_duration_seconds", "gauge",
    "Time of the last probe to the full response body",
    ("target",),
)

HTTP_REQUEST_DURATION_SECONDS = MetricSpec(
    "mevwatch_http_request_duration_seconds", "histogram",
    "Time to the full response body of every probe that got a response",
    ("target",),
)

HTTP_ERRORS = MetricSpec("mevwatch_http_errors", "counter", "Failed probes by reason", ("target", "reason"))

HTTP_TARGET = MetricSpec(
    "mevwatch_http_target", "info",
    "Probed URL (secrets redacted) and method",
    ("target", "method", "url"),
)

HTTP_CHECK_OK = MetricSpec("mevwatch_http_check_ok", "gauge", "1 when the JSON field check passed", ("target", "check"))

HTTP_REPORTED_LATENCY_SECONDS = MetricSpec(
    "mevwatch_http_reported_latency_seconds", "gauge",
    "Latency the target reports about itself in its JSON body (latency_field), e.g. the engine's detection "
    "latency; absent when not configured or not in the body",
    ("target",),
)
_UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@register
class HttpCollector(PollCollector[HttpOptions]):
    kind: ClassVar[str] = "http"
    Options = HttpOptions
    default_interval: ClassVar[float] = 5.0
    default_timeout: ClassVar[float] = 4.0
    runbook_section = "engine-down"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        HTTP_UP,
        HTTP_STATUS_CODE,
        HTTP_PROBE_DURATION_SECONDS,
        HTTP_REQUEST_DURATION_SECONDS,
        HTTP_ERRORS,
        HTTP_TARGET,
        HTTP_CHECK_OK,
        HTTP_REPORTED_LATENCY_SECONDS,
    )

    def __init__(self, ctx: CollectorContext, options: HttpOptions) -> None:
        super().__init__(ctx, options)
        self._checks = {t.name: parse_check(t.json_check) for t in options.targets if t.json_check}
        self._latency_fields = {t.name: parse_check(t.latency_field) for t in options.targets if t.latency_field}
        self._hist = {t.name: LatencyHistogram(options.buckets) for t in options.targets}
        self._errors: dict[tuple[str, str], int] = {}
        self._session: aiohttp.ClientSession | None = None
        self._last_reason: dict[str, str] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # A fresh connection per probe: a stale keep-alive socket to a restarted engine would
            # otherwise show up as a spurious reset, and every probe costs the same.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "mevwatch-http-probe"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(self, target: HttpTarget) -> ProbeResult:
        """One request to ``target``; never raises for a failure of the target."""
        session = self._get_session()
        # Leave the run some room under the supervisor's timeout so every target reports.
        budget = min(target.timeout, max(self.ctx.timeout * 0.9, 0.01))
        check = self._checks.get(target.name)
        started = time.perf_counter()
        status = 0
        try:
            async with asyncio.timeout(budget):
                async with session.request(
                    target.method, target.url, headers=target.headers, allow_redirects=False,
                ) as resp:
                    status = resp.status
                    body = await _read_limited(resp, self.options.max_body)
            seconds = time.perf_counter() - started
        except _TooLarge:
            return ProbeResult(False, status, time.perf_counter() - started, "too_large", None,
                               f"body larger than {self.options.max_body} bytes")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every transport failure is a measurement of the target
            reason = classify_error(exc)
            return ProbeResult(False, status, None, reason, None, redact_url(f"{type(exc).__name__}: {exc}"))
        if status not in target.expect_status:
            return ProbeResult(False, status, seconds, "http_status", None, f"HTTP {status}")
        latency_field = self._latency_fields.get(target.name)
        if check is None and latency_field is None:
            return ProbeResult(True, status, seconds, "", None)
        try:
            doc = loads_bounded(body)
        except JsonTooDeep as exc:
            return ProbeResult(check is None, status, seconds, "" if check is None else "invalid_json",
                               None if check is None else False, f"body {exc}")
        except (ValueError, UnicodeDecodeError):
            return ProbeResult(check is None, status, seconds, "" if check is None else "invalid_json",
                               None if check is None else False, "body is not JSON")
        reported = None
        if latency_field is not None:
            value, _ = latency_field.value_in(doc)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                reported = float(value) * _UNIT_SECONDS[target.latency_unit]
        if check is None:
            return ProbeResult(True, status, seconds, "", None, reported_latency=reported)
        ok, why = check.evaluate(doc)
        if not ok:
            return ProbeResult(False, status, seconds, "check_failed", False, why, reported)
        return ProbeResult(True, status, seconds, "", True, reported_latency=reported)

    async def collect(self) -> Families:
        targets = self.options.targets
        results = await asyncio.gather(*(self.probe(t) for t in targets))
        up = HTTP_UP.gauge()
        status = HTTP_STATUS_CODE.gauge()
        last = HTTP_PROBE_DURATION_SECONDS.gauge()
        hist = HTTP_REQUEST_DURATION_SECONDS.histogram()
        check_ok = HTTP_CHECK_OK.gauge()
        reported = HTTP_REPORTED_LATENCY_SECONDS.gauge()
        errors = HTTP_ERRORS.counter()
        info = HTTP_TARGET.info(labels=["target"])
        for target, res in zip(targets, results, strict=True):
            name = target.name
            up.add_metric([name], 1.0 if res.up else 0.0)
            status.add_metric([name], float(res.status))
            if res.seconds is not None:
                last.add_metric([name], res.seconds)
                self._hist[name].observe(res.seconds)
            if not res.up:
                key = (name, res.reason)
                self._errors[key] = self._errors.get(key, 0) + 1
                if self._last_reason.get(name) != res.reason:
                    self.ctx.log.info("http_probe_failed", target=name, reason=res.reason, error=res.message)
            elif self._last_reason.get(name):
                self.ctx.log.info("http_probe_recovered", target=name)
            self._last_reason[name] = res.reason
            if name in self._checks:
                check_ok.add_metric([name, self._checks[name].text], 1.0 if res.check_ok else 0.0)
            if res.reported_latency is not None:
                reported.add_metric([name], res.reported_latency)
            h = self._hist[name]
            hist.add_metric([name], buckets=h.buckets(), sum_value=h.sum)
            info.add_metric([name], {"url": redact_url(target.url), "method": target.method})
        for (name, reason), n in sorted(self._errors.items()):
            errors.add_metric([name, reason], float(n))
        families: list[Metric] = [up, status, last, hist, errors, info]
        if self._checks:
            families.append(check_ok)
        if self._latency_fields:
            families.append(reported)
        return families


class _TooLarge(Exception):
    pass


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)
