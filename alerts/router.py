"""The router: alerts to receivers by label matchers, grouped, timed, inhibited, silenced and escalated.

Grouping and timing follow Alertmanager: a new group waits ``group_wait``, a changed group
is flushed at most every ``group_interval``, an unchanged firing group is repeated every
``repeat_interval``. What each group last sent is in the state DB, so a restart does not re-page.
An alert still firing ``after`` an escalation level's delay is also routed to that level's receiver.
"""

from __future__ import annotations

import asyncio
import json
import math
import shlex
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from mevwatch.alerts.config import AlertsConfig, Escalation, InhibitRule
from mevwatch.alerts.identity import group_key, group_labels, notification_id, route_key
from mevwatch.alerts.matchers import Matcher, matches_all, parse_matcher
from mevwatch.alerts.outbox import Outbox, OutboxEntry
from mevwatch.alerts.rules import RESOLVED_RETENTION, Alert
from mevwatch.alerts.sinks.base import Sink
from mevwatch.alerts.timeintervals import in_intervals
from mevwatch.daemon.state import StateDB, StateError

__all__ = [
    "MIGRATIONS",
    "Router",
    "Silence",
    "Silences",
    "is_inhibited",
    "notification_payload",
    "rfc3339",
]

log = structlog.get_logger("mevwatch.alerts")

MIGRATIONS = [
    """
    CREATE TABLE alert_groups (
        key TEXT PRIMARY KEY,
        sent_firing TEXT NOT NULL,
        last_flush REAL NOT NULL,
        seq INTEGER NOT NULL
    );
    CREATE TABLE alert_silences (
        id TEXT PRIMARY KEY,
        matchers TEXT NOT NULL,
        starts_at REAL NOT NULL,
        ends_at REAL NOT NULL,
        created_by TEXT NOT NULL DEFAULT '',
        comment TEXT NOT NULL DEFAULT ''
    )
    """,
]

ZERO_TIME = "0001-01-01T00:00:00Z"


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- silences ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    created_by: str = ""
    comment: str = ""

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def mutes(self, labels: Mapping[str, str], now: float) -> bool:
        return self.active(now) and matches_all(self.matchers, labels)


