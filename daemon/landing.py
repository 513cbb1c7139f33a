"""The landing page ``/``: the host's verdict, firing and pending alerts with runbook links, active silences,
rules that have no data, then the collectors. Plain HTML that works without JavaScript."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["landing_html"]

_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;max-width:80em}table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left;vertical-align:top}"
    ".verdict{font-size:1.6em;padding:.4em .8em;display:inline-block;border-radius:4px}"
    ".OK{background:#cfc}.WARN{background:#fe9}.CRIT{background:#f99}.UNKNOWN{background:#ddd}"
    ".critical{color:#a00;font-weight:bold}.warning{color:#850}.info{color:#055}.muted{color:#777}"
)


def _e(v: Any) -> str:
    return html.escape(str(v))


def _alert_rows(alerts: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for a in alerts:
        labels = a["labels"]
        sev = labels.get("severity", "warning")
        shown = ", ".join(f"{k}={v}" for k, v in labels.items() if k not in ("alertname", "severity", "host"))
        link = a["annotations"].get("runbook_url", "")
        runbook = f'<a href="{_e(link)}">runbook</a>' if link else ""
        status = a["state"] + (" (silenced)" if a["status"]["silencedBy"] else "") + (
            " (inhibited)" if a["status"]["inhibitedBy"] else "")
        rows.append(
            f'<tr id="alert-{_e(a["fingerprint"])}"><td class="{_e(sev)}">{_e(sev)}</td><td>{_e(status)}</td>'
            f'<td><b>{_e(labels.get("alertname", ""))}</b></td><td>{_e(a["annotations"].get("summary", ""))}'
            f'<br><span class="muted">{_e(shown)}</span>'
            + (f'<br><code class="muted">{_e(a["silence"])}</code>' if a.get("silence") else "")
            + f'</td><td>{_e(a["startsAt"])}</td><td>{runbook}</td></tr>'
        )
    return "".join(rows)


def landing_html(
    collectors: Sequence[Mapping[str, Any]],
    view: Mapping[str, Any] | None,
    links: str,
    settings: str = "",
) -> str:
    """The page. ``view`` is the alert engine's (alerts, rules, silences, verdict) or None when it does not run."""
    failing = [c for c in collectors if c["success"] is False]
    parts = ["<!doctype html><html><head><meta charset=utf-8><title>mevwatch</title>"
             f"<style>{_STYLE}</style></head><body><h1>mevwatch</h1>"]
    if view is None:
        verdict = "UNKNOWN"
        why = "the alert engine does not run (alerts.enabled: false): no rule judges this host"
    else:
        verdict = view["verdict"]
        firing = sum(1 for a in view["alerts"] if a["state"] == "firing")
        pending = len(view["alerts"]) - firing
        why = f"{firing} firing, {pending} pending alert(s); {len(failing)} of {len(collectors)} collectors failing"
    parts.append(f'<p><span class="verdict {verdict}" id="verdict">{verdict}</span> {_e(why)}</p>')
    parts.append(f"<p>{links}</p>")
    if view is not None:
        alerts = view["alerts"]
        parts.append(f"<h2>Alerts ({len(alerts)})</h2>")
        if alerts:
            parts.append("<table><tr><th>severity</th><th>state</th><th>alert</th><th>summary</th><th>since</th>"
                         f"<th>runbook</th></tr>{_alert_rows(alerts)}</table>")
        else:
            parts.append("<p>No alert is pending or firing.</p>")
        silences = view["silences"]
        parts.append(f"<h2>Silences ({len(silences)})</h2>")
        if silences:
            parts.append("<table><tr><th>id</th><th>matchers</th><th>until</th><th>by</th><th>comment</th></tr>")
            for s in silences:
                parts.append(f"<tr><td>{_e(s['id'])}</td><td>{_e(', '.join(s['matchers']))}</td>"
                             f"<td>{_e(s['endsAt'])}</td><td>{_e(s['createdBy'])}</td><td>{_e(s['comment'])}</td></tr>")
            parts.append("</table>")
        else:
            parts.append("<p>No active silence.</p>")
    if view is not None:
        nodata = [r for r in view["rules"] if r["state"] == "nodata"]
        if nodata:
            parts.append(f"<h2>Rules without data ({len(nodata)})</h2><p class=muted>These rules judge nothing "
                         "right now; a check that should run here and cannot is a MonitoringGap alert above.</p>"
                         "<table><tr><th>rule</th><th>why</th></tr>")
            for r in nodata:
                parts.append(f'<tr><td><a href="{_e(r["runbook_url"])}">{_e(r["name"])}</a></td>'
                             f'<td>{_e(r["reason"])}</td></tr>')
            parts.append("</table>")
    parts.append(f"<h2>Collectors ({len(collectors)})</h2>"
                 "<table><tr><th>collector</th><th>instance</th><th>status</th><th>last error</th></tr>")
    for c in collectors:
        state = "ok" if c["success"] else ("pending" if c["success"] is None else "FAILING")
        parts.append(f"<tr><td>{_e(c['collector'])}</td><td>{_e(c['instance'])}</td><td>{state}</td>"
                     f"<td>{_e(c['last_error'] or '')}</td></tr>")
    parts.append(f"</table>{settings}</body></html>")
    return "".join(parts)
