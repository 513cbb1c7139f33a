"""A scrape only reads: many GETs of /metrics (and of the other read-only pages) run no collector,
put nothing into the store and write nothing to the state DB, while every timer is far away.

The real daemon, in this process so that its collectors, store and state DB can be watched: the
host collectors and the alert engine with the default rules, all on a one-hour schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import mevwatch.daemon.runtime as runtime
from mevwatch.aio import wait_for
from mevwatch.daemon.config import load_config_text
from mevwatch.daemon.runtime import Daemon
from tests.support.peers import free_port

SCRAPES = 300
ACCEPT: tuple[dict[str, str], ...] = (
    {},
    {"Accept-Encoding": "gzip"},
    {"Accept": "application/openmetrics-text; version=1.0.0"},
    {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"},
)


async def _settled(daemon: Daemon) -> None:
    """Until the first runs are in and the store stands still (the last self-metrics and alert puts)."""
    for _ in range(400):
        if daemon.supervisor is not None and daemon.supervisor.ready and daemon.components:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the daemon did not become ready")
    seq = -1
    while seq != daemon.store.seq:
        seq = daemon.store.seq
        await asyncio.sleep(0.2)


async def test_scrapes_run_no_collector_and_write_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "HEARTBEAT_INTERVAL", 3600.0)  # its self-metrics put: far away too
    port = free_port()
    config = load_config_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"web: {{listen_address: '127.0.0.1:{port}'}}\n"
        "alerts: {evaluation_interval: 1h}\n"
        "collectors:\n" + "".join(f"  - {k}: {{interval: 1h}}\n" for k in ("memory", "cpu", "filesystems", "process")),
        str(tmp_path / "mevwatch.yaml"),
    )
    daemon = Daemon(config)
    main = asyncio.create_task(daemon.main())
    try:
        await _settled(daemon)
        assert daemon.supervisor is not None
        assert daemon.state is not None
        runs = {key: 0 for key in daemon.supervisor.collectors}
        for key, collector in daemon.supervisor.collectors.items():
            collect = collector.collect  # type: ignore[attr-defined]

            def counting(key: tuple[str, str] = key, collect: Any = collect) -> Any:
                runs[key] += 1
                return collect()

            monkeypatch.setattr(collector, "collect", counting)
        puts: list[tuple[str, str]] = []
        put = daemon.store.put

        def counting_put(key: tuple[str, str], families: Iterable[Any], interval: float) -> Any:
            puts.append(key)
            return put(key, families, interval)

        monkeypatch.setattr(daemon.store, "put", counting_put)
        seq, db_changes = daemon.store.seq, daemon.state.total_changes

        async with aiohttp.ClientSession() as session:
            for i in range(SCRAPES):
                async with session.get(f"http://127.0.0.1:{port}/metrics", headers=ACCEPT[i % len(ACCEPT)]) as r:
                    body = await r.read()
                    assert r.status == 200
                    assert b"mevwatch_memory_total_bytes" in body or r.headers.get("Content-Encoding") == "gzip"
                for path in ("/", "/health", "/-/ready"):
                    async with session.get(f"http://127.0.0.1:{port}{path}") as r:
                        assert r.status == 200
            for _ in range(5):
                await asyncio.sleep(0)  # anything a scrape scheduled has run by now

        assert runs == dict.fromkeys(runs, 0)
        assert puts == []
        assert daemon.store.seq == seq
        assert daemon.state.total_changes == db_changes
    finally:
        daemon._stop.set()
        with contextlib.suppress(Exception):
            await wait_for(main, 10.0)