class Silences:
    """Silences in the state DB, shared by the daemon and the ``mevwatch silence`` command."""

    def __init__(self, state: StateDB, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        state.migrate("alerts_router", MIGRATIONS)
        self._cache: list[Silence] = []
        self.refresh()

    def refresh(self) -> None:
        self._cache = self.list(include_expired=False)

    def add(self, matchers: Sequence[str], duration: float, created_by: str = "", comment: str = "",
            starts_at: float | None = None) -> Silence:
        if not matchers:
            raise ValueError("a silence needs at least one matcher")
        if duration <= 0:
            raise ValueError("a silence needs a positive duration")
        parsed = tuple(parse_matcher(m) for m in matchers)
        start = self.clock() if starts_at is None else starts_at
        sil = Silence(uuid.uuid4().hex[:12], parsed, start, start + duration, created_by, comment)
        self.state.execute(
            "INSERT INTO alert_silences (id, matchers, starts_at, ends_at, created_by, comment) VALUES (?,?,?,?,?,?)",
            (sil.id, json.dumps([str(m) for m in parsed]), sil.starts_at, sil.ends_at, created_by, comment),
        )
        self.refresh()
        return sil

    def expire(self, silence_id: str) -> bool:
        now = self.clock()
        n = self.state.execute(
            "UPDATE alert_silences SET ends_at = ? WHERE id = ? AND ends_at > ?", (now, silence_id, now)
        )
        self.refresh()
        return n > 0

    def list(self, include_expired: bool = True) -> list[Silence]:
        now = self.clock()
        rows = self.state.query(
            "SELECT id, matchers, starts_at, ends_at, created_by, comment FROM alert_silences ORDER BY starts_at"
        )
        out = [
            Silence(str(r[0]), tuple(parse_matcher(m) for m in json.loads(r[1])), float(r[2]), float(r[3]),
                    str(r[4]), str(r[5]))
            for r in rows
        ]
        return out if include_expired else [s for s in out if s.ends_at > now]

    def in_effect(self, now: float) -> int:
        """How many silences have not ended, as of the last refresh (on the router's tick and before a flush)."""
        return sum(1 for s in self._cache if s.ends_at > now)

    def next_end(self, now: float) -> float:
        """When the next silence in effect ends (infinity: none), as of the last refresh."""
        return min((s.ends_at for s in self._cache if s.ends_at > now), default=math.inf)

    def mutes(self, labels: Mapping[str, str], now: float) -> bool:
        return any(s.mutes(labels, now) for s in self._cache)


def is_inhibited(target: Alert, firing: Iterable[Alert], rules: Sequence[InhibitRule]) -> bool:
    """Alertmanager inhibition: a firing source alert with equal ``equal`` labels mutes a matching target."""
    for rule in rules:
        if not matches_all(rule.target_matchers, target.labels):
            continue
        for src in firing:
            if src.fingerprint == target.fingerprint or src.state != "firing":
                continue
            if matches_all(rule.source_matchers, src.labels) and all(
                src.labels.get(k, "") == target.labels.get(k, "") for k in rule.equal
            ):
                return True
    return False


# --- notifications -----------------------------------------------------------------------


def generator_url(external_url: str, fingerprint: str) -> str:
    """The alert's row on mevwatch's landing page (``external_url`` is where that page is reached)."""
    return f"{external_url.rstrip('/')}/#alert-{fingerprint}" if external_url else ""


def silence_command(labels: Mapping[str, str], mode: str = "standalone") -> str:
    """The command that silences exactly this alert for 2 hours (amtool in fleet mode)."""
    matchers = [shlex.quote(f'{k}="{v}"') for k, v in labels.items() if k != "severity"]
    if mode == "fleet":
        return "amtool silence add --duration=2h --comment='...' " + " ".join(matchers)
    return "mevwatch silence add -d 2h --comment '...' " + " ".join(f"-m {m}" for m in matchers)


def _alert_json(a: Alert, status: str, external_url: str = "", mode: str = "standalone") -> dict[str, Any]:
    return {
        "status": status,
        "labels": dict(a.labels),
        "annotations": {**a.annotations, "silence": silence_command(a.labels, mode)},
        "startsAt": rfc3339(a.fired_at or a.active_at),
        "endsAt": rfc3339(a.resolved_at) if status == "resolved" and a.resolved_at else ZERO_TIME,
        "generatorURL": generator_url(external_url, a.fingerprint),
        "fingerprint": a.fingerprint,
        "value": a.value,
    }


def notification_payload(receiver: str, group_key: str, group_labels: Mapping[str, str],
                         firing: Sequence[Alert], resolved: Sequence[Alert], external_url: str,
                         mode: str = "standalone") -> dict[str, Any]:
    """Alertmanager's webhook message (version 4) for one group flush; each alert links back to its row on
    the landing page (generatorURL) and carries the command that silences it (annotation ``silence``)."""
    alerts = [_alert_json(a, "firing", external_url, mode) for a in firing]
    alerts += [_alert_json(a, "resolved", external_url, mode) for a in resolved]
    common_labels: dict[str, str] = {}
    common_ann: dict[str, str] = {}
    if alerts:
        common_labels = dict(alerts[0]["labels"])
        common_ann = dict(alerts[0]["annotations"])
        for a in alerts[1:]:
            common_labels = {k: v for k, v in common_labels.items() if a["labels"].get(k) == v}
            common_ann = {k: v for k, v in common_ann.items() if a["annotations"].get(k) == v}
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": receiver,
        "groupLabels": dict(group_labels),
        "commonLabels": common_labels,
        "commonAnnotations": common_ann,
        "externalURL": external_url,
        "alerts": alerts,
    }


# --- routing -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteSpec:
    index: int  # -1: the top-level route
    receiver: str
    matchers: tuple[Matcher, ...]
    group_by: tuple[str, ...]
    group_wait: float
    group_interval: float
    repeat_interval: float
    cont: bool
    escalation: tuple[Escalation, ...]
    key: str  # Alertmanager's route key (identity.route_key)


@dataclass(slots=True)
class Group:
    key: str  # the router's own key: receiver, route, escalation level and group key
    group_key: str  # Alertmanager's group key (identity.group_key), in payloads and ids
    receiver: str
    level: int
    spec: RouteSpec
    labels: dict[str, str]
    alertmanager: bool  # Alertmanager receivers: flush on every change, resend every resend_delay
    alerts: dict[str, Alert] = field(default_factory=dict)
    sent_firing: set[str] = field(default_factory=set)
    last_flush: float = 0.0
    seq: int = 0
    next_flush: float | None = None

    def timing(self) -> tuple[float, float, float]:
        return self.spec.group_wait, self.spec.group_interval, self.spec.repeat_interval


