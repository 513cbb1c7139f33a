"""``mevwatch diagnose``: the runbook's quick diagnostic script as one command.

Runs every configured collector once (no daemon, with timeouts), judges the values with the
alert rules' thresholds, and prints OK/WARN/CRIT lines grouped by runbook section, with the
value and the runbook anchor. Exit code by the worst line: 0 OK, 1 WARN, 2 CRIT.
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

from mevwatch.blocking import BlockingPool
from mevwatch.collectors.base import CollectorError, NoData, PollCollector, StreamCollector, all_kinds
from mevwatch.daemon.config import Config
from mevwatch.daemon.families import Metric

if TYPE_CHECKING:
    from mevwatch.alerts.rules import LabelSet

__all__ = ["Line", "evaluate", "register", "run_collectors"]

STATUS_RANK = {"OK": 0, "INFO": 0, "WARN": 1, "CRIT": 2}
SEVERITY_STATUS = {"critical": "CRIT", "warning": "WARN", "info": "INFO"}
COLLECTOR_SECTION = "collector-failing"
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
            families = list(await asyncio.wait_for(collector.collect(), timeout))
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
        details = await asyncio.wait_for(collector.details(), timeout)
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
            await asyncio.wait_for(collector.close(), 2.0)
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


def evaluate(results: list[RunResult], cfg: Config) -> list[Line]:
    """Judge the collected values with the non-windowed alert rules; add collector and detail lines."""
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
        if rule.window:  # increase/rate need history a single run does not have
            continue
        if not rule.metric.startswith("mevwatch_collector_") and not _metric_from(rule.metric, ran, samples):
            continue
        values = evaluate_rule(rule, samples, {}, now)
        if rule.absent and not _metric_from(rule.metric, ran, samples):
            continue
        status = "OK"
        shown: list[str] = []
        for labels, value in sorted(values.items()):
            label_text = ",".join(f"{k}={v}" for k, v in labels if k not in ("le",))
            hit = rule.absent or rule.passes(value, False)
            if hit:
                status = max(status, SEVERITY_STATUS.get(rule.severity, "WARN"), key=STATUS_RANK.__getitem__)
            shown.append(("!" if hit else "") + (f"{label_text}=" if label_text else "") + _fmt_value(value))
        if not values and not rule.absent:
            continue
        value_text = "; ".join(shown[:8]) + (f"; ... {len(shown) - 8} more" if len(shown) > 8 else "")
        check = f"{rule.name} ({rule.metric} {rule.op} {_fmt_value(rule.threshold)})"
        lines.append(Line(rule.runbook, check, status, value_text or "absent", rule.runbook))
    return lines


def _metric_from(metric: str, ran: set[str], samples: Mapping[str, Any]) -> bool:
    """Whether the collectors that ran could have produced ``metric`` (otherwise: not configured)."""
    return metric in samples or metric + "_bucket" in samples or any(
        metric.startswith(f"mevwatch_{k}") for k in ran
    )


def _section_of_kind(kind: str) -> str:
    """The runbook anchor a collector kind declares (``Collector.runbook_section``)."""
    from mevwatch.collectors.base import get_kind

    cls = get_kind(kind)
    return (cls.runbook_section if cls is not None else "") or COLLECTOR_SECTION


def _section_titles() -> dict[str, str]:
    """Anchor -> heading of docs/runbooks.md (anchors themselves when the file is not shipped)."""
    path = Path(__file__).resolve().parents[1] / "docs" / "runbooks.md"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    return {m.group(1): m.group(2).strip() for m in re.finditer(r'<a id="([^"]+)"></a>\s*\n##\s+(.+)', text)}


def render_table(lines: list[Line], color: bool) -> str:
    titles = _section_titles()
    order = list(dict.fromkeys([*titles, *(ln.section for ln in lines)]))
    colors = {"OK": "\x1b[32m", "INFO": "\x1b[36m", "WARN": "\x1b[33m", "CRIT": "\x1b[31;1m"}
    out = []
    width = min(max((len(ln.check) for ln in lines), default=20), 70)
    for section in order:
        group = [ln for ln in lines if ln.section == section]
        if not group:
            continue
        out.append(f"\n[{titles.get(section, section)}]  docs/runbooks.md#{section}")
        for ln in sorted(group, key=lambda x: (-STATUS_RANK[x.status], x.check)):
            status = f"{colors[ln.status]}{ln.status:4}\x1b[0m" if color else f"{ln.status:4}"
            out.append(f"  {status}  {ln.check[:width]:<{width}}  {ln.value}")
    worst = max((STATUS_RANK[ln.status] for ln in lines), default=0)
    counts = {s: sum(1 for ln in lines if ln.status == s) for s in ("CRIT", "WARN", "OK", "INFO")}
    out.append(f"\n{counts['CRIT']} CRIT, {counts['WARN']} WARN, {counts['OK']} OK, {counts['INFO']} INFO"
               f" -> {['OK', 'WARN', 'CRIT'][worst]}")
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
    results = asyncio.run(run_collectors(cfg, kinds, args.stream_window, args.timeout))
    lines = evaluate(results, cfg)  # with --section, only that section's collectors ran
    worst = max((STATUS_RANK[ln.status] for ln in lines), default=0)
    if args.json:
        print(json.dumps({"status": ["OK", "WARN", "CRIT"][worst], "lines": [asdict(ln) for ln in lines]}, indent=1))
    else:
        print(render_table(lines, color=sys.stdout.isatty()))
    return worst


def register(sub: Any) -> None:
    from mevwatch.daemon.cli import add_config_argument

    p = sub.add_parser("diagnose", help="run every collector once and print OK/WARN/CRIT by runbook section",
                       description=__doc__)
    add_config_argument(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--section", metavar="NAME", help="only one runbook section (anchor) or collector kind")
    p.add_argument("--timeout", type=float, default=10.0, help="per-collector timeout, seconds (default 10)")
    p.add_argument("--stream-window", type=float, default=2.0,
                   help="how long stream collectors (kmsg, inotify, websocket) run, seconds (default 2)")
    p.set_defaults(func=cmd_diagnose)
