"""The landing page ``/``: the host's verdict, firing and pending alerts with runbook links (and who silences
each, or that it cannot be told), active silences (local and Alertmanager's, with the state of their read),
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
    ".OK{background:#cfc}.WARN{background:#fe9}.CRIT{background:#f99}.UNKNOWN{background:#ddd}.INFO{color:#777}"
    ".counts,.silencing{display:inline-block;min-width:11em}"
    ".critical{color:#a00;font-weight:bold}.warning{color:#850}.info{color:#055}.muted{color:#777}"
)


def _e(v: Any) -> str:
    return html.escape(str(v))


def _own(link: str, own_url: str) -> str:
    """A link to this mevwatch's own pages, made relative: the page opens however this one was reached
    (an SSH tunnel, a proxy), not only at ``external_url``."""
    base = own_url.rstrip("/")
    return link[len(base):] if base and link.startswith(base + "/") else link


def _alert_rows(alerts: Sequence[Mapping[str, Any]], own_url: str) -> str:
    from mevwatch.alerts.identity import DETAIL_ANNOTATIONS

    rows = []
    for a in alerts:
        labels, annotations = a["labels"], a["annotations"]
        sev = labels.get("severity", "warning")
        shown = ", ".join(f"{k}={v}" for k, v in labels.items() if k not in ("alertname", "severity", "host"))
        # a changed file's diff keeps its lines (as character references: the row stays one line of HTML)
        details = "".join(f'<pre class="muted">{_e(annotations[k]).replace(chr(10), "&#10;")}</pre>'
                          for k in DETAIL_ANNOTATIONS if annotations.get(k))
        link = _own(annotations.get("runbook_url", ""), own_url)
        runbook = f'<a href="{_e(link)}">runbook</a>' if link else ""
        status = _e(a["state"] + (" (inhibited)" if a["status"]["inhibitedBy"] else ""))
        counts = a.get("verdict", {})
        if counts.get("reason"):  # what it counts for in the verdict, when that is not its severity plainly
            status += f'<br><span class="{_e(counts["status"])} counts">{_e(counts["reason"])}</span>'
        silencing = a.get("silencing", {})
        if silencing.get("state") in ("silenced", "unknown"):
            # who holds it (id, author, comment, end), or that nobody can tell: never a bare "firing"
            status += (f'<br><span class="{"muted" if silencing["state"] == "silenced" else "UNKNOWN"} '
                       f'silencing">{_e(silencing["text"])}</span>')
        rows.append(
            f'<tr id="alert-{_e(a["fingerprint"])}"><td class="{_e(sev)}">{_e(sev)}</td><td>{status}</td>'
            f'<td><b>{_e(labels.get("alertname", ""))}</b></td><td>{_e(annotations.get("summary", ""))}'
            f'<br><span class="muted">{_e(shown)}</span>{details}'
            + (f'<br><code class="muted">{_e(a["silence"])}</code>' if a.get("silence") else "")
            + f'</td><td>{_e(a["startsAt"])}</td><td>{runbook}</td></tr>'
        )
    return "".join(rows)


def landing_html(
    collectors: Sequence[Mapping[str, Any]],
    view: Mapping[str, Any] | None,
    links: str,
    settings: str = "",
    own_url: str = "",
) -> str:
    """The page. ``view`` is the alert engine's (alerts, rules, silences, verdict) or None when it does not run;
    links that start with ``own_url`` (alerts.external_url) are shown relative to this page."""
    failing = [c for c in collectors if c["success"] is False]
    parts = ["<!doctype html><html><head><meta charset=utf-8><title>mevwatch</title>"
             f"<style>{_STYLE}</style></head><body><h1>mevwatch</h1>"]
    if view is None:
        verdict = "UNKNOWN"
        why = "the alert engine does not run (alerts.enabled: false): no rule judges this host"
    else:
        from mevwatch.alerts.api import verdict_text

        verdict = view["verdict"]
        why = verdict_text(view["alerts"], len(failing), len(collectors))
    parts.append(f'<p><span class="verdict {verdict}" id="verdict">{verdict}</span> {_e(why)}</p>')
    parts.append(f"<p>{links}</p>")
    if view is not None:
        alerts = view["alerts"]
        parts.append(f"<h2>Alerts ({len(alerts)})</h2>")
        if alerts:
            parts.append("<table><tr><th>severity</th><th>state</th><th>alert</th><th>summary</th><th>since</th>"
                         f"<th>runbook</th></tr>{_alert_rows(alerts, own_url)}</table>")
        else:
            parts.append("<p>No alert is pending or firing.</p>")
        silences = view["silences"]
        source = view.get("silence_source")
        parts.append(f"<h2>Silences ({len(silences)})</h2>")
        if source is not None:
            cls = "UNKNOWN" if source["state"] == "unknown" else "muted"
            parts.append(f'<p id="alertmanager-silences" class="{cls}">Alertmanager&#39;s silences: '
                         f'{_e(source["text"])}</p>')
        if silences:
            parts.append("<table><tr><th>id</th><th>source</th><th>matchers</th><th>until</th><th>by</th>"
                         "<th>comment</th></tr>")
            for s in silences:
                where = f"Alertmanager {source['url']}" if s["source"] == "alertmanager" and source else s["source"]
                parts.append(f"<tr><td>{_e(s['id'])}</td><td>{_e(where)}</td><td>{_e(', '.join(s['matchers']))}</td>"
                             f"<td>{_e(s['endsAt'])}</td><td>{_e(s['createdBy'])}</td><td>{_e(s['comment'])}</td></tr>")
            parts.append("</table>")
        elif source is not None and source["state"] == "unknown":
            parts.append("<p>None known: Alertmanager&#39;s silences cannot be read now (above).</p>")
        else:
            parts.append("<p>No active silence.</p>")
    if view is not None:
        nodata = [r for r in view["rules"] if r["state"] == "nodata"]
        if nodata:
            parts.append(f"<h2>Rules without data ({len(nodata)})</h2><p class=muted>These rules judge nothing "
                         "right now; a check that should run here and cannot is a MonitoringGap alert above.</p>"
                         "<table><tr><th>rule</th><th>why</th></tr>")
            for r in nodata:
                parts.append(f'<tr><td><a href="{_e(_own(r["runbook_url"], own_url))}">{_e(r["name"])}</a></td>'
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
