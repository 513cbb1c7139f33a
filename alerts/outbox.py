"""The durable outbox: every notification is in the state DB before it is sent, and leaves only when acked.

One worker per sink sends in order (a resolve never overtakes its firing), retries 5xx, timeouts
and connection errors with capped exponential backoff and jitter, and dead-letters what the
receiver refused (4xx) or what stayed undeliverable for ``give_up_after``. Notification ids are
stable, so an entry written twice (restart in the middle of a flush) is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from mevwatch.alerts.config import OutboxConfig
from mevwatch.alerts.sinks.base import DeliveryError, Sink
from mevwatch.daemon.state import StateDB, StateError

__all__ = ["MIGRATIONS", "Outbox", "OutboxEntry", "backoff_delay"]

log = structlog.get_logger("mevwatch.alerts")

MIGRATIONS = [
    """
    CREATE TABLE alert_outbox (
        id TEXT PRIMARY KEY,
        sink TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX alert_outbox_due ON alert_outbox (sink, created_at);
    CREATE TABLE alert_dead_letters (
        id TEXT PRIMARY KEY,
        sink TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL,
        dead_at REAL NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT NOT NULL
    )
    """,
]


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: str
    sink: str
    payload: dict[str, Any]


def backoff_delay(attempts: int, initial: float, cap: float, rand: Callable[[float, float], float] = random.uniform
                  ) -> float:
    """Delay before retry number ``attempts`` (1-based): doubling from ``initial``, capped, jittered to 50-100%."""
    base = min(cap, initial * (2 ** max(attempts - 1, 0)))
    return rand(base / 2, base)


class Outbox:
    def __init__(self, state: StateDB, sinks: Iterable[Sink], config: OutboxConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.sinks: dict[str, Sink] = {s.name: s for s in sinks}
        self.config = config
        self.clock = clock
        self.sent: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.dead: Counter[str] = Counter()
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        state.migrate("alerts_outbox", MIGRATIONS)

    # --- writing ----------------------------------------------------------------------

    def enqueue(self, entries: Iterable[OutboxEntry]) -> int:
        """Persist entries (one transaction) and wake their workers; returns how many were new."""
        now = self.clock()
        new = 0
        rows = list(entries)
        if not rows:
            return 0
        with self.state.transaction() as db:
            for e in rows:
                cur = db.execute(
                    "INSERT OR IGNORE INTO alert_outbox (id, sink, payload, created_at, next_attempt_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (e.id, e.sink, json.dumps(e.payload), now, now),
                )
                new += cur.rowcount
        for e in rows:
            ev = self._wake.get(e.sink)
            if ev is not None:
                ev.set()
        return new

    # --- reading ----------------------------------------------------------------------

    def depth(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in self.state.query("SELECT sink, COUNT(*) FROM alert_outbox GROUP BY sink")}

    def oldest_created(self) -> float | None:
        """Creation time of the oldest notification not yet acknowledged, None when the outbox is empty."""
        row = self.state.query("SELECT MIN(created_at) FROM alert_outbox")
        return float(row[0][0]) if row and row[0][0] is not None else None

    def oldest_age(self) -> float:
        oldest = self.oldest_created()
        return max(self.clock() - oldest, 0.0) if oldest is not None else 0.0

    def dead_letters(self) -> list[dict[str, Any]]:
        rows = self.state.query("SELECT id, sink, error, attempts, dead_at FROM alert_dead_letters ORDER BY dead_at")
        return [{"id": r[0], "sink": r[1], "error": r[2], "attempts": r[3], "dead_at": r[4]} for r in rows]

    # --- delivery ---------------------------------------------------------------------

    async def start(self) -> None:
        known = list(self.sinks)
        orphans = self.state.query(
            f"SELECT id FROM alert_outbox WHERE sink NOT IN ({','.join('?' * len(known))})", known
        ) if known else self.state.query("SELECT id FROM alert_outbox")
        for (oid,) in orphans:
            self._dead_letter(str(oid), "the sink is no longer configured")
        for name, sink in self.sinks.items():
            self._wake[name] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._worker(sink), name=f"outbox:{name}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        for sink in self.sinks.values():
            with contextlib.suppress(Exception):
                await sink.close()

    def _next(self, sink: str) -> tuple[str, dict[str, Any], int, float, float] | None:
        rows = self.state.query(
            "SELECT id, payload, attempts, created_at, next_attempt_at FROM alert_outbox "
            "WHERE sink = ? ORDER BY created_at, id LIMIT 1",
            (sink,),
        )
        if not rows:
            return None
        r = rows[0]
        return str(r[0]), json.loads(r[1]), int(r[2]), float(r[3]), float(r[4])

    async def _worker(self, sink: Sink) -> None:
        wake = self._wake[sink.name]
        while True:
            try:
                item = self._next(sink.name)
            except StateError as exc:
                log.error("outbox_read_failed", sink=sink.name, error=str(exc))
                await asyncio.sleep(1.0)
                continue
            if item is None:
                wake.clear()
                await wake.wait()
                continue
            nid, payload, attempts, created, due = item
            wait = due - self.clock()
            if wait > 0:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait)
                continue
            try:
                await self._attempt(sink, nid, payload, attempts, created)
            except StateError as exc:  # a full disk must not kill the worker: retry once the DB writes again
                log.error("outbox_write_failed", sink=sink.name, id=nid, error=str(exc))
                await asyncio.sleep(1.0)

    async def _attempt(self, sink: Sink, nid: str, payload: dict[str, Any], attempts: int, created: float) -> None:
        wanted = sink.wants(payload)
        try:
            if wanted:
                await sink.send(payload, nid)
        except asyncio.CancelledError:
            raise
        except DeliveryError as exc:
            self._failure(sink, nid, attempts + 1, created, exc.message, exc.retry, exc.retry_after)
            return
        except Exception as exc:  # a sink bug must not stop delivery to the others
            log.exception("sink_bug", sink=sink.name)
            self._failure(sink, nid, attempts + 1, created, f"{type(exc).__name__}: {exc}", True)
            return
        self.state.execute("DELETE FROM alert_outbox WHERE id = ?", (nid,))
        if wanted:
            self.sent[sink.name] += 1
        if attempts:
            log.info("notification_delivered", sink=sink.name, id=nid, attempts=attempts + 1)

    def _failure(self, sink: Sink, nid: str, attempts: int, created: float, error: str, retry: bool,
                 retry_after: float | None = None) -> None:
        self.failed[sink.name] += 1
        now = self.clock()
        if not retry:
            log.error("notification_rejected", sink=sink.name, id=nid, error=error)
            self._dead_letter(nid, error)
            return
        if now - created > self.config.give_up_after:
            log.error("notification_expired", sink=sink.name, id=nid, attempts=attempts, error=error)
            self._dead_letter(nid, f"undeliverable for {self.config.give_up_after:g}s: {error}")
            return
        delay = backoff_delay(attempts, self.config.retry_initial, self.config.retry_max)
        if retry_after is not None:  # the receiver said when (429/503 Retry-After): not sooner
            delay = max(delay, retry_after)
        log.warning("notification_retry", sink=sink.name, id=nid, attempts=attempts, retry_in_s=round(delay, 2),
                    error=error)
        self.state.execute(
            "UPDATE alert_outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
            (attempts, now + delay, error, nid),
        )

    def _dead_letter(self, nid: str, error: str) -> None:
        with self.state.transaction() as db:
            row = db.execute(
                "SELECT sink, payload, created_at, attempts FROM alert_outbox WHERE id = ?", (nid,)
            ).fetchone()
            if row is None:
                return
            db.execute(
                "INSERT OR REPLACE INTO alert_dead_letters (id, sink, payload, created_at, dead_at, attempts, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (nid, row[0], row[1], row[2], self.clock(), row[3] + 1, error),
            )
            db.execute("DELETE FROM alert_outbox WHERE id = ?", (nid,))
        self.dead[str(row[0])] += 1

    def counters(self) -> Mapping[str, Counter[str]]:
        return {"sent": self.sent, "failed": self.failed, "dead_lettered": self.dead}
