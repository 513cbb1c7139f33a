"""The running engine's verdicts as JSON: alerts (Alertmanager-like fields), rules with their last values, silences.

Read by ``GET /api/v1/alerts`` and ``/api/v1/rules``, the landing page and ``mevwatch diagnose``; they only
read the engine's state, never evaluate.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from mevwatch.alerts.router import generator_url, is_inhibited, rfc3339, silence_command
from mevwatch.alerts.rules import Alert

if TYPE_CHECKING:
    from mevwatch.alerts.engine import AlertEngine
    from mevwatch.alerts.rule import Rule

__all__ = ["SEVERITY_RANK", "alerts_json", "rule_condition", "rules_json", "silences_json", "verdict"]

SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
MAX_SERIES = 20  # values shown per rule


def _number(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def alerts_json(engine: AlertEngine, now: float | None = None) -> list[dict[str, Any]]:
    """Pending and firing alerts, firing first, then by severity and name; each with its silences and inhibition."""
    now = time.time() if now is None else now
    active = [a for a in engine.all_alerts() if a.state in ("pending", "firing")]
    firing = [a for a in active if a.state == "firing"]
    silences = engine.router.silences.list(include_expired=False)
    out = []
    for a in sorted(active, key=lambda a: (a.state != "firing", SEVERITY_RANK.get(a.severity, 1), a.rule,
                                           sorted(a.labels.items()))):
        silenced_by = [s.id for s in silences if s.mutes(a.labels, now)]
        inhibited = a.state == "firing" and is_inhibited(a, firing, engine.cfg.inhibit_rules)
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
        })
    return out


def silences_json(engine: AlertEngine, now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    return [
        {"id": s.id, "matchers": [str(m) for m in s.matchers], "startsAt": rfc3339(s.starts_at),
         "endsAt": rfc3339(s.ends_at), "createdBy": s.created_by, "comment": s.comment,
         "status": {"state": "active" if s.active(now) else "pending"}}
        for s in engine.router.silences.list(include_expired=False)
    ]


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
    return f"{value} {rule.op} {rule.threshold:g}" + (f" and {paired}" if paired else "")


def rules_json(engine: AlertEngine) -> list[dict[str, Any]]:
    """Every rule with its state: firing, pending, inactive (with the values it judged) or nodata (and why)."""
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
                reason = (f"no series of {rule.metric}: its collector is not configured, has not run yet, "
                          "or fails (see the collectors)")
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
                        "summary": a.annotations.get("summary", "")} for a in alerts],
            "series": series,
        })
    return out


def verdict(alerts: list[dict[str, Any]], collectors_failing: int) -> str:
    """The host's verdict: CRIT with an unsuppressed critical alert firing, WARN with any other firing alert
    or a failing collector, else OK."""
    firing = [a for a in alerts if a["state"] == "firing" and a["status"]["state"] == "active"]
    if any(a["labels"].get("severity") == "critical" for a in firing):
        return "CRIT"
    if any(a["labels"].get("severity") != "info" for a in firing) or collectors_failing:
        return "WARN"
    return "OK"
