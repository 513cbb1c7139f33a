"""The running engine's verdicts as JSON: alerts (Alertmanager-like fields), rules with their last values, silences
(local ones, and Alertmanager's as the engine last read them, with that read's state).

Read by ``GET /api/v1/alerts`` and ``/api/v1/rules``, the landing page and ``mevwatch diagnose``; they only
read the engine's state, never evaluate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mevwatch.alerts.identity import DETAIL_ANNOTATIONS
from mevwatch.alerts.router import Silence, generator_url, is_inhibited, rfc3339, silence_command
from mevwatch.alerts.rules import Alert
from mevwatch.alerts.silencing import SilenceRead, alert_silencing, silence_json, source_json
from mevwatch.alerts.templates import for_text
from mevwatch.metric_owners import METRIC_OWNERS

if TYPE_CHECKING:
    from mevwatch.alerts.engine import AlertEngine
    from mevwatch.alerts.rule import Rule

__all__ = ["GAP_RUNBOOK", "SEVERITY_RANK", "VERDICT_RANK", "CollectorsRead", "alert_verdict", "alerts_json",
           "engine_view", "missing_reason", "rule_condition", "rules_json", "silence_read", "silence_source_json",
           "silences_json", "verdict", "verdict_text"]

SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
MAX_SERIES = 20  # values shown per rule
#: the runbook anchor of the rules that say a check cannot be made (MonitoringGap*)
GAP_RUNBOOK = "monitoring-gap"
MAX_NAMED = 3  # failing instances, gap alerts or reason gauges named in one reason
#: how much an alert weighs in the host's verdict (INFO: it is shown, the verdict stays OK)
VERDICT_RANK = {"OK": 0, "INFO": 0, "WARN": 1, "CRIT": 2}
_SEVERITY_VERDICT = {"critical": "CRIT", "warning": "WARN", "info": "INFO"}


@dataclass(frozen=True, slots=True)
class CollectorsRead:
    """The supervisor's collectors as it holds them at one moment, for why a rule has no data.

    ``declared``: each sample name the running kinds declare, with its kind; ``instances``: each instance's
    status as /health shows it (``collector``, ``instance``, ``success``, ``last_error``); ``disabled``: kinds
    configured with every instance disabled."""

    declared: Mapping[str, str] = field(default_factory=dict)
    instances: Sequence[Mapping[str, Any]] = ()
    disabled: frozenset[str] = frozenset()

    @property
    def failing(self) -> int:
        return sum(1 for r in self.instances if r["success"] is False)


def _number(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def _local_silences(engine: AlertEngine) -> list[Silence]:
    """The local silences that hold anything: none in fleet mode, where the router sends every alert on."""
    return engine.router.silences.list(include_expired=False) if engine.cfg.mode == "standalone" else []


def silence_read(engine: AlertEngine) -> SilenceRead | None:
    """The engine's last read of Alertmanager's silences (None: it reads none): what the screens show."""
    return engine.am_watch.last_read if engine.am_watch is not None else None


def alert_verdict(state: str, severity: str, suppressed: str, gap: bool, for_: float = 0.0,
                  pending_for: float = math.inf, settle: float = 0.0) -> dict[str, str]:
    """What one alert counts for in the host's verdict, the one rule ``/``, ``/api/v1/*`` and ``mevwatch diagnose``
    all follow: ``status`` (CRIT, WARN or INFO) and ``reason`` (why it counts so; "" for a plain firing alert).

    - firing and neither silenced nor inhibited: its severity (critical CRIT, warning WARN);
    - firing but silenced or inhibited (``suppressed``: "silenced" or "inhibited"): at most WARN. The silence
      mutes the page, not the fault: the host is not OK, and someone said they handle it, so not CRIT;
    - pending, of a rule that says a check cannot be made (``gap``: a MonitoringGap rule): WARN once it has been
      pending (``pending_for``) for ``settle`` (alerts.gap_settle, 1m) or its ``for``, whichever is shorter. Its
      ``for`` (10m) keeps a blind spot from paging; the host is blind meanwhile, and a green screen would say the
      opposite. The settle keeps a blind spot of one run (a method that timed out once) from flipping the
      verdict; until then it is INFO, shown with when it will count;
    - any other pending alert: INFO, shown but not counted (its ``for`` is there so that a blip never pages);
    - severity info: INFO (it tells, it does not make the host WARN).
    """
    status = _SEVERITY_VERDICT.get(severity, "WARN")
    if status == "INFO":
        return {"status": "INFO", "reason": ""}
    if state == "pending":
        if not gap:
            return {"status": "INFO", "reason": f"counts once it fires, after {for_text(for_)}"}
        wait = min(settle, for_)
        if pending_for < wait:
            return {"status": "INFO", "reason": f"blind spot: counts as WARN once it has lasted {for_text(wait)}; "
                                                f"pages once it has lasted {for_text(for_)}"}
        return {"status": "WARN", "reason": f"blind now: counts as WARN; pages once it has lasted {for_text(for_)}"}
    if suppressed:
        return {"status": "WARN",
                "reason": f"{suppressed}: counts as WARN" + (", not CRIT" if status == "CRIT" else "")}
    return {"status": status, "reason": ""}


def alerts_json(engine: AlertEngine, now: float | None = None) -> list[dict[str, Any]]:
    """Pending and firing alerts, firing first, then by severity and name; each with its silences (local, and
    Alertmanager's as last read: ``silencing``), inhibition, and what it counts for in the host's verdict."""
    now = time.time() if now is None else now
    active = [a for a in engine.all_alerts() if a.state in ("pending", "firing")]
    firing = [a for a in active if a.state == "firing"]
    rules = {r.name: r for r in engine.rules}
    local = _local_silences(engine)
    read = silence_read(engine)
    out = []
    for a in sorted(active, key=lambda a: (a.state != "firing", SEVERITY_RANK.get(a.severity, 1), a.rule,
                                           sorted(a.labels.items()))):
        silencing = alert_silencing(a.labels, local, read, now)
        silenced_by = [s["id"] for s in silencing["by"]]
        inhibited = a.state == "firing" and is_inhibited(a, firing, engine.cfg.inhibit_rules)
        rule = rules.get(a.rule)
        gap = rule is not None and rule.runbook == GAP_RUNBOOK
        suppressed = "silenced" if silenced_by else ("inhibited" if inhibited else "")
        out.append({
            "labels": dict(a.labels),
            "annotations": dict(a.annotations),
            "state": a.state,
            "activeAt": rfc3339(a.active_at),
            "startsAt": rfc3339(a.fired_at if a.fired_at is not None else a.active_at),
            "value": _number(a.value),
            "fingerprint": a.fingerprint,
            "generatorURL": generator_url(engine.cfg.external_url, a.fingerprint),
            "silence": silence_command(a.labels, engine.cfg.mode),
            "status": {
                "state": "suppressed" if silenced_by or inhibited else "active",
                "silencedBy": silenced_by,
                "inhibitedBy": ["inhibit_rules"] if inhibited else [],
            },
            "silencing": silencing,
            "verdict": alert_verdict(a.state, a.severity, suppressed, gap, rule.for_ if rule is not None else 0.0,
                                     now - a.active_at, engine.cfg.gap_settle),
        })
    return out


def silences_json(engine: AlertEngine, now: float | None = None) -> list[dict[str, Any]]:
    """The silences that hold this host's alerts: local ones (standalone), then Alertmanager's as last read
    (none while that read is unknown; ``silence_source_json`` says why)."""
    now = time.time() if now is None else now
    out = [silence_json(s, "local", now) for s in _local_silences(engine)]
    read = silence_read(engine)
    if read is not None:
        out += source_json(read, engine.cfg.host, now)["silences"]
    return out


def silence_source_json(engine: AlertEngine, now: float | None = None) -> dict[str, Any] | None:
    """The state of the Alertmanager silences read (None when the engine reads none)."""
    read = silence_read(engine)
    return source_json(read, engine.cfg.host, time.time() if now is None else now) if read is not None else None


def rule_condition(rule: Rule) -> str:
    """The rule's test in one line, e.g. ``increase(mevwatch_oom_kills_total[10m]) > 0``."""
    cond = rule.when
    paired = ""
    if cond is not None:
        base = f"increase({cond.metric}[{cond.increase:g}s])" if cond.increase else cond.metric
        paired = f"{base} {cond.op} {cond.threshold:g}"
    metric = rule.metric + ("{" + ",".join(map(str, rule.matchers)) + "}" if rule.matchers else "")
    if rule.absent:
        return f"{paired} without {metric}" if paired else f"absent({metric})"
    value = metric
    if rule.quantile is not None:
        value = f"p{rule.quantile * 100:g}({metric})"
    elif rule.increase:
        value = f"increase({metric}[{rule.increase:g}s])"
    elif rule.rate:
        value = f"rate({metric}[{rule.rate:g}s])"
    if rule.without:
        value = f"max without({','.join(rule.without)}) ({value})"
    return f"{value} {rule.op} {rule.threshold:g}" + (f" and {paired}" if paired else "")


def rules_json(engine: AlertEngine, collectors: CollectorsRead | None = None,
               listed: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every rule with its state: firing, pending, inactive (with the values it judged) or nodata (and why,
    from what ``collectors`` says of the collector that declares its metric). Each of its alerts carries who
    silences it and what it counts for in the verdict, as ``listed`` (``alerts_json`` of the same moment) says."""
    collectors = CollectorsRead() if collectors is None else collectors
    shown = {a["fingerprint"]: a for a in (alerts_json(engine) if listed is None else listed)}
    by_rule: dict[str, list[Alert]] = {}
    for a in engine.all_alerts():
        if a.state in ("pending", "firing"):
            by_rule.setdefault(a.rule, []).append(a)
    out = []
    for rule in engine.rules:
        alerts = by_rule.get(rule.name, [])
        evaluated = engine.last_values.get(rule.name)
        series = []
        if evaluated is not None:
            _, values = evaluated
            for labels, value in sorted(values.items(), key=lambda kv: -abs(kv[1]) if math.isfinite(kv[1]) else 0):
                series.append({"labels": dict(labels), "value": _number(value),
                               "breach": bool(rule.absent or rule.passes(value, False))})
                if len(series) >= MAX_SERIES:
                    break
        reason = ""
        if alerts:
            state = "firing" if any(a.state == "firing" for a in alerts) else "pending"
        elif series or (rule.absent and evaluated is not None):
            state = "inactive"
        else:
            state = "nodata"
            metric = rule.metric + "_bucket" if rule.quantile is not None else rule.metric
            if metric not in engine.seen_metrics:
                reason = missing_reason(engine, rule, metric, collectors)
            elif rule.window:
                reason = f"the {rule.window:g}s window has no two samples of {rule.metric} yet"
            else:
                reason = f"no series of {rule.metric} matches {', '.join(map(str, rule.matchers)) or 'the rule'}"
        out.append({
            "name": rule.name,
            "severity": rule.severity,
            "runbook": rule.runbook,
            "runbook_url": f"{engine.cfg.runbook_url}#{rule.runbook}",
            "condition": rule_condition(rule),
            "windowed": bool(rule.window),
            "state": state,
            "reason": reason,
            "lastEvaluation": rfc3339(evaluated[0]) if evaluated is not None else None,
            "alerts": [{"labels": dict(a.labels), "state": a.state, "value": _number(a.value),
                        "fingerprint": a.fingerprint,
                        "summary": a.annotations.get("summary", ""),
                        "details": {k: a.annotations[k] for k in DETAIL_ANNOTATIONS if a.annotations.get(k)},
                        **{k: shown[a.fingerprint][k] for k in ("silencing", "verdict") if a.fingerprint in shown}}
                       for a in alerts],
            "series": series,
        })
    return out


def missing_reason(engine: AlertEngine, rule: Rule, metric: str, collectors: CollectorsRead) -> str:
    """Why no series of ``metric`` (the sample name ``rule`` reads) was ever seen: the collector kind that
    declares it is not configured, has not run yet, fails (with its error), or runs without exporting it (with
    the monitoring-gap alerts or ``*_reason``/``*_unread*`` gauges of that kind that say why, if any)."""
    what = f"no series of {rule.metric}"
    kind = collectors.declared.get(metric)
    if kind is None:
        owner = METRIC_OWNERS.get(metric)
        if owner is None:  # only the textfile collector passes on series no kind declares
            passes = any(r["collector"] == "textfile" for r in collectors.instances)
            tail = (", and the textfile collector exported none" if passes
                    else " (nor is a textfile collector configured)")
            return f"{what}: no collector kind declares it{tail}"
        state = "configured but disabled" if owner in collectors.disabled else "not configured"
        return f"{what}: the {owner} collector, which exports it, is {state}"
    rows = [r for r in collectors.instances if r["collector"] == kind]
    failing = [r for r in rows if r["success"] is False]
    if failing:
        errors = "; ".join(f"{r['instance']}: {r.get('last_error') or 'failed'}" for r in failing[:MAX_NAMED])
        return f"{what}: the {kind} collector fails ({errors})"
    if not any(r["success"] for r in rows):
        return f"{what}: the {kind} collector has not run yet"
    gaps = _gap_alerts(engine, kind, collectors, rule.name)
    if gaps:
        return f"{what}: the {kind} collector runs but cannot make this check: " + "; ".join(gaps)
    reasons = _reason_gauges(engine, kind, rows)
    if reasons:
        return f"{what}: the {kind} collector runs but exported none; it reports " + ", ".join(reasons)
    return f"{what}: the {kind} collector runs but exported no series of it (a check it could not make)"


def _gap_alerts(engine: AlertEngine, kind: str, collectors: CollectorsRead, blinded: str) -> list[str]:
    """The firing or pending monitoring-gap alerts over the metrics of ``kind``, as ``name state: summary``;
    those whose summary names the rule ``blinded`` alone when there are such."""
    found: list[tuple[str, Alert]] = []
    for rule in engine.rules:
        if rule.runbook != GAP_RUNBOOK or not any(collectors.declared.get(n) == kind for n in rule.inputs):
            continue
        found += [(rule.name, a) for a in sorted(engine.alerts.get(rule.name, {}).values(), key=lambda a: a.fingerprint)
                  if a.state in ("firing", "pending")]
    naming = [(n, a) for n, a in found if blinded in a.annotations.get("summary", "")]
    return [f"{n} {a.state}: {a.annotations.get('summary', '')}".rstrip(": ") for n, a in (naming or found)[:MAX_NAMED]]


def _reason_gauges(engine: AlertEngine, kind: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The set ``*_reason`` and ``*_unread*`` series of ``kind``'s current snapshots, as ``name{labels}``: the
    gauges a collector sets to say why it could not read something."""
    out: list[str] = []
    for r in rows:
        snap = engine.store.get((kind, r["instance"]))
        for fam in snap.families if snap is not None else ():
            if not (fam.name.endswith("_reason") or "_unread" in fam.name):
                continue
            for sample in fam.samples:
                if sample.value and len(out) < MAX_NAMED:
                    labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                    out.append(f"{sample.name}{{{labels}}}")
    return out


def engine_view(engine: AlertEngine, collectors: CollectorsRead) -> dict[str, Any]:
    """Everything the landing page and ``/api/v1/*`` show of the engine, read at one moment."""
    now = engine.clock()
    alerts = alerts_json(engine, now)
    return {"alerts": alerts, "rules": rules_json(engine, collectors, alerts), "silences": silences_json(engine, now),
            "silence_source": silence_source_json(engine, now), "verdict": verdict(alerts, collectors.failing),
            "host": engine.cfg.host}


def verdict(alerts: Sequence[Mapping[str, Any]], collectors_failing: int) -> str:
    """The host's verdict: the worst of what its alerts count for (``alert_verdict``), WARN with a failing
    collector, else OK. ``mevwatch diagnose`` exits by the same: 0 OK, 1 WARN, 2 CRIT."""
    worst = max((VERDICT_RANK[_counts(a)] for a in alerts), default=0)
    if collectors_failing:
        worst = max(worst, 1)
    return ["OK", "WARN", "CRIT"][worst]


def _counts(alert: Mapping[str, Any]) -> str:
    """An alert's ``verdict`` status (or, from a reader that did not add it, the same rule from its fields)."""
    if "verdict" in alert:
        return str(alert["verdict"]["status"])
    status = alert.get("status", {})
    suppressed = "silenced" if status.get("silencedBy") else ("inhibited" if status.get("inhibitedBy") else "")
    return alert_verdict(alert["state"], alert["labels"].get("severity", ""), suppressed, False)["status"]


def verdict_text(alerts: Sequence[Mapping[str, Any]], collectors_failing: int, collectors: int) -> str:
    """Why the verdict is what it is, in one line: the firing alerts (and how many of them are silenced or
    inhibited, or whose silence state is UNKNOWN), the pending ones (and how many of them are blind spots that
    already count), the failing collectors."""
    firing = [a for a in alerts if a["state"] == "firing"]
    pending = [a for a in alerts if a["state"] == "pending"]
    silenced = sum(1 for a in firing if a["status"]["silencedBy"])
    inhibited = sum(1 for a in firing if a["status"]["inhibitedBy"] and not a["status"]["silencedBy"])
    unknown = sum(1 for a in firing if a.get("silencing", {}).get("state") == "unknown")
    blind = sum(1 for a in pending if _counts(a) != "INFO")
    return (f"{len(firing)} firing" + (f" ({silenced} silenced)" if silenced else "")
            + (f" ({inhibited} inhibited)" if inhibited else "")
            + (f" ({unknown} whose silence state is UNKNOWN)" if unknown else "")
            + f", {len(pending)} pending alert(s)"
            + (f" ({blind} of them a check that cannot be made: WARN now)" if blind else "")
            + f"; {collectors_failing} of {collectors} collectors failing")
