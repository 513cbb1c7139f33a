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
from tests.support.threadedapp import ThreadedApp

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
    _server: ThreadedApp | None = None
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

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        return app

    def start(self) -> WebhookReceiver:
        self._server = ThreadedApp("webhook receiver", self.port, self._app)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        self._server = None

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
