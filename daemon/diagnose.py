"""``mevwatch diagnose``: the runbook's quick diagnostic script as one command.

When a daemon runs it shows the daemon's own verdicts (its live alert states, windowed values and
collector states, and who silences a firing alert as it last read Alertmanager, read from its local
read-only ``/api/v1/rules``, ``/api/v1/alerts`` and ``/health``). Without one it runs
every configured collector once (with timeouts), judges the values with the rules that need no history,
and marks the others UNKNOWN with the reason. Either way it adds the runbook's "recent errors (last 10
minutes)" and the largest processes. Lines are OK/INFO/UNKNOWN/WARN/CRIT grouped by runbook section,
with the value and the runbook anchor. Exit code by the worst line: 0 OK, 1 WARN, 2 CRIT; with a daemon,
the same verdict as its landing page (a silenced alert counts as WARN, not CRIT; a pending check that cannot
be made, as WARN once it has lasted alerts.gap_settle).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mevwatch.aio import wait_for
from mevwatch.blocking import BlockingPool
from mevwatch.collectors.base import CollectorError, NoData, PollCollector, StreamCollector
from mevwatch.collectors.registry import all_kinds
from mevwatch.daemon.config import Config
from mevwatch.families import Metric
from mevwatch.runbookdoc import RUNBOOKS_PATH, section_titles

if TYPE_CHECKING:
    from mevwatch.alerts.rules import LabelSet

__all__ = ["DAEMON_STATE", "Line", "evaluate", "register", "run_collectors"]

STATUS_RANK = {"OK": 0, "INFO": 0, "UNKNOWN": 0, "WARN": 1, "CRIT": 2}
RECENT_ERRORS_SECTION = "service-down"
RECENT_ERRORS_WINDOW = 600.0  # the runbook's "Recent Errors (last 10 minutes)"
#: labels that name a series best, when one series is shown alone
# Most specific first: one series alone is named by a table before its database, and that before its server.
_NAMING_LABELS = ("table", "path", "unit", "mountpoint", "endpoint", "target", "wallet", "datname", "server",
                  "source", "pattern", "cpu", "reference", "collector", "sink")
# a down target's page says why, a lost notification's what it carried; its diagnose line says the same
_WHY_LABELS = ("reason", "lost")
SEVERITY_STATUS = {"critical": "CRIT", "warning": "WARN", "info": "INFO"}
COLLECTOR_SECTION = "collector-failing"
SILENCES_SECTION = "alertmanager-unreachable"
#: metrics whose value is the daemon's memory of its earlier runs: one run here starts afresh and cannot tell them
DAEMON_STATE = {
    "mevwatch_rpc_circuit_breaker_state": "the circuit breaker's state lives in the daemon (failed probes in a row "
                                          "over its runs); one run here starts with a fresh, closed breaker",
}
_PERMISSION_RE = re.compile(r"permission|EACCES|EPERM|not permitted|denied", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Line:
    section: str  # runbook anchor
    check: str
    status: str  # OK, INFO, WARN, CRIT
    value: str
    runbook: str


@dataclass(slots=True)
class RunResult:
    kind: str
    instance: str
    families: list[Metric]
    error: str | None
    details: list[tuple[str, str]]
    seconds: float


async def _run_one(collector: Any, stream_window: float, timeout: float) -> RunResult:
    ctx = collector.ctx
    started = time.monotonic()
    families: list[Metric] = []
    error: str | None = None
    details: list[tuple[str, str]] = []
    try:
        if isinstance(collector, PollCollector):
            families = list(await wait_for(collector.collect(), timeout))
        elif isinstance(collector, StreamCollector):
            latest: list[list[Metric]] = []
            task = asyncio.create_task(collector.run(lambda fams: latest.append(list(fams))))
            done, _ = await asyncio.wait({task}, timeout=stream_window)
            if task in done:
                task.result()  # raises the stream's error, if it ended with one
            else:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            families = latest[-1] if latest else []
        details = await wait_for(collector.details(), timeout)
    except TimeoutError:
        error = f"timeout: no answer within {timeout:g}s"
    except CollectorError as exc:
        error = f"{exc.reason}: {exc.message}"
        families = list(exc.families or [])
    except NoData:
        pass
    except Exception as exc:
        error = f"exception: {type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await wait_for(collector.close(), 2.0)
    return RunResult(ctx.kind, ctx.instance, families, error, details, time.monotonic() - started)


async def run_collectors(cfg: Config, kinds: set[str] | None, stream_window: float,
                         timeout: float) -> list[RunResult]:
    """Every enabled collector of ``cfg`` (or only ``kinds``) once, concurrently."""
    from mevwatch.daemon.state import StateDB, StateError
    from mevwatch.daemon.supervisor import build_collector

    paths = cfg.daemon.paths.to_paths()
    pool = BlockingPool(cfg.daemon.blocking_threads)
    try:
        state: StateDB | None = StateDB.open_dir(cfg.state_dir)
    except StateError:
        state = None  # read-only host or no state dir yet: collectors that need it say so
    collectors = []
    for spec in cfg.collectors:
        if not spec.options.enabled or (kinds is not None and spec.kind not in kinds):
            continue
        collector, status = build_collector(spec, paths, state, pool)
        collectors.append((collector, min(status.timeout, timeout)))
    try:
        return list(await asyncio.gather(*(_run_one(c, stream_window, t) for c, t in collectors)))
    finally:
        pool.shutdown()
        if state is not None:
            state.close()


def _samples(families: Iterable[Metric]) -> dict[str, dict[LabelSet, float]]:
    """{sample name: {label set: value}}, keyed as the rule engine's evaluate_rule expects."""
    from mevwatch.alerts.rules import labelset

    out: dict[str, dict[LabelSet, float]] = {}
    for fam in families:
        for s in fam.samples:
            out.setdefault(s.name, {})[labelset(s.labels)] = float(s.value)
    return out


