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

__all__ = ["Received", "WebhookReceiver", "webhook_v4_problems"]


_MESSAGE = {"version": str, "groupKey": str, "truncatedAlerts": int, "status": str, "receiver": str,
            "groupLabels": dict, "commonLabels": dict, "commonAnnotations": dict, "externalURL": str, "alerts": list}
_ALERT = {"status": str, "labels": dict, "annotations": dict, "startsAt": str, "endsAt": str,
          "generatorURL": str, "fingerprint": str}


def webhook_v4_problems(doc: Any) -> list[str]:
    """What makes ``doc`` not an Alertmanager webhook message (version 4, notify/webhook ``Message``)."""
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    out = [f"{k}: missing or not {t.__name__}" for k, t in _MESSAGE.items() if not isinstance(doc.get(k), t)]
    if doc.get("version") != "4":
        out.append(f"version {doc.get('version')!r}, not '4'")
    if doc.get("status") not in ("firing", "resolved"):
        out.append(f"status {doc.get('status')!r}")
    for i, a in enumerate(doc.get("alerts") or []):
        if not isinstance(a, dict):
            out.append(f"alerts[{i}]: not an object")
            continue
        out += [f"alerts[{i}].{k}: missing or not {t.__name__}" for k, t in _ALERT.items()
                if not isinstance(a.get(k), t)]
        for k in ("labels", "annotations"):
            if isinstance(a.get(k), dict) and not all(isinstance(v, str) for v in a[k].values()):
                out.append(f"alerts[{i}].{k}: a value is not a string")
    return out


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
