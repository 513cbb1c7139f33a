"""Whether an alert is silenced, as mevwatch's screens tell it: by a local silence, or by one of Alertmanager's
as ``AlertmanagerWatch`` last read them, with that read's age.

A screen takes the read from the running engine (landing page, ``/api/v1/alerts``, diagnose through them) or
from the state DB, where the engine keeps its last one (``mevwatch alerts list``); it never asks Alertmanager.
When no Alertmanager answered, or the read is older than the watch's pace allows (the daemon stopped), an
alert's silence state is UNKNOWN, never "not silenced".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from mevwatch.alerts.matchers import Matcher
from mevwatch.alerts.router import Silence, rfc3339
from mevwatch.alerts.templates import for_text
from mevwatch.daemon.state import StateDB

__all__ = ["MIGRATION", "SilenceRead", "alert_silencing", "clear_read", "concerning", "load_read", "save_read",
           "silence_json", "source_json"]

#: the alerts engine's migration that keeps the watch's last read for readers without the engine
MIGRATION = """
    CREATE TABLE alertmanager_silences_read (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        url TEXT NOT NULL,
        silences TEXT NOT NULL,
        read_at REAL,
        checked_at REAL,
        unreachable_since REAL,
        error TEXT NOT NULL,
        stale_after REAL NOT NULL,
        mutes INTEGER NOT NULL
    )
    """


@dataclass(frozen=True, slots=True)
class SilenceRead:
    """The watch's last read of an Alertmanager cluster's active silences."""

    url: str  # redacted: the peer that answered last (or, never answered, the first one asked)
    silences: tuple[Silence, ...]  # as of read_at
    read_at: float | None  # the last read that succeeded
    checked_at: float | None  # the last poll, whether or not a peer answered
    unreachable_since: float | None  # the first poll no peer answered, since the last success
    error: str  # why the last poll failed
    stale_after: float  # a poll older than this is not current: the watch stopped (or the daemon)
    mutes: bool  # standalone: these silences hold the direct sinks' pages; fleet: only shown

    def failed(self, now: float, error: str) -> SilenceRead:
        return replace(self, checked_at=now, error=error,
                       unreachable_since=self.unreachable_since if self.unreachable_since is not None else now)

    def unknown_reason(self, now: float, errors: bool = False) -> str:
        """Why the silences cannot be told now ("" when they can); with ``errors``, what each peer answered."""
        if self.checked_at is not None and now - self.checked_at > self.stale_after:
            last = f"last read {_at(self.read_at)} ({_ago(self.read_at, now)})" if self.read_at else "never read"
            return (f"mevwatch has not asked Alertmanager since {_at(self.checked_at)} "
                    f"({_ago(self.checked_at, now)}; is it running?); {last}")
        if self.unreachable_since is not None:
            last = f"last read {_at(self.read_at)} ({_ago(self.read_at, now)})" if self.read_at else "never read"
            why = f" ({self.error})" if errors else ""
            return f"no Alertmanager answered since {_at(self.unreachable_since)}{why}; {last}"
        if self.read_at is None:
            return "Alertmanager's silences are not read yet"
        return ""


def _at(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t is not None else "-"


def _ago(t: float | None, now: float) -> str:
    return f"{for_text(float(max(round(now - t), 0)))} ago" if t is not None else "never"  # 0s, 14s, 3m20s


def concerning(silences: Sequence[Silence], host: str) -> list[Silence]:
    """The silences that can hold an alert of ``host``: every alert carries its host label, so a silence
    naming another host (a cluster holds the whole fleet's) is left off this host's screens."""
    probe = {"host": host}
    return [s for s in silences if all(m.matches(probe) for m in s.matchers if m.name == "host")]


def silence_json(s: Silence, source: str, now: float) -> dict[str, Any]:
    """One silence as the screens show it; ``source`` is "local" or "alertmanager"."""
    return {"id": s.id, "source": source, "matchers": [str(m) for m in s.matchers], "startsAt": rfc3339(s.starts_at),
            "endsAt": rfc3339(s.ends_at), "createdBy": s.created_by, "comment": s.comment,
            "status": {"state": "active" if s.active(now) else "pending"}}


def _holder_text(s: Silence, source: str) -> str:
    where = "in Alertmanager" if source == "alertmanager" else "locally"
    who = s.created_by or "unknown"
    return f"silenced {where} by {s.id} ({who}: {json.dumps(s.comment, ensure_ascii=False)}, ends at {_at(s.ends_at)})"


def alert_silencing(labels: Mapping[str, str], local: Sequence[Silence], read: SilenceRead | None,
                    now: float) -> dict[str, Any]:
    """Who silences the alert with ``labels``: ``state`` silenced, not silenced or unknown, ``by`` the
    silences holding it, ``text`` the line a screen prints."""
    held = [("local", s) for s in local if s.mutes(labels, now)]
    reason = read.unknown_reason(now) if read is not None else ""
    if read is not None and not reason:
        held += [("alertmanager", s) for s in read.silences if s.mutes(labels, now)]
    by = [silence_json(s, source, now) for source, s in held]
    if held:
        return {"state": "silenced", "by": by, "text": "; ".join(_holder_text(s, src) for src, s in held)}
    if read is None:
        return {"state": "not silenced", "by": [], "text": "not silenced"}
    if not reason:
        return {"state": "not silenced", "by": [],
                "text": f"not silenced (Alertmanager's silences read {_ago(read.read_at, now)})"}
    then = [s.id for s in read.silences if s.mutes(labels, now)]
    text = "silence state UNKNOWN: " + reason + (f", when {', '.join(then)} silenced it" if then else "")
    if read.mutes:
        text += "; meanwhile they mute nothing: the direct sinks page"
    return {"state": "unknown", "by": [], "text": text}


def source_json(read: SilenceRead, host: str, now: float) -> dict[str, Any]:
    """The state of the watch's read, for the screens' silences section and ``/api/v1/alerts``."""
    reason = read.unknown_reason(now, errors=True)
    mine = concerning(read.silences, host)
    if reason:
        text = "UNKNOWN: " + reason
    else:
        text = (f"read from {read.url} {_ago(read.read_at, now)}: {len(read.silences)} active, "
                f"{len(mine)} that can hold this host's alerts")
    text += (" (they also hold mevwatch's direct pages)" if read.mutes
             else " (shown here; Alertmanager applies them to what mevwatch sends it)")
    return {
        "url": read.url,
        "state": "unknown" if reason else "read",
        "effect": "mute" if read.mutes else "display",
        "readAt": rfc3339(read.read_at) if read.read_at is not None else None,
        "ageSeconds": round(now - read.read_at, 3) if read.read_at is not None else None,
        "unreachableSince": rfc3339(read.unreachable_since) if read.unreachable_since is not None else None,
        "error": read.error,
        "text": text,
        "silences": [] if reason else [silence_json(s, "alertmanager", now) for s in mine],
    }


# --- the last read in the state DB ---------------------------------------------------------


def save_read(db: StateDB, read: SilenceRead) -> None:
    """Keep ``read`` as the last one (StateError when the DB cannot be written)."""
    doc = json.dumps([{"id": s.id, "matchers": [[m.name, m.op, m.value] for m in s.matchers],
                       "startsAt": s.starts_at, "endsAt": s.ends_at, "createdBy": s.created_by,
                       "comment": s.comment} for s in read.silences])
    db.execute(
        "INSERT OR REPLACE INTO alertmanager_silences_read (id, url, silences, read_at, checked_at, "
        "unreachable_since, error, stale_after, mutes) VALUES (1,?,?,?,?,?,?,?,?)",
        (read.url, doc, read.read_at, read.checked_at, read.unreachable_since, read.error, read.stale_after,
         int(read.mutes)))


def clear_read(db: StateDB) -> None:
    """No silence source is configured: a read kept from before must not be shown."""
    if db.query("SELECT 1 FROM alertmanager_silences_read"):  # a read, not a write, at most starts
        db.execute("DELETE FROM alertmanager_silences_read")


def load_read(db: StateDB) -> SilenceRead | None:
    """The last read the engine kept, or None when it reads no Alertmanager."""
    rows = db.query("SELECT url, silences, read_at, checked_at, unreachable_since, error, stale_after, mutes "
                    "FROM alertmanager_silences_read WHERE id = 1")
    if not rows:
        return None
    url, doc, read_at, checked_at, unreachable_since, error, stale_after, mutes = rows[0]
    silences = tuple(
        Silence(str(s["id"]), tuple(Matcher(*m) for m in s["matchers"]), float(s["startsAt"]), float(s["endsAt"]),
                str(s["createdBy"]), str(s["comment"]))
        for s in json.loads(doc))
    return SilenceRead(str(url), silences, read_at, checked_at, unreachable_since, str(error), float(stale_after),
                       bool(mutes))