def _fmt_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.4g}"


def evaluate(results: list[RunResult], cfg: Config, no_daemon: str = "") -> list[Line]:
    """Judge the collected values with the alert rules that need no history; add collector and detail lines.

    Rules over a window, and rules whose metric a configured collector did not deliver, are UNKNOWN with
    the reason (``no_daemon`` says why no daemon's history could be used).
    """
    from mevwatch.alerts.rules import evaluate_rule

    lines: list[Line] = []
    for r in results:
        name = f"collector {r.kind}/{r.instance}"
        if r.error is None:
            lines.append(Line(_section_of_kind(r.kind), name, "OK", f"{r.seconds * 1000:.0f} ms",
                              COLLECTOR_SECTION))
        else:
            needs_root = os.geteuid() != 0 and bool(_PERMISSION_RE.search(r.error))
            status = "INFO" if needs_root else "WARN"
            text = ("needs root: " if needs_root else "") + r.error
            lines.append(Line(_section_of_kind(r.kind), name, status, text, COLLECTOR_SECTION))
        for check, text in r.details:
            lines.append(Line(_section_of_kind(r.kind), check, "INFO", text, _section_of_kind(r.kind)))

    samples = _samples(f for r in results for f in r.families)
    ran = {r.kind for r in results}
    now = time.time()
    for rule in cfg.daemon.alerts.all_rules:
        produced = _metric_from(rule.metric, ran, samples)
        if not rule.metric.startswith("mevwatch_collector_") and not produced:
            continue
        check = f"{rule.name} ({_condition(rule)})"
        if rule.window:  # increase/rate need history a single run does not have
            why = f"needs {rule.window:g}s of history; {no_daemon or 'no daemon was asked'}"
            lines.append(Line(rule.runbook, check, "UNKNOWN", why, rule.runbook))
            continue
        if rule.metric in DAEMON_STATE:  # a fresh value here would say OK about a check it did not make
            why = f"{DAEMON_STATE[rule.metric]}; {no_daemon or 'no daemon was asked'}"
            lines.append(Line(rule.runbook, check, "UNKNOWN", why, rule.runbook))
            continue
        values = evaluate_rule(rule, samples, {}, now)
        if not values and rule.metric.startswith("mevwatch_collector_"):
            continue  # the supervisor's series exist only in a daemon; the collector lines above say the same
        if not values and not rule.absent:
            metric = rule.metric + ("_bucket" if rule.quantile is not None else "")
            why = (f"no series of {rule.metric} from the collectors that ran" if metric not in samples
                   else f"no series of {rule.metric} matches {', '.join(map(str, rule.matchers))}")
            lines.append(Line(rule.runbook, check, "UNKNOWN", why, rule.runbook))
            continue
        hits = {labels: bool(rule.absent or rule.passes(value, False)) for labels, value in values.items()}
        status = "OK"
        if any(hits.values()):
            status = SEVERITY_STATUS.get(rule.severity, "WARN")
        lines.append(Line(rule.runbook, check, status, series_text(values, hits) or "absent", rule.runbook))
    return lines


