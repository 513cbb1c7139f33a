"""Mempool checks (pending filter, txpool_status) and the WS pending-transaction stream, against anvil."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from mevwatch.collectors.base import CollectorContext, CollectorError, Families
from mevwatch.collectors.mempool import (
    MempoolCollector,
    MempoolOptions,
    parse_filter_changes,
    parse_txpool_status,
)
from mevwatch.collectors.mempool_stream import MempoolStreamCollector, MempoolStreamOptions, RateTracker
from mevwatch.daemon.config import ConfigError, load_config_text
from tests.support.anvil import DEV_ACCOUNT, Anvil, anvil_no_mining  # noqa: F401 - fixture
from tests.support.peers import free_port
from tests.support.rpcproxy import Fault, RpcProxy

OTHER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"

# --- pure parsing ------------------------------------------------------------------------------


def test_filter_changes_counts_hashes() -> None:
    assert parse_filter_changes([]) == 0
    assert parse_filter_changes(["0x" + "ab" * 32, "0x" + "cd" * 32]) == 2


@pytest.mark.parametrize("bad", [None, "0x1", {"a": 1}, [1, 2], ["nothex"]])
def test_filter_changes_rejects_other_answers(bad: Any) -> None:
    with pytest.raises(ValueError, match="eth_getFilterChanges: expected"):
        parse_filter_changes(bad)


def test_txpool_status_hex_and_plain_numbers() -> None:
    assert parse_txpool_status({"pending": "0x1a", "queued": "0x0"}) == (26, 0)
    assert parse_txpool_status({"pending": 3, "queued": 4}) == (3, 4)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([], "expected an object"),
        ({"pending": "0x1"}, "txpool_status.queued"),
        ({"pending": "12", "queued": "0x0"}, "txpool_status.pending"),
        ({"pending": -1, "queued": "0x0"}, "txpool_status.pending"),
        ({"pending": True, "queued": "0x0"}, "txpool_status.pending"),
    ],
)
def test_txpool_status_rejects_malformed(bad: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_txpool_status(bad)


def test_rate_tracker_rate_average_and_drop_ratio() -> None:
    r = RateTracker(window=10.0, baseline=100.0)
    count = 0
    for t in range(0, 31):  # 100 notifications per second for 30 s
        r.update(float(t), count)
        count += 100
    assert r.rate == pytest.approx(100.0)
    assert r.average == pytest.approx(100.0)
    assert r.ratio == pytest.approx(1.0)
    for t in range(31, 51):  # the stream thins to 10 per second
        r.update(float(t), count)
        count += 10
    assert r.rate == pytest.approx(10.0)
    assert r.average is not None
    assert r.average > 50  # the baseline keeps the usual level for a while
    assert r.ratio is not None
    assert r.ratio < 0.2


def test_rate_tracker_needs_a_full_window_before_the_average() -> None:
    r = RateTracker(window=10.0, baseline=60.0)
    r.update(0.0, 0)
    r.update(2.0, 100)
    assert r.rate == pytest.approx(50.0)
    assert r.average is None
    assert r.ratio is None
    r.reset_window()
    assert r.rate is None


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "body", "field", "message"),
    [
        ("mempool_stream", "endpoint: {name: a, url: 'http://127.0.0.1:8546'}", "endpoint", "needs a ws://"),
        ("mempool_stream", "rate_window: 10m\n      baseline_window: 1m", "", "must not be shorter"),
        ("mempool_stream", "reconnect_min: 0", "", "reconnect_min must be greater than 0"),
        ("mempool", "endpoint: {name: 'a b', url: 'http://127.0.0.1:8545'}", "endpoint.name", "letters, digits"),
        ("mempool", "unsupported_retry: 0", "unsupported_retry", "greater than 0"),
        ("mempool", "filters: true", "filters", "unknown key"),
    ],
)
def test_bad_options_are_rejected(kind: str, body: str, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text(f"collectors:\n  - {kind}:\n      {body}\n", "t.yaml")
    where = f"collectors[0].{kind}" + (f".{field}" if field else "")
    assert any(f"{where}: " in str(i) and message in str(i) for i in err.value.issues), err.value.issues


# --- helpers -----------------------------------------------------------------------------------


def _value(families: Families, name: str, **labels: str) -> float | None:
    for fam in families:
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def _mempool(url: str, timeout: float = 1.0, **opts: Any) -> MempoolCollector:
    options = MempoolOptions.model_validate({"endpoint": {"name": "node", "url": url, "timeout": timeout,
                                                          "connect_timeout": min(timeout, 1.0)}, **opts})
    return MempoolCollector(CollectorContext(kind="mempool", instance="t", interval=1.0, timeout=5.0), options)


def _send(node: Anvil, to: str = OTHER) -> str:
    return str(node.rpc("eth_sendTransaction", [{"from": DEV_ACCOUNT, "to": to, "value": "0x1"}]))


@pytest.fixture
async def proxy(anvil_no_mining: Anvil) -> AsyncIterator[RpcProxy]:  # noqa: F811 - fixture from import
    async with RpcProxy(anvil_no_mining.url) as p:
        yield p


# --- filter and txpool against anvil --no-mining -------------------------------------------------


async def test_pending_filter_sees_sent_transactions(anvil_no_mining: Anvil) -> None:  # noqa: F811
    c = _mempool(anvil_no_mining.url)
    try:
        first = await c.collect()
        assert _value(first, "mevwatch_mempool_filter_up", endpoint="node") == 1
        before = _value(first, "mevwatch_mempool_txpool_transactions", state="pending")
        assert before is not None
        await asyncio.to_thread(_send, anvil_no_mining)
        await asyncio.to_thread(_send, anvil_no_mining)
        second = await c.collect()
    finally:
        await c.close()
    assert _value(second, "mevwatch_mempool_filter_last_hashes", endpoint="node") == 2
    assert _value(second, "mevwatch_mempool_filter_hashes_total", endpoint="node") == 2
    assert _value(second, "mevwatch_mempool_txpool_transactions", state="pending") == before + 2
    assert _value(second, "mevwatch_mempool_txpool_transactions", state="queued") == 0
    assert _value(second, "mevwatch_mempool_method_supported", method="txpool_status") == 1


async def test_forgotten_filter_is_recreated(anvil_no_mining: Anvil) -> None:  # noqa: F811
    c = _mempool(anvil_no_mining.url)
    try:
        await c.collect()
        assert c._filter_id is not None
        # The node forgets the filter (as after its expiry or a node restart).
        await asyncio.to_thread(anvil_no_mining.rpc, "eth_uninstallFilter", [c._filter_id])
        fams = await c.collect()
    finally:
        await c.close()
    assert _value(fams, "mevwatch_mempool_filter_up") == 1
    assert _value(fams, "mevwatch_mempool_filter_recreated_total") == 1
    assert _value(fams, "mevwatch_mempool_errors_total") is None


async def test_unsupported_txpool_reported_once(proxy: RpcProxy) -> None:
    proxy.set("txpool_status", Fault(rpc_error=(-32601, "the method txpool_status does not exist")))
    c = _mempool(proxy.url)
    try:
        for _ in range(3):
            fams = await c.collect()
    finally:
        await c.close()
    assert proxy.calls["txpool_status"] == 1  # not asked again until unsupported_retry
    assert _value(fams, "mevwatch_mempool_method_supported", method="txpool_status") == 0
    assert _value(fams, "mevwatch_mempool_errors_total", method="txpool_status",
                  **{"class": "method_not_supported"}) == 1
    assert _value(fams, "mevwatch_mempool_txpool_transactions") is None
    assert _value(fams, "mevwatch_mempool_filter_up") == 1  # the filter check is unaffected


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [
        (Fault(non_json=True), "invalid_response"),
        (Fault(wrong_id=True), "invalid_response"),
        (Fault(result="0x12"), "invalid_response"),
        (Fault(rpc_error=(-32000, "txpool overloaded")), "rpc_error"),
        (Fault(oversized=True), "invalid_response"),
    ],
)
async def test_malformed_filter_answers_are_classified(proxy: RpcProxy, fault: Fault, error_class: str) -> None:
    proxy.set("eth_getFilterChanges", fault)
    c = _mempool(proxy.url)
    try:
        fams = await c.collect()
    finally:
        await c.close()
    assert _value(fams, "mevwatch_mempool_filter_up") == 0
    assert _value(fams, "mevwatch_mempool_errors_total", method="eth_getFilterChanges",
                  **{"class": error_class}) == 1
    assert _value(fams, "mevwatch_mempool_txpool_transactions", state="pending") is not None


async def test_hung_node_fails_the_run_within_the_timeout(proxy: RpcProxy) -> None:
    proxy.set("*", Fault(hang=True))
    c = _mempool(proxy.url, timeout=0.3)
    try:
        t0 = time.monotonic()
        with pytest.raises(CollectorError) as err:
            await c.collect()
        elapsed = time.monotonic() - t0
    finally:
        await c.close()
    assert err.value.reason == "timeout"
    assert elapsed < 0.3 + 0.1  # the filter and txpool checks wait out their timeouts side by side


async def test_refused_node_is_one_clear_failure() -> None:
    c = _mempool(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(CollectorError) as err:
            await c.collect()
    finally:
        await c.close()
    assert err.value.reason == "refused"
    assert "refused" in err.value.message


# --- the WS stream -----------------------------------------------------------------------------


class _Emits:
    def __init__(self) -> None:
        self.last: Families = []
        self.count = 0

    def __call__(self, families: Families) -> None:
        self.last = families
        self.count += 1

    async def until(self, pred: Callable[[Families], bool], timeout: float = 5.0) -> Families:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.last and pred(self.last):
                return self.last
            await asyncio.sleep(0.02)
        raise AssertionError(f"condition not met in {timeout}s; last: {_dump(self.last)}")


def _dump(families: Families) -> str:
    return "; ".join(f"{s.name}{s.labels}={s.value}" for f in families for s in f.samples)


def _stream(url: str, **opts: Any) -> MempoolStreamCollector:
    options = MempoolStreamOptions.model_validate(
        {"endpoint": {"name": "node", "url": url, "timeout": 1.0, "connect_timeout": 1.0},
         "rate_window": "1s", "baseline_window": "5s", "reconnect_min": "50ms", "reconnect_max": "200ms", **opts}
    )
    ctx = CollectorContext(kind="mempool_stream", instance="t", interval=0.05, timeout=1.0)
    return MempoolStreamCollector(ctx, options)


async def test_stream_counts_notifications_and_reconnects_after_a_drop(proxy: RpcProxy,
                                                                       anvil_no_mining: Anvil) -> None:  # noqa: F811
    c = _stream(proxy.ws_url)
    emits = _Emits()
    task = asyncio.create_task(c.run(emits))
    try:
        await emits.until(lambda f: _value(f, "mevwatch_mempool_stream_up") == 1)
        for _ in range(3):
            await asyncio.to_thread(_send, anvil_no_mining)
        fams = await emits.until(lambda f: _value(f, "mevwatch_mempool_stream_notifications_total") == 3)
        assert _value(fams, "mevwatch_mempool_stream_last_notification_age_seconds") is not None
        assert _value(fams, "mevwatch_mempool_stream_notifications_per_second") is not None

        await proxy.drop_websockets()
        fams = await emits.until(lambda f: _value(f, "mevwatch_mempool_stream_up") == 0)
        assert _value(fams, "mevwatch_mempool_stream_errors_total", **{"class": "reset"}) == 1
        fams = await emits.until(lambda f: _value(f, "mevwatch_mempool_stream_reconnects_total") == 1
                                 and _value(f, "mevwatch_mempool_stream_up") == 1)
        await asyncio.to_thread(_send, anvil_no_mining)
        fams = await emits.until(lambda f: _value(f, "mevwatch_mempool_stream_notifications_total") == 4)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await c.close()


async def test_stream_gap_grows_while_the_node_is_silent(proxy: RpcProxy) -> None:
    c = _stream(proxy.ws_url)
    emits = _Emits()
    task = asyncio.create_task(c.run(emits))
    try:
        await emits.until(lambda f: _value(f, "mevwatch_mempool_stream_up") == 1)
        fams = await emits.until(
            lambda f: (_value(f, "mevwatch_mempool_stream_last_notification_age_seconds") or 0) > 0.3)
        assert _value(fams, "mevwatch_mempool_stream_notifications_total") == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await c.close()


async def test_stream_to_a_dead_node_stays_down_and_keeps_trying() -> None:
    c = _stream(f"ws://127.0.0.1:{free_port()}")
    emits = _Emits()
    task = asyncio.create_task(c.run(emits))
    try:
        fams = await emits.until(
            lambda f: (_value(f, "mevwatch_mempool_stream_errors_total", **{"class": "refused"}) or 0) >= 2)
        assert _value(fams, "mevwatch_mempool_stream_up") == 0
        assert _value(fams, "mevwatch_mempool_stream_reconnects_total") == 0
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await c.close()


async def test_subscription_refused_by_the_node(proxy: RpcProxy) -> None:
    proxy.set("eth_subscribe", Fault(rpc_error=(-32601, "subscriptions not supported")))
    c = _stream(proxy.ws_url)
    emits = _Emits()
    task = asyncio.create_task(c.run(emits))
    try:
        fams = await emits.until(lambda f: (_value(
            f, "mevwatch_mempool_stream_errors_total", **{"class": "method_not_supported"}) or 0) >= 1)
        assert _value(fams, "mevwatch_mempool_stream_up") == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await c.close()


class _PacedNode:
    """A WebSocket node pushing newPendingTransactions at ``rate`` per second, changeable while it runs."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.port = free_port()
        self._credit = 0.0
        self._runner: web.AppRunner | None = None

    async def _push(self, ws: web.WebSocketResponse) -> None:
        n = 0
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not ws.closed:
            await asyncio.sleep(0.01)
            # credit by the time that really passed: a loaded machine wakes late, and the rate must hold
            now = loop.time()
            self._credit += self.rate * (now - last)
            last = now
            while self._credit >= 1:
                self._credit -= 1
                n += 1
                await ws.send_json({"jsonrpc": "2.0", "method": "eth_subscription",
                                    "params": {"subscription": "0x1", "result": f"0x{n:064x}"}})

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        pusher = None
        async for msg in ws:
            req = msg.json()
            await ws.send_json({"jsonrpc": "2.0", "id": req["id"], "result": "0x1"})
            pusher = pusher or asyncio.create_task(self._push(ws))
        if pusher is not None:
            pusher.cancel()
        return ws

    async def __aenter__(self) -> _PacedNode:
        app = web.Application()
        app.router.add_get("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_stream_thinning_to_a_fraction_shows_in_the_ratio() -> None:
    async with _PacedNode(rate=400) as node:
        c = _stream(f"ws://127.0.0.1:{node.port}/", rate_window="500ms", baseline_window="3s")
        emits = _Emits()
        task = asyncio.create_task(c.run(emits))
        try:
            fams = await emits.until(lambda f: _value(f, "mevwatch_mempool_stream_rate_ratio") is not None)
            await asyncio.sleep(0.7)
            fams = emits.last
            usual = _value(fams, "mevwatch_mempool_stream_notifications_per_second")
            assert usual is not None
            assert 250 < usual < 550
            node.rate = 40  # silently thins to a tenth: no error, no disconnect
            fams = await emits.until(
                lambda f: (_value(f, "mevwatch_mempool_stream_rate_ratio") or 1.0) < 0.3, timeout=3.0)
            assert _value(fams, "mevwatch_mempool_stream_up") == 1
            average = _value(fams, "mevwatch_mempool_stream_notifications_per_second_average")
            assert average is not None
            assert average > 150  # the trailing average still remembers the usual level
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await c.close()


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [
        (Fault(hang=True), "timeout"),
        (Fault(oversized=True), "invalid_response"),
        (Fault(result=12), "invalid_response"),
        (Fault(drop_ws=True), "reset"),
        (Fault(close_mid_response=True), "reset"),
        (Fault(rpc_error=(-32000, "too many subscriptions")), "rpc_error"),
    ],
)
async def test_subscription_faults_are_classified_and_retried(proxy: RpcProxy, fault: Fault,
                                                             error_class: str) -> None:
    proxy.set("eth_subscribe", fault)
    c = _stream(proxy.ws_url, endpoint={"name": "node", "url": proxy.ws_url, "timeout": 0.3,
                                        "connect_timeout": 0.3, "max_response_bytes": "1MiB"})
    emits = _Emits()
    task = asyncio.create_task(c.run(emits))
    try:
        fams = await emits.until(lambda f: (_value(
            f, "mevwatch_mempool_stream_errors_total", **{"class": error_class}) or 0) >= 1)
        assert _value(fams, "mevwatch_mempool_stream_up") == 0
        proxy.clear("eth_subscribe")
        await emits.until(lambda f: _value(f, "mevwatch_mempool_stream_up") == 1)
        assert not task.done()  # nothing escaped the collector
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await c.close()
