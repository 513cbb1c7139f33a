"""systemd integration via sd_notify: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

WATCHDOG=1 is sent only when the event loop runs on time and the supervisor's scheduler has
advanced recently, so a wedged daemon gets restarted by systemd instead of being kept alive
by a bare timer.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import structlog

__all__ = ["Notifier", "watchdog_interval"]

log = structlog.get_logger("mevwatch.systemd")


def watchdog_interval() -> float | None:
    """Half of WatchdogSec when systemd asked this process for keep-alives, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 1e6 / 2, 0.05)
    except ValueError:
        return None


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._n = None
        if self.enabled:
            import sdnotify

            self._n = sdnotify.SystemdNotifier()
        self._watchdog: asyncio.Task[None] | None = None
        self._status = ""  # the last STATUS= sent

    def send(self, *lines: str) -> None:
        if self._n is not None:
            self._n.notify("\n".join(lines))

    def ready(self, status: str) -> None:
        self._status = status
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """Send STATUS= if it differs from the last one sent."""
        if status != self._status:
            self._status = status
            self.send(f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def start_watchdog(self, heartbeat: Callable[[], float]) -> None:
        """Keep-alive while ``heartbeat()`` (a monotonic time) is recent and the loop is not lagging."""
        interval = watchdog_interval()
        if interval is None or self._n is None:
            return
        self._watchdog = asyncio.create_task(self._watch(interval, heartbeat), name="systemd:watchdog")

    async def _watch(self, interval: float, heartbeat: Callable[[], float]) -> None:
        loop = asyncio.get_running_loop()
        limit = interval * 2
        while True:
            before = loop.time()
            await asyncio.sleep(interval)
            lag = loop.time() - before - interval
            stale = time.monotonic() - heartbeat()
            if lag < limit and stale < limit:
                self.send("WATCHDOG=1")
            else:
                log.error("watchdog_withheld", loop_lag_s=round(lag, 3), supervisor_stale_s=round(stale, 3))

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
