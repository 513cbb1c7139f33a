"""The durable outbox: every notification is in the state DB before it is sent, and leaves only when acked.

One worker per sink sends in order (a resolve never overtakes its firing), retries 5xx, timeouts
and connection errors with capped exponential backoff and jitter, and dead-letters what the
receiver refused (4xx) or what stayed undeliverable for ``give_up_after``. A dead-lettered
notification is resent in full to its receiver's fallback receivers, as new outbox entries written
in the same transaction as the dead letter (so a crash between the two cannot lose or double them);
a fallback entry that is dead-lettered in turn goes nowhere else, so two refusing receivers cannot
bounce a notification between them. A notification left in the outbox of a sink that a config reload
removed is dead-lettered at start and resent to the fallback receivers of its receiver the same way (by
default the default receiver when its receiver is gone too), never dropped. Notification ids are stable,
so an entry written twice (restart in the middle of a flush) is stored once. While the state DB cannot be
written (a full disk) notifications are held in memory and still sent.

A refused notification is not split into one request per alert: Alertmanager does not either (its
notify retry stage gives up on the whole batch at the first unrecoverable error), and a webhook or
PagerDuty receiver reads each notification as the whole state of its group, so a part with one alert
would tell it the others ended. What the refusing receiver lost goes whole to the fallback receivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from mevwatch.aio import cancel_and_wait, wait_for
from mevwatch.alerts.config import OutboxConfig
from mevwatch.alerts.sinks.base import DeliveryError, Sink
from mevwatch.daemon.state import StateDB, StateError

__all__ = [
    "LOST_ALERT",
    "LOST_WINDOW",
    "MIGRATIONS",
    "Outbox",
    "OutboxEntry",
    "backoff_delay",
    "fallback_id",
    "fallback_payload",
    "is_fallback",
    "lost_alerts",
]

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


#: how long a dead-lettered notification is shown as lost (mevwatch_notification_lost)
LOST_WINDOW = 3600.0
#: the default rule that pages on mevwatch_notification_lost_timestamp_seconds
LOST_ALERT = "NotificationDeadLettered"
_LOST_SHOWN = 20  # dead letters shown at once (the most recent)
_LOST_NAMED = 3  # alerts named per dead letter, then "+N more"
_LOST_VALUE = 40  # characters of a label value
_NOT_KEY = frozenset({"alertname", "severity", "host"})  # labels every alert has: not what tells them apart


def lost_alerts(payload: Mapping[str, Any]) -> str:
    """What a notification carried, bounded: its firing alerts by name and key labels (the resolved ones
    when nothing fired), e.g. ``RpcEndpointDown{endpoint="dead"}, DiskFull{mountpoint="/"} +2 more``."""
    alerts = [a for a in payload.get("alerts", ()) if isinstance(a, Mapping)]
    firing = [a for a in alerts if a.get("status") == "firing"]
    shown = firing or alerts
    parts = []
    for a in shown[:_LOST_NAMED]:
        labels = a.get("labels") if isinstance(a.get("labels"), Mapping) else {}
        assert isinstance(labels, Mapping)
        keys = ",".join(f'{k}="{str(v)[:_LOST_VALUE]}"' for k, v in sorted(labels.items()) if k not in _NOT_KEY)
        parts.append(f"{str(labels.get('alertname', '?'))[:_LOST_VALUE]}{{{keys}}}")
    text = ", ".join(parts) or "no alerts"
    if len(shown) > _LOST_NAMED:
        text += f" +{len(shown) - _LOST_NAMED} more"
    return text if firing or not alerts else f"resolved: {text}"


_FALLBACK_MARK = "-fallback-"  # URL-safe: a chat sink may put the id in a URL path
_REASON_CHARS = 300  # of the refusal, in the fallback's annotations


def fallback_id(nid: str, sink: str) -> str:
    """The id of dead-lettered notification ``nid`` resent to ``sink``: the same every time, so the
    fallback is queued once however often the dead letter is looked at."""
    return f"{nid}{_FALLBACK_MARK}{hashlib.sha256(sink.encode()).hexdigest()[:12]}"


def is_fallback(nid: str) -> bool:
    return _FALLBACK_MARK in nid


def fallback_payload(payload: Mapping[str, Any], receiver: str, sink: str, reason: str) -> dict[str, Any]:
    """The notification ``sink`` gave up on, as sent to ``receiver`` instead: every alert in full (labels,
    annotations with the runbook and silence command, generatorURL, startsAt, value), each annotated with
    ``undelivered_to`` (the sink) and ``undelivered_reason`` (why it gave up)."""
    note = {"undelivered_to": sink, "undelivered_reason": reason[:_REASON_CHARS]}
    alerts = [{**a, "annotations": {**(a.get("annotations") or {}), **note}}
              for a in payload.get("alerts", ()) if isinstance(a, Mapping)]
    common = payload.get("commonAnnotations")
    return {**payload, "receiver": receiver, "alerts": alerts,
            "commonAnnotations": {**(common if isinstance(common, Mapping) else {}), **note}}


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


@dataclass(slots=True)
class _Row:
    """An outbox row held in memory while the state DB cannot be written."""

    sink: str
    payload: dict[str, Any]
    created: float
    attempts: int
    next_at: float
    last_error: str = ""


class Outbox:
    """The outbox. While the state DB cannot be written (a full disk), what it could not write is held
    in memory and sent from there; it is written (or deleted, or dead-lettered) in one transaction
    once the DB writes again, so nothing is lost or sent twice. StateDB logs the streak once."""

    def __init__(self, state: StateDB, sinks: Iterable[Sink], config: OutboxConfig,
                 clock: Callable[[], float] = time.time,
                 fallback: Mapping[str, Sequence[str]] | None = None,
                 orphan_fallback: Sequence[str] = ()) -> None:
        self.state = state
        self.sinks: dict[str, Sink] = {s.name: s for s in sinks}
        #: receiver -> the receivers that get what its sinks gave up on (AlertsConfig.fallback_receivers)
        self.fallback: Mapping[str, Sequence[str]] = fallback or {}
        #: where what a removed receiver's sinks left in the outbox goes (the default receiver)
        self.orphan_fallback: Sequence[str] = orphan_fallback
        self._fell_back: dict[str, frozenset[tuple[str, str]]] = {}  # Alertmanager sink -> what it last resent
        self.config = config
        self.clock = clock
        self.sent: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.dead: Counter[str] = Counter()
        self.resent: Counter[str] = Counter()  # fallback copies queued, by the sink they are queued for
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # what the DB does not know yet: new rows, retry schedules of its rows, rows gone from the
        # outbox (delivered: None; dead-lettered: the error, with the row when it never reached the DB)
        self._held: dict[str, _Row] = {}
        self._updates: dict[str, tuple[int, float, str]] = {}
        self._gone: dict[str, tuple[_Row | None, str | None]] = {}
        self._next_sync = 0.0
        #: bumped by every change of what is held in memory (the DB's total_changes does not see them)
        self.changes = 0
        #: called after a notification was queued or a delivery attempt ended (what the outbox's metrics show)
        self.on_change: Callable[[], None] | None = None
        state.migrate("alerts_outbox", MIGRATIONS)

    # --- writing ----------------------------------------------------------------------

    def enqueue(self, entries: Iterable[OutboxEntry]) -> int:
        """Persist entries (one transaction; held in memory if the DB cannot be written) and wake their
        workers; returns how many were new."""
        now = self.clock()
        new = 0
        rows = list(entries)
        if not rows:
            return 0
        self._sync(force=True)  # what is held goes first, in order
        try:
            with self.state.transaction() as db:
                for e in rows:
                    cur = db.execute(
                        "INSERT OR IGNORE INTO alert_outbox (id, sink, payload, created_at, next_attempt_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (e.id, e.sink, json.dumps(e.payload), now, now),
                    )
                    new += cur.rowcount
        except StateError:
            new = 0
            known = self._in_db([e.id for e in rows])
            for e in rows:
                if e.id not in known and e.id not in self._held and e.id not in self._gone:
                    self._held[e.id] = _Row(e.sink, e.payload, now, 0, now)
                    new += 1
            self.changes += 1
        for e in rows:
            ev = self._wake.get(e.sink)
            if ev is not None:
                ev.set()
        if self.on_change is not None:
            self.on_change()
        return new

    def _in_db(self, ids: list[str]) -> set[str]:
        rows = self.state.query(f"SELECT id FROM alert_outbox WHERE id IN ({','.join('?' * len(ids))})", ids)
        return {str(r[0]) for r in rows}

    def _sync(self, force: bool = False) -> None:
        """Write what is held in memory, in one transaction; kept for the next try if the DB still fails."""
        if not (self._held or self._updates or self._gone):
            return
        now = time.monotonic()
        if not force and now < self._next_sync:
            return
        self._next_sync = now + 1.0
        try:
            with self.state.transaction() as db:
                for nid, r in self._held.items():
                    self._insert_in(db, nid, r)
                for nid, (attempts, next_at, last_error) in self._updates.items():
                    db.execute("UPDATE alert_outbox SET attempts = ?, next_attempt_at = ?, last_error = ? "
                               "WHERE id = ?", (attempts, next_at, last_error, nid))
                for nid, (row, error) in self._gone.items():
                    self._remove_in(db, nid, row, error)
        except StateError:
            return
        self._held.clear()
        self._updates.clear()
        self._gone.clear()
        self.changes += 1

    @staticmethod
    def _insert_in(db: sqlite3.Connection, nid: str, r: _Row) -> None:
        db.execute(
            "INSERT OR IGNORE INTO alert_outbox (id, sink, payload, created_at, attempts, "
            "next_attempt_at, last_error) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (nid, r.sink, json.dumps(r.payload), r.created, r.attempts, r.next_at, r.last_error),
        )

    def _remove_in(self, db: sqlite3.Connection, nid: str, row: _Row | None, error: str | None) -> None:
        """Delete ``nid`` from the outbox (delivered, ``error`` None) or move it to the dead letters."""
        if error is not None:
            if row is not None:
                db.execute(
                    "INSERT OR REPLACE INTO alert_dead_letters (id, sink, payload, created_at, dead_at, attempts, "
                    "error) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (nid, row.sink, json.dumps(row.payload), row.created, self.clock(), row.attempts + 1, error),
                )
            else:
                db.execute(
                    "INSERT OR REPLACE INTO alert_dead_letters (id, sink, payload, created_at, dead_at, attempts, "
                    "error) SELECT id, sink, payload, created_at, ?, attempts + 1, ? FROM alert_outbox WHERE id = ?",
                    (self.clock(), error, nid),
                )
        db.execute("DELETE FROM alert_outbox WHERE id = ?", (nid,))

    def _remove(self, nid: str, error: str | None, resend: Mapping[str, _Row] | None = None) -> None:
        """Delete ``nid`` (delivered) or dead-letter it, queueing ``resend`` (its fallbacks) in the same
        transaction."""
        row = self._held.pop(nid, None)
        self._updates.pop(nid, None)
        if row is not None and error is None:
            self.changes += 1
            return  # delivered from memory: the DB never had it
        try:
            with self.state.transaction() as db:
                self._remove_in(db, nid, row, error)
                for fid, frow in (resend or {}).items():
                    self._insert_in(db, fid, frow)
        except StateError:
            self._gone[nid] = (row, error)
            for fid, frow in (resend or {}).items():
                self._held.setdefault(fid, frow)
            self.changes += 1

    def _schedule(self, nid: str, attempts: int, next_at: float, error: str) -> None:
        row = self._held.get(nid)
        if row is not None:
            row.attempts, row.next_at, row.last_error = attempts, next_at, error
            self.changes += 1
            return
        try:
            self.state.execute(
                "UPDATE alert_outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
                (attempts, next_at, error, nid),
            )
        except StateError:
            self._updates[nid] = (attempts, next_at, error)
            self.changes += 1

    # --- reading ----------------------------------------------------------------------

    def held(self) -> int:
        """Notifications (or their deliveries) held in memory because the state DB cannot be written."""
        return len(self._held) + len(self._updates) + len(self._gone)

    def depth(self) -> dict[str, int]:
        out = {str(s): int(n) for s, n in self.state.query("SELECT sink, COUNT(*) FROM alert_outbox GROUP BY sink")}
        if self._gone:
            gone = [nid for nid, (row, _) in self._gone.items() if row is None]
            for (sink,) in self.state.query(
                f"SELECT sink FROM alert_outbox WHERE id IN ({','.join('?' * len(gone))})", gone
            ) if gone else []:
                out[str(sink)] -= 1
        for row in self._held.values():
            out[row.sink] = out.get(row.sink, 0) + 1
        return {s: n for s, n in out.items() if n}

    def oldest_created(self) -> float | None:
        """Creation time of the oldest notification not yet acknowledged, None when the outbox is empty."""
        gone = list(self._gone)
        rows = self.state.query(
            f"SELECT MIN(created_at) FROM alert_outbox WHERE id NOT IN ({','.join('?' * len(gone))})", gone)
        times = [float(rows[0][0])] if rows and rows[0][0] is not None else []
        times += [r.created for r in self._held.values()]
        return min(times) if times else None

    def oldest_age(self) -> float:
        oldest = self.oldest_created()
        return max(self.clock() - oldest, 0.0) if oldest is not None else 0.0

    def dead_letters(self) -> list[dict[str, Any]]:
        rows = self.state.query("SELECT id, sink, error, attempts, dead_at FROM alert_dead_letters ORDER BY dead_at")
        return [{"id": r[0], "sink": r[1], "error": r[2], "attempts": r[3], "dead_at": r[4]} for r in rows]

    def lost(self, since: float) -> list[tuple[str, str, float]]:
        """The most recent notifications dead-lettered after ``since``: (sink, what they carried, when).

        Pages about lost notifications (``NotificationDeadLettered``) are not named, and a notification
        that carried nothing else is left out, as is one about the refusing sink itself (its alerts carry
        ``sink=<that sink>``): each would be raised, refused and raised again, as long as two receivers
        refuse. The log names them (``notification_dead_lettered``)."""
        rows = self.state.query(
            "SELECT sink, payload, dead_at FROM alert_dead_letters WHERE dead_at > ? ORDER BY dead_at DESC LIMIT ?",
            (since, _LOST_SHOWN * 4),
        )
        out: list[tuple[str, str, float]] = []
        for sink, payload, dead_at in rows:
            try:
                body = json.loads(payload)
            except ValueError:
                body = {}
            alerts = [a for a in body.get("alerts", ()) if isinstance(a, dict)] if isinstance(body, dict) else []
            if alerts and all(isinstance(a.get("labels"), dict) and a["labels"].get("sink") == sink for a in alerts):
                continue
            others = [a for a in alerts if not (isinstance(a.get("labels"), dict)
                                                and a["labels"].get("alertname") == LOST_ALERT)]
            if alerts and not others:
                continue
            out.append((str(sink), lost_alerts({"alerts": others}), float(dead_at)))
            if len(out) >= _LOST_SHOWN:
                break
        return out

    # --- delivery ---------------------------------------------------------------------

    async def start(self) -> None:
        known = list(self.sinks)
        orphans = self.state.query(
            f"SELECT id, sink, payload FROM alert_outbox WHERE sink NOT IN ({','.join('?' * len(known))})", known
        ) if known else self.state.query("SELECT id, sink, payload FROM alert_outbox")
        now = self.clock()
        for oid, osink, opayload in orphans:
            self._orphaned(str(oid), str(osink), str(opayload), now)
        for name, sink in self.sinks.items():
            self._wake[name] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._worker(sink), name=f"outbox:{name}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            await cancel_and_wait(t)
        self._tasks.clear()
        self._sync(force=True)
        for sink in self.sinks.values():
            with contextlib.suppress(Exception):
                await sink.close()

    def _next(self, sink: str) -> tuple[str, dict[str, Any], int, float, float] | None:
        """The sink's oldest notification, from the DB or from memory, as memory says it is now."""
        skip = len(self._gone)
        rows = self.state.query(
            "SELECT id, payload, attempts, created_at, next_attempt_at FROM alert_outbox "
            "WHERE sink = ? ORDER BY created_at, id LIMIT ?",
            (sink, skip + 1),
        )
        best: tuple[str, dict[str, Any], int, float, float] | None = None
        for r in rows:
            nid = str(r[0])
            if nid in self._gone:
                continue
            attempts, due = int(r[2]), float(r[4])
            if nid in self._updates:
                attempts, due, _ = self._updates[nid]
            best = (nid, json.loads(r[1]), attempts, float(r[3]), due)
            break
        for nid, row in self._held.items():
            if row.sink == sink and (best is None or (row.created, nid) < (best[3], best[0])):
                best = (nid, row.payload, row.attempts, row.created, row.next_at)
        return best

    async def _worker(self, sink: Sink) -> None:
        wake = self._wake[sink.name]
        while True:
            self._sync()
            # while something is held in memory, look again every second to write it
            patience = 1.0 if self.held() else None
            try:
                item = self._next(sink.name)
            except StateError as exc:
                log.error("outbox_read_failed", sink=sink.name, error=str(exc))
                await asyncio.sleep(1.0)
                continue
            if item is None:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await wait_for(wake.wait(), patience)
                continue
            nid, payload, attempts, created, due = item
            wait = due - self.clock()
            if wait > 0:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await wait_for(wake.wait(), min(wait, patience or wait))
                continue
            await self._attempt(sink, nid, payload, attempts, created)
            if self.on_change is not None:
                self.on_change()

    async def _attempt(self, sink: Sink, nid: str, payload: dict[str, Any], attempts: int, created: float) -> None:
        wanted = sink.wants(payload)
        try:
            if wanted:
                await sink.send(payload, nid)
        except asyncio.CancelledError:
            raise
        except DeliveryError as exc:
            self._failure(sink, nid, attempts + 1, created, exc.message, exc.retry, exc.retry_after, payload)
            return
        except Exception as exc:  # a sink bug must not stop delivery to the others
            log.exception("sink_bug", sink=sink.name)
            self._failure(sink, nid, attempts + 1, created, f"{type(exc).__name__}: {exc}", True, None, payload)
            return
        self._remove(nid, None)
        if wanted:
            self.sent[sink.name] += 1
        if attempts:
            log.info("notification_delivered", sink=sink.name, id=nid, attempts=attempts + 1)

    def _orphaned(self, nid: str, sink: str, raw: str, now: float) -> None:
        """Dead-letter a notification whose sink is no longer configured, resending it to the fallbacks of
        its receiver (named by the sink, ``receiver/kind/index``), or of the default receiver when the
        receiver is gone too."""
        reason = "the sink is no longer configured"
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        parts = sink.rsplit("/", 2)
        receiver, kind = (parts[0], parts[1]) if len(parts) == 3 else (sink, "")
        targets = self.fallback.get(receiver, self.orphan_fallback)
        resend = self._fallbacks(receiver, sink, kind, nid, payload, reason, now, targets)
        log.error("notification_dead_lettered", sink=sink, id=nid, attempts=0, error=reason,
                  lost=lost_alerts(payload), resent_to=sorted({r.sink for r in resend.values()}),
                  fallback=is_fallback(nid))
        self._dead_letter(nid, sink, reason, resend)

    def _failure(self, sink: Sink, nid: str, attempts: int, created: float, error: str, retry: bool,
                 retry_after: float | None = None, payload: Mapping[str, Any] | None = None) -> None:
        self.failed[sink.name] += 1
        now = self.clock()
        if not retry or now - created > self.config.give_up_after:
            reason = error if not retry else f"undeliverable for {self.config.give_up_after:g}s: {error}"
            resend = self._fallbacks(sink.receiver, sink.name, sink.kind, nid, payload or {}, reason, now,
                                     self.fallback.get(sink.receiver, ()))
            # what was lost, by name, and where it goes instead ([] for a fallback: it goes nowhere else)
            log.error("notification_dead_lettered", sink=sink.name, id=nid, attempts=attempts, error=error,
                      lost=lost_alerts(payload or {}), resent_to=sorted({r.sink for r in resend.values()}),
                      fallback=is_fallback(nid))
            self._dead_letter(nid, sink.name, reason, resend)
            return
        delay = backoff_delay(attempts, self.config.retry_initial, self.config.retry_max)
        if retry_after is not None:  # the receiver said when (429/503 Retry-After): not sooner
            delay = max(delay, retry_after)
        log.warning("notification_retry", sink=sink.name, id=nid, attempts=attempts, retry_in_s=round(delay, 2),
                    error=error)
        self._schedule(nid, attempts, now + delay, error)

    def _fallbacks(self, receiver: str, sink: str, kind: str, nid: str, payload: Mapping[str, Any], reason: str,
                   now: float, targets: Sequence[str]) -> dict[str, _Row]:
        """The outbox rows that resend a notification ``sink`` (of ``receiver``) gave up on to every sink of the
        ``targets`` receivers; none for a notification that is itself a fallback, or that carried no alert."""
        if is_fallback(nid) or not payload.get("alerts"):
            return {}
        if kind == "alertmanager":
            # Alertmanager is sent the same alerts again every resend_delay: what it keeps refusing is
            # resent to the fallbacks when it changed, not once a minute
            content = frozenset((str(a.get("fingerprint", "")), str(a.get("status", "")))
                                for a in payload["alerts"] if isinstance(a, Mapping))
            if self._fell_back.get(sink) == content:
                return {}
            self._fell_back[sink] = content
        out = {}
        for name in targets:
            if name == receiver:
                continue
            for target in self.sinks.values():
                if target.receiver == name and target.name != sink:
                    out[fallback_id(nid, target.name)] = _Row(
                        target.name, fallback_payload(payload, name, sink, reason), now, 0, now)
        return out

    def _dead_letter(self, nid: str, sink: str, error: str, resend: Mapping[str, _Row] | None = None) -> None:
        self._remove(nid, error, resend)
        self.dead[sink] += 1
        for row in (resend or {}).values():
            self.resent[row.sink] += 1
            ev = self._wake.get(row.sink)
            if ev is not None:
                ev.set()

    def counters(self) -> Mapping[str, Counter[str]]:
        return {"sent": self.sent, "failed": self.failed, "dead_lettered": self.dead, "resent": self.resent}