def _condition(rule: Any) -> str:
    from mevwatch.alerts.api import rule_condition

    return str(rule_condition(rule))


def series_text(values: Mapping[LabelSet, float], hits: Mapping[LabelSet, bool], limit: int = 8) -> str:
    """``label=value`` per series, breaching ones first and marked ``!``, with only the labels that tell the
    series apart (one series alone: the label that names it best, and the reason when it has one)."""
    sets = [dict(ls) for ls in values]
    keys: list[str] = []
    if len(sets) > 1:
        every = sorted({k for d in sets for k in d if k != "le"})
        keys = [k for k in every if len({d.get(k) for d in sets}) > 1]
    elif sets:
        keys = [k for k in _NAMING_LABELS if k in sets[0]][:1] + [k for k in _WHY_LABELS if k in sets[0]]
    ordered = sorted(values.items(), key=lambda kv: (not hits.get(kv[0], False), kv[0]))
    shown = []
    for labels, value in ordered:
        d = dict(labels)
        name = ",".join(f"{k}={d[k]}" for k in keys if k in d)
        shown.append(("!" if hits.get(labels) else "") + (f"{name}=" if name else "") + _fmt_value(value))
    text = "; ".join(shown[:limit])
    return text + (f"; ... {len(shown) - limit} more" if len(shown) > limit else "")


# --- the running daemon's verdicts ---------------------------------------------------------


def daemon_url(cfg: Config) -> str:
    """Where this config's daemon listens (a wildcard address is asked on loopback)."""
    host, _, port = cfg.daemon.web.listen_address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def fetch_daemon(url: str, timeout: float) -> tuple[dict[str, Any] | None, str]:
    """(the daemon's rules and health, "") or (None, why not)."""
    import urllib.error
    import urllib.request

    docs: dict[str, Any] = {}
    for key, path in (("rules", "/api/v1/rules"), ("health", "/health"), ("alerts", "/api/v1/alerts")):
        try:
            with urllib.request.urlopen(url + path, timeout=timeout) as resp:
                docs[key] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return None, f"the daemon at {url} answered {path} with HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            return None, f"no daemon answered at {url} ({reason})"
    if docs["rules"].get("warnings"):
        return None, f"the daemon at {url} runs no alert engine"
    return {"rules": docs["rules"]["data"]["rules"], "health": docs["health"],
            "alerts": docs["alerts"]["data"]["alerts"],
            "silence_source": docs["alerts"]["data"].get("alertmanagerSilences")}, ""


