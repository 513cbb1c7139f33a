"""``mevwatch alerts list`` and ``mevwatch alerts history [--since]``: alerts read from the state DB.

They need no running daemon: the engine keeps every alert's state (``alert_state``), every state
change (``alert_history``, 30 days) and its last read of Alertmanager's silences in the state DB, which
they only read; an alert's silence state comes from that read, UNKNOWN once it is older than the daemon's
pace.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from mevwatch.alerts.engine import MIGRATIONS
from mevwatch.alerts.router import Silences
from mevwatch.alerts.silencing import SilenceRead, alert_silencing, load_read, source_json
from mevwatch.daemon.cli import load_or_report
from mevwatch.daemon.config import Config
from mevwatch.daemon.state import StateDB, StateError
from mevwatch.fields import parse_duration

__all__ = ["add_silencing", "cmd_alerts_history", "cmd_alerts_list", "history_rows", "state_rows"]

_ORDER = {"firing": 0, "pending": 1, "resolved": 2}
_HIDDEN = ("alertname", "severity", "host")


def _open(args: argparse.Namespace) -> tuple[Config, StateDB] | None:
    cfg = load_or_report(args.config)
    if cfg is None:
        return None
    try:
        db = StateDB.open_dir(cfg.state_dir)
        db.migrate("alerts_engine", MIGRATIONS)  # a state dir no daemon has used yet: empty tables
        return cfg, db
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def state_rows(db: StateDB, include_resolved: bool = False) -> list[dict[str, Any]]:
    """Alerts as the engine last stored them, firing first, then by severity and name."""
    rows = db.query("SELECT rule, labels, annotations, state, value, active_at, fired_at, resolved_at "
                    "FROM alert_state")
    out = [
        {"alertname": r[0], "labels": json.loads(r[1]), "annotations": json.loads(r[2]), "state": r[3],
         "value": r[4], "active_at": r[5], "fired_at": r[6], "resolved_at": r[7]}
        for r in rows if include_resolved or r[3] != "resolved"
    ]
    sev = {"critical": 0, "warning": 1, "info": 2}
    out.sort(key=lambda a: (_ORDER.get(a["state"], 3), sev.get(a["labels"].get("severity", ""), 1), a["alertname"]))
    return out


def add_silencing(db: StateDB, rows: list[dict[str, Any]], mode: str, now: float) -> SilenceRead | None:
    """Each row's ``silencing``: the local silences (standalone mode) and Alertmanager's as the daemon last
    read them (kept in the state DB, with the read's time: UNKNOWN once it is older than the daemon's pace).
    Returns that read (None: the daemon reads no Alertmanager)."""
    local = Silences(db).list(include_expired=False) if mode == "standalone" else []
    read = load_read(db)
    for row in rows:
        row["silencing"] = alert_silencing(row["labels"], local, read, now)
    return read


def history_rows(db: StateDB, since: float) -> list[dict[str, Any]]:
    rows = db.query("SELECT at, rule, state, severity, value, labels, summary FROM alert_history WHERE at >= ? "
                    "ORDER BY at, rowid", (since,))
    return [{"at": r[0], "alertname": r[1], "state": r[2], "severity": r[3], "value": r[4],
             "labels": json.loads(r[5]), "summary": r[6]} for r in rows]


def _ts(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t else "-"


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items() if k not in _HIDDEN)


def cmd_alerts_list(args: argparse.Namespace) -> int:
    opened = _open(args)
    if opened is None:
        return 2
    cfg, db = opened
    now = time.time()
    try:
        rows = state_rows(db, args.all)
        read = add_silencing(db, rows, cfg.daemon.alerts.mode, now)
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    if read is not None and not args.json:
        print("Alertmanager's silences: " + source_json(read, cfg.daemon.alerts.host, now)["text"])
    return _print(rows, args.json, "no pending or firing alert", _state_line)


def _state_line(a: dict[str, Any]) -> str:
    since = a["fired_at"] if a["state"] == "firing" else (a["resolved_at"] or a["active_at"])
    silencing = a["silencing"]
    held = f"  [{silencing['text']}]" if silencing["state"] in ("silenced", "unknown") else ""
    return (f"{a['state']:8}  {a['labels'].get('severity', ''):8}  {a['alertname']:28}  since {_ts(since)}  "
            f"{_labels(a['labels'])}  {a['annotations'].get('summary', '')}{held}")


def _history_line(h: dict[str, Any]) -> str:
    return (f"{_ts(h['at'])}  {h['state']:8}  {h['severity']:8}  {h['alertname']:28}  {_labels(h['labels'])}  "
            f"{h['summary']}")


def _print(rows: list[dict[str, Any]], as_json: bool, empty: str, line: Callable[[dict[str, Any]], str]) -> int:
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(empty)
    for row in rows:
        print(line(row).rstrip())
    return 0


def cmd_alerts_history(args: argparse.Namespace) -> int:
    try:
        since = time.time() - parse_duration(args.since)
    except ValueError as exc:
        print(f"error: --since: {exc}", file=sys.stderr)
        return 2
    opened = _open(args)
    if opened is None:
        return 2
    _, db = opened
    try:
        rows = history_rows(db, since)
    finally:
        db.close()
    return _print(rows, args.json, f"no alert changed state in the last {args.since}", _history_line)
