"""The engine HTTP probe: check parsing, error classes, latency histogram, against a real aiohttp server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mevwatch.collectors.base import CollectorContext
from mevwatch.collectors.http import (
    DEFAULT_BUCKETS,
    HttpCollector,
    HttpOptions,
    LatencyHistogram,
    parse_check,
)
from mevwatch.daemon.config import ConfigError, load_config_text
from mevwatch.families import Metric
from tests.support.daemon import RunningDaemon, sample_value
from tests.support.engine import EngineStub
from tests.support.peers import free_port

# --- JSON check --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "doc", "ok"),
    [
        ('status == "ok"', {"status": "ok"}, True),
        ('status == "ok"', {"status": "degraded"}, False),
        ('$.status == "ok"', {"status": "ok"}, True),
        ('status != "down"', {"status": "ok"}, True),
        ("data.healthy == true", {"data": {"healthy": True}}, True),
        ("data.healthy == true", {"data": {"healthy": 1}}, False),
        ("count == 1", {"count": 1.0}, True),
        ("count >= 1", {"count": 0}, False),
        ("latency_ms < 15", {"latency_ms": 9.5}, True),
        ("items[1].id == 7", {"items": [{"id": 1}, {"id": 7}]}, True),
        ("items[5].id == 7", {"items": [{"id": 1}]}, False),
        ("[0].id == 1", [{"id": 1}], True),
        ("error == null", {"error": None}, True),
        ("ready", {"ready": True}, True),
        ("ready", {"ready": False}, False),
        ("ready", {}, False),
        ("count > 0", {"count": "3"}, False),
        ('"odd key".x == 2', {"odd key": {"x": 2}}, True),
    ],
)
def test_check_evaluates_like_json(check: str, doc: Any, ok: bool) -> None:
    assert parse_check(check).evaluate(doc)[0] is ok


def test_failed_check_says_why() -> None:
    assert parse_check('status == "ok"').evaluate({"status": "degraded"}) == (False, 'status is "degraded"')
    assert parse_check("a.b == 1").evaluate({"a": {}}) == (False, "a.b: field 'b' missing")
    assert "not a number" in parse_check("n > 1").evaluate({"n": "x"})[1]


@pytest.mark.parametrize(
    ("check", "error"),
    [
        ("status == ok", "use a JSON literal"),
        ("status ==", "use `<path> <op> <json literal>`"),
        ("", "use `<path> <op> <json literal>`"),
        ("n > true", "needs a number"),
        ('n < "5"', "needs a number"),
        ("a..b == 1", "invalid field path"),
        ("a[x] == 1", "invalid field path"),
        ("a == [1]", "only scalar literals"),
    ],
)
def test_bad_check_is_rejected_clearly(check: str, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("[", r"\[").replace("`", "`")):
        parse_check(check)


# --- options -----------------------------------------------------------------------------------


def test_defaults_probe_the_engine_on_loopback() -> None:
    opts = HttpOptions()
    assert [t.url for t in opts.targets] == [
        "http://127.0.0.1:8090/health",
        "http://127.0.0.1:8090/api/v2/opportunities",
    ]
    assert opts.targets[0].json_check == 'status == "ok"'
    assert 0.015 in opts.buckets


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ("targets: [{name: a, url: 'ftp://x/y'}]", "targets[0].url", "must start with http://"),
        ("targets: [{name: a, url: 'http://x', json_check: 'status == ok'}]", "targets[0].json_check",
         "JSON literal"),
        ("targets: [{name: a, url: 'http://x'}, {name: a, url: 'http://y'}]", "targets", "duplicate target name"),
        ("targets: [{name: 'a b', url: 'http://x'}]", "targets[0].name", "letters, digits"),
        ("targets: [{name: a, url: 'http://x', expect_status: [700]}]", "targets[0].expect_status", "100..599"),
        ("targets: [{name: a, url: 'http://x', timeout: 0}]", "targets[0].timeout", "greater than 0"),
        ("targets: [{name: a, url: 'http://x', bogus: 1}]", "targets[0].bogus", "unknown key"),
        ("buckets: [0.1, 0.05]", "buckets", "strictly increasing"),
        ("buckets: [-1]", "buckets", "greater than 0"),
    ],
)
def test_bad_options_name_the_field(body: str, field: str, message: str) -> None:
    text = "collectors:\n  - http:\n      " + body + "\n"
    with pytest.raises(ConfigError) as err:
        load_config_text(text, "t.yaml")
    issues = [str(i) for i in err.value.issues]
    assert any(f"t.yaml:3: collectors[0].http.{field}: " in i and message in i for i in issues), issues


def test_url_secret_is_not_echoed_in_the_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text("collectors:\n  - http:\n      targets: [{name: a, url: 'ftp://u:hunter2@x/'}]\n")
    assert "hunter2" not in str(err.value)


# --- histogram ---------------------------------------------------------------------------------


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    h = LatencyHistogram([0.01, 0.015, 0.02])
    for s in (0.005, 0.015, 0.016, 3.0):
        h.observe(s)
    assert h.buckets() == [("0.01", 1.0), ("0.015", 2.0), ("0.02", 3.0), ("+Inf", 4.0)]
    assert h.sum == pytest.approx(3.036)


# --- against a real server ---------------------------------------------------------------------


def _collector(stub: EngineStub, run_timeout: float = 1.0, **target: Any) -> HttpCollector:
    targets = [
        {"name": "health", "url": stub.url("/health"), "json_check": 'status == "ok"', "timeout": 0.3},
        {"name": "opportunities", "url": stub.url("/api/v2/opportunities"), "timeout": 0.3},
    ]
    targets[0].update(target)
    opts = HttpOptions.model_validate({"targets": targets})
    ctx = CollectorContext(kind="http", instance="t", interval=1.0, timeout=run_timeout)
    return HttpCollector(ctx, opts)


def _value(families: list[Metric] | Any, name: str, **labels: str) -> float | None:
    for fam in families:
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def test_healthy_engine_is_up_with_latency_and_check() -> None:
    async with EngineStub() as stub:
        c = _collector(stub)
        try:
            fams = await c.collect()
            fams = await c.collect()
        finally:
            await c.close()
    assert _value(fams, "mevwatch_http_up", target="health") == 1
    assert _value(fams, "mevwatch_http_up", target="opportunities") == 1
    assert _value(fams, "mevwatch_http_status_code", target="health") == 200
    assert _value(fams, "mevwatch_http_check_ok", target="health", check='status == "ok"') == 1
    assert _value(fams, "mevwatch_http_request_duration_seconds_count", target="health") == 2
    assert _value(fams, "mevwatch_http_request_duration_seconds_bucket", target="health", le="+Inf") == 2
    last = _value(fams, "mevwatch_http_probe_duration_seconds", target="health")
    assert last is not None
    assert 0 < last < 0.3
    assert _value(fams, "mevwatch_http_errors_total", target="health") is None
    assert stub.hits["/health"] == 2


async def test_slow_engine_lands_above_the_15ms_bucket() -> None:
    async with EngineStub() as stub:
        stub.set("/health", delay=0.03)
        c = _collector(stub)
        try:
            fams = await c.collect()
        finally:
            await c.close()
    assert _value(fams, "mevwatch_http_request_duration_seconds_bucket", target="health", le="0.015") == 0
    assert _value(fams, "mevwatch_http_request_duration_seconds_bucket", target="health", le="0.05") == 1
    assert _value(fams, "mevwatch_http_request_duration_seconds_bucket", target="opportunities", le="0.015") == 1
    assert _value(fams, "mevwatch_http_up", target="health") == 1


@pytest.mark.parametrize(
    ("behaviour", "reason", "status"),
    [
        ({"status": 500, "body": {"status": "error"}}, "http_status", 500),
        ({"raw": b"<html>oops</html>", "content_type": "text/html"}, "invalid_json", 200),
        ({"body": {"status": "degraded"}}, "check_failed", 200),
        ({"raw": b"x" * (2 * 1024 * 1024), "content_type": "text/plain"}, "too_large", 200),
    ],
)
async def test_failing_engine_is_down_with_reason(behaviour: dict[str, Any], reason: str, status: int) -> None:
    async with EngineStub() as stub:
        stub.set("/health", **behaviour)
        c = _collector(stub)
        try:
            fams = await c.collect()
            fams = await c.collect()
        finally:
            await c.close()
    assert _value(fams, "mevwatch_http_up", target="health") == 0
    assert _value(fams, "mevwatch_http_status_code", target="health") == status
    assert _value(fams, "mevwatch_http_errors_total", target="health", reason=reason) == 2
    assert _value(fams, "mevwatch_http_up", target="opportunities") == 1  # one bad target spoils nothing else


async def test_hung_engine_costs_the_probe_timeout_only() -> None:
    async with EngineStub() as stub:
        stub.set("/health", hang=True)
        c = _collector(stub)
        try:
            t0 = time.monotonic()
            fams = await c.collect()
            elapsed = time.monotonic() - t0
        finally:
            await c.close()
    assert elapsed < 0.3 + 0.2
    assert _value(fams, "mevwatch_http_up", target="health") == 0
    assert _value(fams, "mevwatch_http_status_code", target="health") == 0
    assert _value(fams, "mevwatch_http_errors_total", target="health", reason="timeout") == 1
    assert _value(fams, "mevwatch_http_request_duration_seconds_count", target="health") == 0


async def test_probe_timeout_is_capped_below_the_run_timeout() -> None:
    async with EngineStub() as stub:
        stub.set("/health", hang=True)
        c = _collector(stub, run_timeout=0.2, timeout=5.0)
        try:
            t0 = time.monotonic()
            fams = await c.collect()
            elapsed = time.monotonic() - t0
        finally:
            await c.close()
    assert elapsed < 0.2
    assert _value(fams, "mevwatch_http_errors_total", target="health", reason="timeout") == 1


async def test_refused_connection() -> None:
    port = free_port()
    opts = HttpOptions.model_validate({"targets": [{"name": "health", "url": f"http://127.0.0.1:{port}/health"}]})
    c = HttpCollector(CollectorContext(kind="http", instance="t", interval=1.0, timeout=1.0), opts)
    try:
        fams = await c.collect()
    finally:
        await c.close()
    assert _value(fams, "mevwatch_http_up", target="health") == 0
    assert _value(fams, "mevwatch_http_errors_total", target="health", reason="refused") == 1


async def test_recovery_after_failure_and_redacted_url() -> None:
    async with EngineStub() as stub:
        c = _collector(stub, url=stub.url("/health?apikey=s3cr3t"))
        stub.set("/health", status=503)
        try:
            down = await c.collect()
            stub.set("/health", status=200)
            up = await c.collect()
        finally:
            await c.close()
    assert _value(down, "mevwatch_http_up", target="health") == 0
    assert _value(up, "mevwatch_http_up", target="health") == 1
    assert _value(up, "mevwatch_http_errors_total", target="health", reason="http_status") == 1
    info = [s for f in up for s in f.samples if s.name == "mevwatch_http_target_info"]
    assert info[0].labels["url"].endswith("/health?apikey=***")
    assert all("s3cr3t" not in str(s.labels) for f in up for s in f.samples)


# --- the whole daemon --------------------------------------------------------------------------


def test_daemon_exports_probe_of_a_real_engine_stub(tmp_path: Path) -> None:
    with EngineStub() as stub:
        stub.set("/api/v2/opportunities", status=500)
        config = (
            "collectors:\n  - http:\n      interval: 200ms\n      targets:\n"
            f"        - {{name: health, url: '{stub.url('/health')}', json_check: 'status == \"ok\"'}}\n"
            f"        - {{name: opportunities, url: '{stub.url('/api/v2/opportunities')}'}}\n"
        )
        with RunningDaemon(tmp_path, config) as d:
            assert d.wait_for("mevwatch_http_up", target="health") == 1
            text = d.get()
            assert sample_value(text, "mevwatch_http_up", target="opportunities") == 0
            assert sample_value(text, "mevwatch_http_status_code", target="opportunities") == 500
            assert sample_value(text, "mevwatch_collector_success", collector="http") == 1
            assert sample_value(text, "mevwatch_http_request_duration_seconds_bucket", target="health",
                                le="0.015") is not None


def test_default_buckets_resolve_the_15ms_budget() -> None:
    assert {0.01, 0.0125, 0.015, 0.0175, 0.02} <= set(DEFAULT_BUCKETS)
    assert list(DEFAULT_BUCKETS) == sorted(DEFAULT_BUCKETS)


async def test_the_engines_own_latency_is_read_from_its_health_json_apart_from_the_round_trip() -> None:
    async with EngineStub() as stub:
        stub.set("/health", body={"status": "ok", "latency": {"detection_ms": 22.5}}, delay=0.001)
        c = _collector(stub, latency_field="latency.detection_ms")
        try:
            fams = await c.collect()
            assert _value(fams, "mevwatch_http_reported_latency_seconds", target="health") == pytest.approx(0.0225)
            round_trip = _value(fams, "mevwatch_http_probe_duration_seconds", target="health")
            assert round_trip is not None
            assert round_trip != pytest.approx(0.0225, abs=1e-4)  # two measures, two series
            stub.set("/health", body={"status": "ok", "latency": {}})  # the engine stops reporting it
            fams = await c.collect()
        finally:
            await c.close()
    assert _value(fams, "mevwatch_http_reported_latency_seconds", target="health") is None  # absent, not stale
    assert _value(fams, "mevwatch_http_up", target="health") == 1


def test_latency_field_is_a_path_not_a_check() -> None:
    with pytest.raises(ValueError, match="is a JSON path"):
        HttpOptions.model_validate({"targets": [{"name": "h", "url": "http://127.0.0.1:1/", "latency_field": "a > 1"}]})