def daemon_lines(doc: Mapping[str, Any], url: str, configured: set[str]) -> list[Line]:
    """The daemon's verdicts as lines: its collectors, then every rule it evaluates (rules of collectors that
    are not configured are left out, as in a local run), and for each firing or pending alert a line with its
    summary (the facts its page carries) and one for each detail annotation (a changed file's diff)."""
    from mevwatch.alerts.identity import DETAIL_ANNOTATIONS

    lines = [Line(COLLECTOR_SECTION, "verdicts from", "INFO", f"the running daemon at {url}", COLLECTOR_SECTION)]
    source = doc.get("silence_source")
    if source is not None:  # as the daemon last read them; diagnose never asks Alertmanager itself
        lines.append(Line(SILENCES_SECTION, "Alertmanager silences", "UNKNOWN" if source["state"] == "unknown"
                          else "OK", source["text"], SILENCES_SECTION))
    # who silences each alert and what it counts for, from /api/v1/alerts when the rule's own entry lacks them
    shown = {tuple(sorted(a["labels"].items())): a for a in doc.get("alerts", [])}
    for c in doc["health"].get("collectors", []):
        name = f"collector {c['collector']}/{c['instance']}"
        section = _section_of_kind(c["collector"])
        if c["success"] is False:
            lines.append(Line(section, name, "WARN", c.get("last_error") or "failing", COLLECTOR_SECTION))
        else:
            lines.append(Line(section, name, "OK" if c["success"] else "UNKNOWN",
                              "ok" if c["success"] else "no run finished yet", COLLECTOR_SECTION))
    for r in doc["rules"]:
        check = f"{r['name']} ({r['condition']})"
        if r["state"] == "nodata" and not _metric_configured(r["condition"], configured):
            continue
        if r["state"] in ("firing", "pending"):
            alerts = [{**shown.get(tuple(sorted(a["labels"].items())), {}), **a} for a in r["alerts"]]
            # the same rule as the landing page's verdict (alerts.api.alert_verdict): a silenced alert counts as
            # WARN at most, a pending blind spot as WARN, another pending alert not at all
            counts = [_counts(a, r) for a in alerts]
            status = max((c["status"] for c in counts), key=STATUS_RANK.__getitem__, default="INFO")
            values = {_labelset(a["labels"]): _float(a["value"]) for a in alerts}
            text = r["state"] + ": " + series_text(values, dict.fromkeys(values, True))
            reasons = list(dict.fromkeys(c["reason"] for c in counts if c["reason"]))
            if reasons:
                text += f" ({'; '.join(reasons)})"
            lines.append(Line(r["runbook"], check, status, text, r["runbook"]))
            for a in alerts:
                name = next((f" {a['labels'][k]}" for k in _NAMING_LABELS if k in a["labels"]), "")
                if a.get("summary"):  # the page's own facts (missing nonces, hashes, why a node is down)
                    lines.append(Line(r["runbook"], f"{r['name']}{name}", "INFO", a["summary"], r["runbook"]))
                held = a.get("silencing") if a["state"] == "firing" else None
                if held is not None and held["state"] in ("silenced", "unknown"):
                    lines.append(Line(r["runbook"], f"{r['name']}{name} silence",
                                      "INFO" if held["state"] == "silenced" else "UNKNOWN", held["text"], r["runbook"]))
                for key in DETAIL_ANNOTATIONS:
                    if a.get("details", {}).get(key):
                        lines.append(Line(r["runbook"], f"{key}{name}", "INFO", a["details"][key], r["runbook"]))
            continue
        elif r["state"] == "nodata":
            status, text = "UNKNOWN", r["reason"]
        else:
            values = {_labelset(x["labels"]): _float(x["value"]) for x in r["series"]}
            hits = {_labelset(x["labels"]): bool(x["breach"]) for x in r["series"]}
            status, text = "OK", series_text(values, hits) or "present"
        lines.append(Line(r["runbook"], check, status, text, r["runbook"]))
    return lines


def _counts(alert: Mapping[str, Any], rule: Mapping[str, Any]) -> dict[str, str]:
    """What ``alert`` counts for in the verdict, as the daemon said (from an older daemon: the same rule, from
    the alert's silence state and its rule's runbook)."""
    from mevwatch.alerts.api import GAP_RUNBOOK, alert_verdict

    if "verdict" in alert:
        return dict(alert["verdict"])
    suppressed = "silenced" if alert.get("silencing", {}).get("state") == "silenced" else ""
    return alert_verdict(alert["state"], rule["severity"], suppressed, rule["runbook"] == GAP_RUNBOOK)


