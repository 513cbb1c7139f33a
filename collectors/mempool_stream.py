"""The node's WebSocket ``newPendingTransactions`` stream: notifications, rate vs its own recent level, gaps.

A stream that silently thins out to a fraction of its usual rate is a real failure (go-ethereum #22950,
erigon #3373), so besides the counter the rate and its ratio to a trailing average are exported.
The collector reconnects by itself (counting reconnects) so that the gap and ``up 0`` stay visible.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from mevwatch.aio import cancel_and_wait
from mevwatch.collectors._jsonrpc import Endpoint, RpcError, WsRpc
from mevwatch.collectors.base import CollectorContext, CollectorOptions, Emit, Families, MetricSpec, StreamCollector
from mevwatch.collectors.registry import register
from mevwatch.families import CounterMetricFamily, GaugeMetricFamily, Metric
from mevwatch.fields import Duration

__all__ = ["MempoolStreamCollector", "MempoolStreamOptions", "RateTracker"]


@dataclass(slots=True)
class RateTracker:
    """Rate of a counter over a sliding window, and a trailing average of that rate (EWMA).

    ``update(now, count)`` is called once per emit; the ratio compares the current rate with the
    stream's own recent level, so one rule works for a busy mainnet node and a quiet testnet.
    """

    window: float
    baseline: float
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    rate: float | None = None
    average: float | None = None
    _last_t: float | None = None

    def update(self, now: float, count: int) -> None:
        self.samples.append((now, count))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        t0, c0 = self.samples[0]
        if now - t0 <= 0:
            return
        self.rate = (count - c0) / (now - t0)
        if self.average is None:
            # Wait for one full window before seeding the average, so a short first window does not set it.
            if now - t0 >= self.window:
                self.average = self.rate
        elif self._last_t is not None:
            alpha = min(1.0, (now - self._last_t) / self.baseline)
            self.average += alpha * (self.rate - self.average)
        self._last_t = now

    def reset_window(self) -> None:
        """After a reconnect the window restarts; the average (the stream's usual level) is kept."""
        self.samples.clear()
        self.rate = None
        self._last_t = None

    @property
    def ratio(self) -> float | None:
        if self.rate is None or not self.average:
            return None
        return self.rate / self.average


class MempoolStreamOptions(CollectorOptions):
    endpoint: Endpoint = Field(
        default_factory=lambda: Endpoint(name="local", url="ws://127.0.0.1:8546"),
        description="WebSocket JSON-RPC endpoint of the execution node (ws:// or wss://)",
    )
    rate_window: Duration = Field(60.0, description="window of the notifications-per-second rate")
    baseline_window: Duration = Field(
        1800.0, description="time constant of the trailing average the rate is compared with"
    )
    reconnect_min: Duration = Field(0.5, description="first wait before reconnecting a dropped stream")
    reconnect_max: Duration = Field(30.0, description="longest wait between reconnect attempts")

    @field_validator("endpoint")
    @classmethod
    def _ws(cls, v: Endpoint) -> Endpoint:
        if not v.websocket:
            raise ValueError(f"the pending-transaction stream needs a ws:// or wss:// URL, got {v.safe_url!r}")
        return v

    @model_validator(mode="after")
    def _windows(self) -> MempoolStreamOptions:
        if self.rate_window <= 0 or self.baseline_window <= 0:
            raise ValueError("rate_window and baseline_window must be greater than 0")
        if self.baseline_window < self.rate_window:
            raise ValueError("baseline_window must not be shorter than rate_window")
        if not 0 < self.reconnect_min <= self.reconnect_max:
            raise ValueError("reconnect_min must be greater than 0 and not above reconnect_max")
        return self


MEMPOOL_STREAM_UP = MetricSpec(
    "mevwatch_mempool_stream_up", "gauge",
    "1 while the newPendingTransactions subscription is open",
    ("endpoint",),
)

MEMPOOL_STREAM_DOWN_REASON = MetricSpec(
    "mevwatch_mempool_stream_down_reason", "gauge",
    "1 for the error class that ended the subscription or its last reconnect attempt (refused, timeout, "
    "reset, http_status, rpc_error, ...) while it is down; absent while it is open",
    ("endpoint", "reason"),
)

MEMPOOL_STREAM_NOTIFICATIONS = MetricSpec(
    "mevwatch_mempool_stream_notifications", "counter",
    "newPendingTransactions notifications received",
    ("endpoint",),
)

MEMPOOL_STREAM_RECONNECTS = MetricSpec(
    "mevwatch_mempool_stream_reconnects", "counter",
    "Times the subscription was re-established after a drop",
    ("endpoint",),
)

MEMPOOL_STREAM_DROPPED_NOTIFICATIONS = MetricSpec(
    "mevwatch_mempool_stream_dropped_notifications", "counter",
    "Notifications dropped because mevwatch fell behind reading them",
    ("endpoint",),
)

MEMPOOL_STREAM_LAST_NOTIFICATION_AGE_SECONDS = MetricSpec(
    "mevwatch_mempool_stream_last_notification_age_seconds", "gauge",
    "Seconds since the last notification (or since subscribing, before the first)",
    ("endpoint",),
)

MEMPOOL_STREAM_LAST_NOTIFICATION_TIMESTAMP_SECONDS = MetricSpec(
    "mevwatch_mempool_stream_last_notification_timestamp_seconds", "gauge",
    "Unix time of the last notification",
    ("endpoint",),
)

MEMPOOL_STREAM_NOTIFICATIONS_PER_SECOND = MetricSpec(
    "mevwatch_mempool_stream_notifications_per_second", "gauge",
    "Notification rate over rate_window",
    ("endpoint",),
)

MEMPOOL_STREAM_NOTIFICATIONS_PER_SECOND_AVERAGE = MetricSpec(
    "mevwatch_mempool_stream_notifications_per_second_average", "gauge",
    "Trailing average of the notification rate (time constant baseline_window)",
    ("endpoint",),
)

MEMPOOL_STREAM_RATE_RATIO = MetricSpec(
    "mevwatch_mempool_stream_rate_ratio", "gauge",
    "Current notification rate divided by its trailing average (1: usual level)",
    ("endpoint",),
)

MEMPOOL_STREAM_ERRORS = MetricSpec(
    "mevwatch_mempool_stream_errors", "counter",
    "Stream failures by error class",
    ("endpoint", "class"),
)


@register
class MempoolStreamCollector(StreamCollector[MempoolStreamOptions]):
    kind: ClassVar[str] = "mempool_stream"
    Options = MempoolStreamOptions
    default_interval: ClassVar[float] = 5.0
    default_timeout: ClassVar[float] = 5.0
    default_enabled: ClassVar[bool] = False
    runbook_section = "mempool"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MEMPOOL_STREAM_UP,
        MEMPOOL_STREAM_DOWN_REASON,
        MEMPOOL_STREAM_NOTIFICATIONS,
        MEMPOOL_STREAM_RECONNECTS,
        MEMPOOL_STREAM_DROPPED_NOTIFICATIONS,
        MEMPOOL_STREAM_LAST_NOTIFICATION_AGE_SECONDS,
        MEMPOOL_STREAM_LAST_NOTIFICATION_TIMESTAMP_SECONDS,
        MEMPOOL_STREAM_NOTIFICATIONS_PER_SECOND,
        MEMPOOL_STREAM_NOTIFICATIONS_PER_SECOND_AVERAGE,
        MEMPOOL_STREAM_RATE_RATIO,
        MEMPOOL_STREAM_ERRORS,
    )

    def __init__(self, ctx: CollectorContext, options: MempoolStreamOptions) -> None:
        super().__init__(ctx, options)
        self.notifications = 0
        self.reconnects = 0
        self.connected = False
        self.last_notification_wall: float | None = None
        self.subscribed_wall: float | None = None
        self.errors: dict[str, int] = {}
        self.down_reason: str | None = None  # the class of the failure that has the stream down now
        self.dropped = 0
        self.rate = RateTracker(options.rate_window, options.baseline_window)
        self._ws: WsRpc | None = None
        self._sessions = 0
        self._logged_down = False

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    def families(self) -> Families:
        ep = self.options.endpoint.name
        now = time.time()

        def gauge(spec: MetricSpec, value: float) -> GaugeMetricFamily:
            g = spec.gauge()
            g.add_metric([ep], value)
            return g

        def counter(spec: MetricSpec, value: float) -> CounterMetricFamily:
            c = spec.counter()
            c.add_metric([ep], value)
            return c

        out: list[Metric] = [
            gauge(MEMPOOL_STREAM_UP,
                  1.0 if self.connected else 0.0),
            counter(MEMPOOL_STREAM_NOTIFICATIONS,
                    float(self.notifications)),
            counter(MEMPOOL_STREAM_RECONNECTS,
                    float(self.reconnects)),
            counter(MEMPOOL_STREAM_DROPPED_NOTIFICATIONS, float(self.dropped)),
        ]
        down = MEMPOOL_STREAM_DOWN_REASON.gauge()
        if not self.connected and self.down_reason is not None:
            down.add_metric([ep, self.down_reason], 1.0)
        out.append(down)
        since = self.last_notification_wall or self.subscribed_wall
        if since is not None:
            out.append(gauge(MEMPOOL_STREAM_LAST_NOTIFICATION_AGE_SECONDS,
                             max(0.0, now - since)))
        if self.last_notification_wall is not None:
            out.append(gauge(MEMPOOL_STREAM_LAST_NOTIFICATION_TIMESTAMP_SECONDS, self.last_notification_wall))
        if self.rate.rate is not None:
            out.append(gauge(MEMPOOL_STREAM_NOTIFICATIONS_PER_SECOND, self.rate.rate))
        if self.rate.average is not None:
            out.append(gauge(MEMPOOL_STREAM_NOTIFICATIONS_PER_SECOND_AVERAGE,
                             self.rate.average))
        ratio = self.rate.ratio
        if ratio is not None:
            out.append(gauge(MEMPOOL_STREAM_RATE_RATIO, ratio))
        errors = MEMPOOL_STREAM_ERRORS.counter()
        for cls, n in sorted(self.errors.items()):
            errors.add_metric([ep, cls], float(n))
        out.append(errors)
        return out

    async def _ticker(self, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.rate.update(loop.time(), self.notifications)
            emit(self.families())
            await asyncio.sleep(self.ctx.interval)

    async def _consume(self) -> None:
        """One connection: subscribe, then count notifications until the socket drops."""
        ws = WsRpc(self.options.endpoint)
        self._ws = ws
        try:
            await ws.connect()
            await ws.subscribe("newPendingTransactions")
            self.connected = True
            self.down_reason = None
            self._logged_down = False
            self.subscribed_wall = time.time()
            if self._sessions:
                self.reconnects += 1
                self.rate.reset_window()
                self.ctx.log.info("mempool_stream_reconnected", endpoint=self.options.endpoint.name)
            self._sessions += 1
            async for _ in ws.notifications():
                self.notifications += 1
                self.last_notification_wall = time.time()
                self.dropped = ws.dropped
        finally:
            self.connected = False
            self.dropped = ws.dropped if ws.dropped > self.dropped else self.dropped
            self._ws = None
            await ws.close()

    async def run(self, emit: Emit) -> None:
        ticker = asyncio.create_task(self._ticker(emit), name=f"mempool_stream:{self.ctx.instance}:ticker")
        delay = self.options.reconnect_min
        try:
            while True:
                started = time.monotonic()
                try:
                    await self._consume()
                    error_class = "exited"
                except RpcError as exc:
                    error_class = exc.error_class.value
                    if not self._logged_down:  # once per outage, not once per reconnect attempt
                        self._logged_down = True
                        self.ctx.log.info("mempool_stream_down", endpoint=self.options.endpoint.name,
                                          reason=error_class, error=exc.message)
                self.errors[error_class] = self.errors.get(error_class, 0) + 1
                self.down_reason = error_class
                emit(self.families())
                if time.monotonic() - started > self.options.reconnect_max:
                    delay = self.options.reconnect_min  # it was up for a while: reconnect quickly
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, self.options.reconnect_max)
        finally:
            await cancel_and_wait(ticker)
