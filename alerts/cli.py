"""``mevwatch alerts test`` (a test notification through every sink) and ``mevwatch silence add|list|expire``."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from datetime import UTC, datetime
from typing import Any

from mevwatch.alerts.config import alertmanager_urls
from mevwatch.alerts.matchers import parse_matcher
from mevwatch.alerts.router import Silence, Silences, notification_payload
from mevwatch.alerts.rules import Alert, fingerprint
from mevwatch.alerts.sinks import DeliveryError, Sink, build_sinks
from mevwatch.daemon.cli import add_config_argument, load_or_report
from mevwatch.daemon.config import Config
from mevwatch.daemon.state import StateDB, StateError
from mevwatch.fields import parse_duration
from mevwatch.redaction import redact_sink_url

__all__ = ["register", "run_test"]


def test_payload(receiver: str, host: str, runbook_url: str, external_url: str) -> dict[str, Any]:
    """A test notification as every sink shows it: with the runbook, the link back to this mevwatch's page (so
    a broken alerts.external_url shows here first) and a silence command."""
    labels = {"alertname": "MevwatchTestNotification", "severity": "info", "host": host}
    now = time.time()
    alert = Alert("MevwatchTestNotification", fingerprint(labels), labels, {
        "summary": f"Test notification from mevwatch on {host}",
        "description": "Sent by `mevwatch alerts test`; no action needed.",
        "runbook_url": f"{runbook_url}#alerts-test",
    }, "firing", 1.0, now, fired_at=now, last_match_at=now)
    return notification_payload(receiver, f"{receiver}|test", {"alertname": alert.rule}, [alert], [],
                                external_url)


async def run_test(cfg: Config, receiver: str | None) -> list[tuple[str, str | None]]:
    """Send one test notification through each sink; (sink, None) on success, (sink, error) otherwise."""
    alerts = cfg.daemon.alerts
    receivers = [r for r in alerts.receivers if receiver is None or r.name == receiver]
    results: list[tuple[str, str | None]] = []
    for rc in receivers:
        payload = test_payload(rc.name, alerts.host, alerts.runbook_url, alerts.external_url)
        sinks: list[Sink] = build_sinks(rc, alerts.evaluation_interval)
        for sink in sinks:
            try:
                await sink.send(payload, f"test-{int(time.time())}-{sink.name}")
                results.append((sink.name, None))
            except DeliveryError as exc:
                kind = "retryable" if exc.retry else "permanent"
                results.append((sink.name, f"{exc.message} ({kind})"))
            except Exception as exc:
                results.append((sink.name, f"{type(exc).__name__}: {exc}"))
            finally:
                await sink.close()
    return results


def cmd_alerts_test(args: argparse.Namespace) -> int:
    cfg = load_or_report(args.config)
    if cfg is None:
        return 2
    names = [r.name for r in cfg.daemon.alerts.receivers]
    if args.receiver is not None and args.receiver not in names:
        print(f"error: unknown receiver {args.receiver!r}; known: {', '.join(names)}", file=sys.stderr)
        return 2
    results = asyncio.run(run_test(cfg, args.receiver))
    if not results:
        print("no sinks configured for that receiver")
        return 1
    for name, error in results:
        print(f"{name}: {'ok' if error is None else 'FAILED: ' + error}")
    return 0 if all(e is None for _, e in results) else 1


def _silences(args: argparse.Namespace, cfg: Config | None = None) -> tuple[Silences, StateDB] | None:
    cfg = cfg or load_or_report(args.config)
    if cfg is None:
        return None
    try:
        db = StateDB.open_dir(cfg.state_dir)
        return Silences(db), db
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _alertmanager_urls(cfg: Config, given: str) -> list[str]:
    """--alertmanager URL, or (given as "") the silence source's, then the alertmanager sinks' URLs."""
    if given:
        return alertmanager_urls([given])
    alerts = cfg.daemon.alerts
    urls = list(alerts.alertmanager_silences.urls) if alerts.alertmanager_silences else []
    urls += [u for rc in alerts.receivers for c in rc.alertmanager_configs for u in c.target_urls]
    return list(dict.fromkeys(urls))


def _silence_alertmanager(args: argparse.Namespace, duration: float) -> int:
    cfg = load_or_report(args.config)
    if cfg is None:
        return 2
    try:
        urls = _alertmanager_urls(cfg, args.alertmanager)
        matchers = [parse_matcher(m) for m in args.matcher]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not urls:
        print("error: --alertmanager needs a URL: none given and none in alerts.alertmanager_silences or "
              "an alertmanager receiver", file=sys.stderr)
        return 2
    from mevwatch.alerts.amsilences import AlertmanagerError, post_silence, silence_body

    now = time.time()
    body = silence_body(matchers, now, now + duration, args.author or getpass.getuser(), args.comment or "")
    try:
        url, sid = asyncio.run(post_silence(urls, body))
    except AlertmanagerError as exc:
        print(f"error: Alertmanager did not take the silence: {exc}", file=sys.stderr)
        return 1
    where = redact_sink_url(url)
    print(f"{sid} silences {', '.join(str(m) for m in matchers)} until {_ts(now + duration)} in Alertmanager {where}")
    return 0


def cmd_silence_add(args: argparse.Namespace) -> int:
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        print(f"error: --duration: {exc}", file=sys.stderr)
        return 2
    if duration <= 0:
        print("error: --duration: a silence needs a positive duration", file=sys.stderr)
        return 2
    if args.alertmanager is not None:
        return _silence_alertmanager(args, duration)
    cfg = load_or_report(args.config)
    if cfg is None:
        return 2
    if cfg.daemon.alerts.mode == "fleet":
        print("error: alerts.mode is fleet: silences belong to Alertmanager, a local one would mute nothing; "
              "use `mevwatch silence add --alertmanager` (or amtool silence add)", file=sys.stderr)
        return 2
    opened = _silences(args, cfg)
    if opened is None:
        return 2
    silences, db = opened
    try:
        sil = silences.add(args.matcher, duration, args.author or getpass.getuser(), args.comment or "")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    print(f"{sil.id} silences {', '.join(str(m) for m in sil.matchers)} until {_ts(sil.ends_at)}")
    return 0


def cmd_silence_list(args: argparse.Namespace) -> int:
    from mevwatch.alerts.engine import MIGRATIONS
    from mevwatch.alerts.silencing import concerning, load_read, source_json

    cfg = load_or_report(args.config)
    opened = _silences(args, cfg) if cfg is not None else None
    if cfg is None or opened is None:
        return 2
    silences, db = opened
    try:
        items = silences.list(include_expired=args.all)
        db.migrate("alerts_engine", MIGRATIONS)  # a state dir no daemon has used yet: empty tables
        read = load_read(db)  # Alertmanager's, as the daemon last read them
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    now = time.time()
    if not items and read is None:
        print("no silences")
    for s in items:
        print(_silence_line(s, now))
    if read is not None:  # below the line that says where and when they were read; none while unknown
        print("Alertmanager's silences: " + source_json(read, cfg.daemon.alerts.host, now)["text"])
        for s in concerning(read.silences, cfg.daemon.alerts.host) if not read.unknown_reason(now) else ():
            print(_silence_line(s, now))
    return 0


def _silence_line(s: Silence, now: float) -> str:
    state = "active" if s.active(now) else ("expired" if s.ends_at <= now else "pending")
    matchers = ", ".join(str(m) for m in s.matchers)
    return f"{s.id}  {state:8}  until {_ts(s.ends_at)}  {matchers}  by {s.created_by}  {s.comment}".rstrip()


def cmd_silence_expire(args: argparse.Namespace) -> int:
    opened = _silences(args)
    if opened is None:
        return 2
    silences, db = opened
    try:
        ok = silences.expire(args.id)
    finally:
        db.close()
    if not ok:
        print(f"error: no active silence {args.id!r}", file=sys.stderr)
        return 1
    print(f"{args.id} expired")
    return 0


def register(sub: Any) -> None:
    alerts = sub.add_parser("alerts", help="alert engine tools")
    asub = alerts.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    test = asub.add_parser("test", help="send a test notification through each sink and report per sink")
    add_config_argument(test)
    test.add_argument("--receiver", "-r", help="only this receiver")
    test.set_defaults(func=cmd_alerts_test)
    from mevwatch.alerts.listing import cmd_alerts_history, cmd_alerts_list

    ls_alerts = asub.add_parser("list", help="pending and firing alerts, from the state DB")
    add_config_argument(ls_alerts)
    ls_alerts.add_argument("--all", action="store_true", help="include alerts resolved in the last 15 minutes")
    ls_alerts.add_argument("--json", action="store_true", help="machine-readable output")
    ls_alerts.set_defaults(func=cmd_alerts_list)
    history = asub.add_parser("history", help="alerts that fired or resolved, from the state DB (30 days kept)")
    add_config_argument(history)
    history.add_argument("--since", default="24h", help="how far back, e.g. 1h, 7d (default 24h)")
    history.add_argument("--json", action="store_true", help="machine-readable output")
    history.set_defaults(func=cmd_alerts_history)

    silence = sub.add_parser("silence", help="mute alerts matching label matchers for a while")
    ssub = silence.add_subparsers(dest="silence_command", metavar="ACTION", required=True)
    add = ssub.add_parser("add", help="add a silence")
    add_config_argument(add)
    add.add_argument("--matcher", "-m", action="append", required=True,
                     help='label matcher, e.g. alertname="DiskSpaceHigh" or mount=~"/data.*" (repeatable)')
    add.add_argument("--duration", "-d", required=True, help="how long, e.g. 2h, 30m")
    add.add_argument("--comment", default="", help="why")
    add.add_argument("--author", default="", help="who (default: the current user)")
    add.add_argument("--alertmanager", nargs="?", const="", default=None, metavar="URL",
                     help="write the silence to Alertmanager (API v2) instead of the local state DB; without URL: "
                          "alerts.alertmanager_silences, then the alertmanager receivers' URLs")
    add.set_defaults(func=cmd_silence_add)
    ls = ssub.add_parser("list", help="list silences")
    add_config_argument(ls)
    ls.add_argument("--all", action="store_true", help="include expired silences")
    ls.set_defaults(func=cmd_silence_list)
    exp = ssub.add_parser("expire", help="end a silence now")
    add_config_argument(exp)
    exp.add_argument("id")
    exp.set_defaults(func=cmd_silence_expire)