def _labelset(labels: Mapping[str, str]) -> LabelSet:
    return tuple(sorted((k, v) for k, v in labels.items() if k not in ("alertname", "severity", "host")))


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _metric_configured(condition: str, configured: set[str]) -> bool:
    m = re.search(r"mevwatch_[a-z0-9_]+", condition)
    return m is not None and _metric_from(m.group(0), configured, {})


# --- the runbook's extra lines ---------------------------------------------------------------


def recent_errors(rootfs: Path, window: float = RECENT_ERRORS_WINDOW, limit: int = 20) -> list[Line]:
    """``journalctl --since "10 minutes ago" -p err``: the runbook's recent errors, or UNKNOWN and why."""
    import subprocess

    from mevwatch.collectors._journal import journal_available

    check = f"recent errors (last {window / 60:g} min, journal -p err)"
    exe, why = journal_available("journalctl", rootfs)
    if exe is None:
        return [Line(RECENT_ERRORS_SECTION, check, "UNKNOWN", why, RECENT_ERRORS_SECTION)]
    try:
        proc = subprocess.run([exe, "--since", f"-{int(window)}s", "-p", "err", "--no-pager", "-q", "-o", "short-iso"],
                              capture_output=True, text=True, timeout=10, errors="replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Line(RECENT_ERRORS_SECTION, check, "UNKNOWN", f"journalctl failed: {exc}", RECENT_ERRORS_SECTION)]
    if proc.returncode != 0:
        text = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return [Line(RECENT_ERRORS_SECTION, check, "UNKNOWN", f"journalctl: {text[0]}", RECENT_ERRORS_SECTION)]
    entries = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    lines = [Line(RECENT_ERRORS_SECTION, check, "INFO", f"{len(entries)} line(s)", RECENT_ERRORS_SECTION)]
    lines += [Line(RECENT_ERRORS_SECTION, "  error", "INFO", e[:200], RECENT_ERRORS_SECTION) for e in entries[-limit:]]
    return lines


def top_memory(procfs: Path, n: int = 5) -> list[Line]:
    """The runbook's ``ps aux --sort=-%mem | head``: the largest processes by RSS."""
    from mevwatch.collectors.memory import top_processes

    try:
        groups = top_processes(procfs, n, os.sysconf("SC_PAGE_SIZE"))
    except OSError as exc:
        return [Line("memory-high", "top memory processes", "UNKNOWN", f"cannot list {procfs}: {exc.strerror}",
                     "memory-high")]
    return [
        Line("memory-high", f"top memory #{i}", "INFO",
             f"{g.comm}{f' ({g.unit})' if g.unit else ''}: {g.resident_bytes / 2**20:.0f} MiB"
             + (f" in {g.processes} processes" if g.processes > 1 else ""), "memory-high")
        for i, g in enumerate(groups, 1)
    ]


def _metric_from(metric: str, ran: set[str], samples: Mapping[str, Any]) -> bool:
    """Whether the collectors that ran could have produced ``metric`` (otherwise: not configured)."""
    return metric in samples or metric + "_bucket" in samples or any(
        metric.startswith(f"mevwatch_{k}") for k in ran
    )


def _section_of_kind(kind: str) -> str:
    """The runbook anchor a collector kind declares (``Collector.runbook_section``)."""
    from mevwatch.collectors.registry import get_kind

    cls = get_kind(kind)
    return (cls.runbook_section if cls is not None else "") or COLLECTOR_SECTION


def render_table(lines: list[Line], color: bool, runbook_url: str = RUNBOOKS_PATH) -> str:
    titles = section_titles()
    order = list(dict.fromkeys([*titles, *(ln.section for ln in lines)]))
    colors = {"OK": "\x1b[32m", "INFO": "\x1b[36m", "UNKNOWN": "\x1b[35m", "WARN": "\x1b[33m", "CRIT": "\x1b[31;1m"}
    out = []
    width = min(max((len(ln.check) for ln in lines), default=20), 70)
    for section in order:
        group = [ln for ln in lines if ln.section == section]
        if not group:
            continue
        out.append(f"\n[{titles.get(section, section)}]  {runbook_url}#{section}")
        for ln in sorted(group, key=lambda x: (-STATUS_RANK[x.status], x.status != "UNKNOWN")):
            status = f"{colors[ln.status]}{ln.status:7}\x1b[0m" if color else f"{ln.status:7}"
            value = ln.value.replace("\n", "\n" + " " * (width + 13))  # a diff's lines under its first
            out.append(f"  {status}  {ln.check[:width]:<{width}}  {value}")
    worst = max((STATUS_RANK[ln.status] for ln in lines), default=0)
    counts = {s: sum(1 for ln in lines if ln.status == s) for s in ("CRIT", "WARN", "UNKNOWN", "OK", "INFO")}
    out.append(f"\n{counts['CRIT']} CRIT, {counts['WARN']} WARN, {counts['UNKNOWN']} UNKNOWN, {counts['OK']} OK,"
               f" {counts['INFO']} INFO -> {['OK', 'WARN', 'CRIT'][worst]}")
    return "\n".join(out).lstrip("\n")


def cmd_diagnose(args: argparse.Namespace) -> int:
    from mevwatch.daemon.cli import load_or_report
    from mevwatch.daemon.logging import configure_logging

    cfg = load_or_report(args.config)
    if cfg is None:
        return 2
    configure_logging("error", "json")  # collectors' own warnings would garble the table
    kinds: set[str] | None = None
    if args.section:
        shipped = [k for k, c in all_kinds().items() if c.__module__.startswith("mevwatch.collectors.")]
        kinds = {k for k in shipped if args.section in (k, _section_of_kind(k))}
        if not kinds:
            known = sorted(set(shipped) | {_section_of_kind(k) for k in shipped})
            print(f"error: unknown section {args.section!r}; known: {', '.join(known)}", file=sys.stderr)
            return 2
    url = args.url or daemon_url(cfg)
    doc, why = (None, "--no-daemon given") if args.no_daemon else fetch_daemon(url, min(args.timeout, 3.0))
    paths = cfg.daemon.paths
    if doc is not None:
        configured = {spec.kind for spec in cfg.collectors if spec.options.enabled}
        lines = daemon_lines(doc, url, configured)
    else:
        results = asyncio.run(run_collectors(cfg, kinds, args.stream_window, args.timeout))
        lines = evaluate(results, cfg, why)  # with --section, only that section's collectors ran
    if kinds is not None:
        sections = {args.section} if args.section not in kinds else {_section_of_kind(k) for k in kinds}
        lines = [ln for ln in lines if ln.section in sections or (args.section in kinds and doc is None)]
    else:
        lines += recent_errors(paths.rootfs) + top_memory(paths.procfs)
    worst = max((STATUS_RANK[ln.status] for ln in lines), default=0)
    if args.json:
        print(json.dumps({"status": ["OK", "WARN", "CRIT"][worst], "lines": [asdict(ln) for ln in lines]}, indent=1))
    else:
        print(render_table(lines, color=sys.stdout.isatty(), runbook_url=cfg.daemon.alerts.runbook_url))
    return worst


def register(sub: Any) -> None:
    from mevwatch.daemon.cli import add_config_argument

    p = sub.add_parser("diagnose", help="run every collector once and print OK/WARN/CRIT by runbook section",
                       description=__doc__)
    add_config_argument(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--url", help="the running daemon to ask (default: http:// + web.listen_address)")
    p.add_argument("--no-daemon", action="store_true",
                   help="do not ask a running daemon: run the collectors once here")
    p.add_argument("--section", metavar="NAME", help="only one runbook section (anchor) or collector kind")
    p.add_argument("--timeout", type=float, default=10.0, help="per-collector timeout, seconds (default 10)")
    p.add_argument("--stream-window", type=float, default=2.0,
                   help="how long stream collectors (kmsg, inotify, websocket) run, seconds (default 2)")
    p.set_defaults(func=cmd_diagnose)
