"""A real aiohttp webhook receiver on a free loopback port, in its own thread, recording every request.

It answers with the statuses queued in ``statuses`` (then 200), so tests can make it fail for a
while; usable from sync tests (daemon subprocesses) and async ones alike.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.peers import free_port

__all__ = ["Received", "WebhookReceiver"]


@dataclass(frozen=True, slots=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float  # time.monotonic() on arrival

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    port: int = field(default_factory=free_port)
    statuses: deque[int] = field(default_factory=deque)
    requests: list[Received] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            status = self.statuses.popleft() if self.statuses else 200
            self.requests.append(Received(request.path, dict(request.headers), body, status, time.monotonic()))
        return web.Response(status=status, text="ok" if status < 300 else f"refused with {status}")

    def start(self) -> WebhookReceiver:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("POST", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            loop.run_until_complete(site.start())
            self._ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._ready.clear()
        self._thread = threading.Thread(target=run, name=f"webhook:{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("webhook receiver did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = None
        self._thread = None

    def delivered(self) -> list[Received]:
        """Requests answered with success."""
        with self._lock:
            return [r for r in self.requests if r.status < 300]

    def wait_delivered(self, n: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.delivered()
            if len(got) >= n:
                return got
            time.sleep(0.02)
        raise AssertionError(f"expected {n} delivered webhook(s) within {timeout}s, got {len(self.delivered())}: "
                             f"{[r.status for r in self.requests]}")

    async def wait_delivered_async(self, n: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.delivered()
            if len(got) >= n:
                return got
            await asyncio.sleep(0.02)
        raise AssertionError(f"expected {n} delivered webhook(s) within {timeout}s, got {len(self.delivered())}: "
                             f"{[r.status for r in self.requests]}")
