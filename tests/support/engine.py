"""A stand-in MEV engine HTTP API (``/health``, ``/api/v2/opportunities``) that tests can slow down and break.

Behaviour is set per path at any time: a delay, an HTTP status, a hang, a non-JSON or oversized body.
Runs on the test's event loop (``async with EngineStub()``) or on its own thread (``with EngineStub()``)
for tests that drive a mevwatch subprocess.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.peers import free_port

__all__ = ["Behaviour", "EngineStub"]


@dataclass
class Behaviour:
    delay: float = 0.0
    status: int = 200
    body: Any = None  # JSON-encoded unless raw is set
    raw: bytes | None = None
    hang: bool = False
    content_type: str = "application/json"


@dataclass
class EngineStub:
    port: int = field(default_factory=free_port)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _release: asyncio.Event | None = None

    def __post_init__(self) -> None:
        self.behaviours.setdefault("/health", Behaviour(body={"status": "ok", "uptime": 12}))
        self.behaviours.setdefault("/api/v2/opportunities", Behaviour(body=[{"id": 1, "profit_wei": "10"}]))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def set(self, path: str, **changes: Any) -> None:
        """Replace the behaviour of ``path`` (unspecified fields take their defaults)."""
        base = Behaviour(body=self.behaviours[path].body) if path in self.behaviours else Behaviour()
        for k, v in changes.items():
            setattr(base, k, v)
        self.behaviours[path] = base

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] = self.hits.get(path, 0) + 1
        b = self.behaviours.get(path)
        if b is None:
            return web.Response(status=404, text="not found")
        if b.hang:
            assert self._release is not None
            await self._release.wait()
        if b.delay:
            await asyncio.sleep(b.delay)
        data = b.raw if b.raw is not None else json.dumps(b.body).encode()
        return web.Response(status=b.status, body=data, content_type=b.content_type)

    async def start(self) -> None:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._release is not None:
            self._release.set()  # let hung handlers finish so the runner can close
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> EngineStub:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # --- on its own thread, for subprocess tests ---------------------------------------------

    def __enter__(self) -> EngineStub:
        started = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the caller below
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=main, name="engine-stub", daemon=True)
        self._thread.start()
        started.wait(10)
        if errors:
            raise errors[0]
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