def route_specs(cfg: AlertsConfig) -> list[RouteSpec]:
    specs = []
    for i, r in enumerate(cfg.routes):
        specs.append(RouteSpec(
            i, r.receiver, tuple(r.matchers), tuple(r.group_by if r.group_by is not None else cfg.group_by),
            cfg.group_wait if r.group_wait is None else r.group_wait,
            cfg.group_interval if r.group_interval is None else r.group_interval,
            cfg.repeat_interval if r.repeat_interval is None else r.repeat_interval,
            r.continue_, tuple(r.escalation), route_key(r.matchers),
        ))
    specs.append(RouteSpec(-1, cfg.receiver, (), tuple(cfg.group_by), cfg.group_wait, cfg.group_interval,
                           cfg.repeat_interval, False, tuple(cfg.escalation), route_key(None)))
    return specs


def matching_routes(specs: Sequence[RouteSpec], labels: Mapping[str, str]) -> list[RouteSpec]:
    """Routes in order, first match wins unless it says continue; the top-level route catches the rest."""
    out: list[RouteSpec] = []
    for spec in specs:
        if spec.index == -1:
            if not out:
                out.append(spec)
            break
        if matches_all(spec.matchers, labels):
            out.append(spec)
            if not spec.cont:
                break
    return out


class Router:
    def __init__(
        self,
        cfg: AlertsConfig,
        state: StateDB,
        outbox: Outbox,
        sinks: Mapping[str, Sequence[Sink]],
        alerts: Callable[[], Iterable[Alert]],
        clock: Callable[[], float] = time.time,
        external_silences: Callable[[Mapping[str, str], float], bool] | None = None,
    ) -> None:
        self.cfg = cfg
        # fleet mode: silences and inhibition are Alertmanager's; it gets every alert
        self.standalone = cfg.mode == "standalone"
        self.inhibit_rules: Sequence[InhibitRule] = cfg.inhibit_rules if self.standalone else ()
        self.external_silences = external_silences
        self.state = state
        self.outbox = outbox
        self.sinks = sinks
        self.all_alerts = alerts
        self.clock = clock
        self.silences = Silences(state, clock)
        self.specs = route_specs(cfg)
        self.groups: dict[str, Group] = {}
        self._persisted: dict[str, tuple[set[str], float, int]] = {
            str(k): (set(json.loads(s)), float(t), int(n))
            for k, s, t, n in state.query("SELECT key, sent_firing, last_flush, seq FROM alert_groups")
        }
        self._timer: asyncio.TimerHandle | None = None
        self.notifications = 0

    # --- membership -------------------------------------------------------------------

    def _is_am(self, receiver: str) -> bool:
        return bool(self.cfg.receiver_named(receiver).alertmanager_configs)

    def _targets(self, a: Alert, now: float, all_levels: bool) -> list[tuple[RouteSpec, int, str]]:
        out = []
        for spec in matching_routes(self.specs, a.labels):
            out.append((spec, 0, spec.receiver))
            for level, esc in enumerate(spec.escalation, start=1):
                if all_levels or (a.fired_at is not None and now - a.fired_at >= esc.after
                                  and self._level_active(esc, now)):
                    out.append((spec, level, esc.receiver))
        return out

    def _level_active(self, esc: Escalation, now: float) -> bool:
        """An escalation level limited to time windows joins only inside one of them."""
        if not esc.active_time_intervals:
            return True
        return any(in_intervals(self.cfg.time_interval_named(n), now) for n in esc.active_time_intervals)

    def _group(self, spec: RouteSpec, level: int, receiver: str, a: Alert, now: float, create: bool) -> Group | None:
        glabels = group_labels(a.labels, spec.group_by)
        gkey = group_key(spec.key, glabels)
        key = f"{receiver}|{spec.index}|{level}|{gkey}"
        g = self.groups.get(key)
        if g is not None or not create:
            if g is None and key in self._persisted:
                return self._restore(key, gkey, level, spec, receiver, glabels)
            return g
        if key in self._persisted:
            return self._restore(key, gkey, level, spec, receiver, glabels)
        am = self._is_am(receiver)
        if am:
            spec = self._am_spec(spec, receiver)
        g = Group(key, gkey, receiver, level, spec, glabels, am)
        g.next_flush = now + spec.group_wait
        self.groups[key] = g
        return g

    def _am_spec(self, spec: RouteSpec, receiver: str) -> RouteSpec:
        resend = max(c.resend_delay for c in self.cfg.receiver_named(receiver).alertmanager_configs)
        return RouteSpec(spec.index, receiver, spec.matchers, spec.group_by, 0.0, 0.0, resend, spec.cont, (),
                         spec.key)

    def _restore(self, key: str, gkey: str, level: int, spec: RouteSpec, receiver: str,
                 glabels: dict[str, str]) -> Group:
        sent, last, seq = self._persisted.pop(key)
        if not sent:
            last = 0.0  # an emptied group starts over (group_wait), keeping its sequence for unique ids
        am = self._is_am(receiver)
        if am:
            spec = self._am_spec(spec, receiver)
        g = Group(key, gkey, receiver, level, spec, glabels, am, sent_firing=sent, last_flush=last, seq=seq)
        g.next_flush = last + spec.repeat_interval if last else self.clock() + spec.group_wait
        self.groups[key] = g
        return g

    def update(self, alerts: Iterable[Alert]) -> None:
        """Alerts that changed state (fired or resolved) or are restored after a restart."""
        now = self.clock()
        for a in alerts:
            if a.state == "firing":
                for spec, level, receiver in self._targets(a, now, all_levels=False):
                    g = self._group(spec, level, receiver, a, now, create=True)
                    assert g is not None
                    g.alerts[a.fingerprint] = a
                    if a.fingerprint not in g.sent_firing:
                        self._changed(g, now)
            elif a.state == "resolved":
                for spec, level, receiver in self._targets(a, now, all_levels=True):
                    g = self._group(spec, level, receiver, a, now, create=False)
                    if g is not None and (a.fingerprint in g.sent_firing or a.fingerprint in g.alerts):
                        g.alerts[a.fingerprint] = a
                        self._changed(g, now)
        self.recheck_held()  # a source that resolved no longer inhibits

    def rekey(self, old: str, a: Alert) -> None:
        """``a`` was the alert of fingerprint ``old`` (a restored alert re-keyed by the engine): the groups
        that hold or sent it hold and sent it under its new fingerprint, so it is neither paged again nor
        shown resolved."""
        for g in self.groups.values():
            if g.alerts.pop(old, None) is not None:
                g.alerts[a.fingerprint] = a
            if old in g.sent_firing:
                g.sent_firing = (g.sent_firing - {old}) | {a.fingerprint}
                self._persist(g)
        for key, (sent, last, seq) in list(self._persisted.items()):
            if old in sent:
                self._persisted[key] = ((sent - {old}) | {a.fingerprint}, last, seq)

    def recheck_held(self) -> None:
        """Look again at the groups held back by a silence or an inhibition (the alerts changed, or the
        silences did), and flush what is due."""
        now = self.clock()
        for g in self._held_back():
            g.next_flush = now
        self.run_due()

    def _changed(self, g: Group, now: float) -> None:
        wait, interval, _ = g.timing()
        if not g.last_flush:  # never sent: the first flush waits group_wait from creation
            if g.next_flush is None:
                g.next_flush = now + wait
            return
        at = max(now, g.last_flush + interval)
        if g.next_flush is None or at < g.next_flush:
            g.next_flush = at

    def tick(self) -> None:
        """Escalate alerts that fired long enough ago, refresh silences, and flush what is due."""
        now = self.clock()
        self.silences.refresh()
        for a in self.all_alerts():
            if a.state != "firing":
                continue
            for spec, level, receiver in self._targets(a, now, all_levels=False):
                if level == 0:
                    continue
                g = self._group(spec, level, receiver, a, now, create=True)
                assert g is not None
                if a.fingerprint not in g.alerts:
                    g.alerts[a.fingerprint] = a
                    if a.fingerprint not in g.sent_firing:
                        self._changed(g, now)
        self.recheck_held()

    def _held_back(self) -> Iterator[Group]:
        """Groups with firing alerts and nothing to flush: each held back only by a silence or an inhibition."""
        for g in self.groups.values():
            if g.next_flush is None and any(a.state == "firing" for a in g.alerts.values()):
                yield g

    def next_due(self, now: float) -> float:
        """When time alone next changes what tick() does (infinity: never, until an alert changes state):
        an escalation level's delay passing for a firing alert; for a level whose delay has passed but
        whose time windows are closed, the next minute (the windows' unit); a silence in effect ending
        (a held group may go out). An inhibition ends with its source alert (update); silences written
        by another process are read on the tick (at least every TICK_CAP) and before a flush."""
        due = self.silences.next_end(now)
        for a in self.all_alerts():
            if a.state != "firing" or a.fired_at is None:
                continue
            for spec in matching_routes(self.specs, a.labels):
                for esc in spec.escalation:
                    at = a.fired_at + esc.after
                    if at > now:
                        due = min(due, at)
                    elif esc.active_time_intervals and not self._level_active(esc, now):
                        due = min(due, (math.floor(now / 60.0) + 1.0) * 60.0)
        return due

    # --- flushing ---------------------------------------------------------------------

    def run_due(self) -> None:
        now = self.clock()
        due = [g for g in self.groups.values() if g.next_flush is not None and g.next_flush <= now]
        if due:
            # `mevwatch silence` writes silences from another process: read them again before paging
            try:
                self.silences.refresh()
            except StateError as exc:  # the state DB logs a failing streak once; the silences read last hold
                log.debug("silences_read_failed", error=str(exc))
        for g in due:
            if g.next_flush is not None and g.next_flush <= now:
                self._flush(g, now)
        self._arm_timer(now)

    def _arm_timer(self, now: float) -> None:
        pending = [g.next_flush for g in self.groups.values() if g.next_flush is not None]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # driven by tick() in tests without a loop
        self._timer = loop.call_later(max(min(pending) - now, 0.0), self.run_due)

    def _muted(self, g: Group, a: Alert, firing: list[Alert], now: float) -> bool:
        if not self.standalone:
            return False
        if self.silences.mutes(a.labels, now) or is_inhibited(a, firing, self.inhibit_rules):
            return True
        # Alertmanager applies its own silences to what it is sent; the direct sinks ask it here
        return not g.alertmanager and self.external_silences is not None and self.external_silences(a.labels, now)

    def _flush(self, g: Group, now: float) -> None:
        everything = [a for a in self.all_alerts() if a.state == "firing"]
        firing = [a for a in g.alerts.values() if a.state == "firing" and not self._muted(g, a, everything, now)]
        resolved = [a for a in g.alerts.values() if a.state == "resolved" and a.fingerprint in g.sent_firing]
        if g.alertmanager:
            resolved = [a for a in g.alerts.values() if a.state == "resolved"
                        and a.resolved_at is not None and now - a.resolved_at < RESOLVED_RETENTION]
        fps = {a.fingerprint for a in firing}
        _, _, repeat = g.timing()
        unchanged = fps == g.sent_firing and not (resolved and not g.alertmanager)
        # Alertmanager receivers also get recently resolved alerts again, as Prometheus re-sends them
        has_content = bool(fps) or (g.alertmanager and bool(resolved))
        due_repeat = has_content and now >= g.last_flush + repeat
        if (unchanged and not due_repeat) or (not fps and not resolved):
            g.next_flush = g.last_flush + repeat if has_content else None
            if not fps:
                self._drop_resolved(g, now)
                g.sent_firing = set()
                if not g.alerts:
                    self._forget(g)
            return
        payload = notification_payload(g.receiver, g.group_key, g.labels, sorted(firing, key=lambda a: a.active_at),
                                       resolved, self.cfg.external_url, self.cfg.mode)
        g.seq += 1
        entries = [
            OutboxEntry(notification_id(g.group_key, g.receiver, g.level, g.seq, s.name), s.name, payload)
            for s in self.sinks.get(g.receiver, ())
        ]
        self.outbox.enqueue(entries)
        self.notifications += 1
        g.sent_firing = fps
        g.last_flush = now
        self._drop_resolved(g, now)
        g.next_flush = now + repeat if (fps or g.alerts) else None
        if not g.alerts:
            self._forget(g)
        else:
            self._persist(g)
        log.info("notification_queued", receiver=g.receiver, group=g.labels, firing=len(firing),
                 resolved=len(resolved), sinks=len(entries))

    def _drop_resolved(self, g: Group, now: float) -> None:
        for fp, a in list(g.alerts.items()):
            if a.state == "firing":
                continue
            keep = g.alertmanager and a.resolved_at is not None and now - a.resolved_at < RESOLVED_RETENTION
            if not keep:
                del g.alerts[fp]

    def _persist(self, g: Group) -> None:
        try:
            self._write_group(g)
        except StateError:
            # a full disk: the state DB logs the streak once; the group is written with its next change
            log.debug("alert_group_write_failed", group=g.key)

    def _write_group(self, g: Group) -> None:
        self.state.execute(
            "INSERT INTO alert_groups (key, sent_firing, last_flush, seq) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET sent_firing = excluded.sent_firing, last_flush = excluded.last_flush, "
            "seq = excluded.seq",
            (g.key, json.dumps(sorted(g.sent_firing)), g.last_flush, g.seq),
        )

    def _forget(self, g: Group) -> None:
        # The row stays (with nothing sent) so the group's sequence, and so notification ids, never repeat.
        self.groups.pop(g.key, None)
        g.sent_firing = set()
        self._persist(g)
        self._persisted[g.key] = (set(), 0.0, g.seq)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
