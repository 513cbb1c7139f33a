"""What a paging or chat message says about one notification: title, one line per alert, runbook links."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["alert_line", "notification_title", "plain_text", "runbook_links"]


def notification_title(payload: dict[str, Any]) -> str:
    """``[FIRING:2] HeadLag on mev-1``: status, count, alert name and host; a notification another receiver
    gave up on (its fallback) says which: ``... (undelivered to pager/webhook/0)``."""
    alerts = payload.get("alerts", [])
    firing = [a for a in alerts if a["status"] == "firing"]
    status = "FIRING" if firing else "RESOLVED"
    first = (firing or alerts or [{"labels": {}}])[0]["labels"]
    name = payload.get("groupLabels", {}).get("alertname") or first.get("alertname", "alert")
    host = first.get("host", "")
    count = len(firing) if firing else len(alerts)
    undelivered = payload.get("commonAnnotations", {}).get("undelivered_to")
    return (f"[{status}:{count}] {name}" + (f" on {host}" if host else "")
            + (f" (undelivered to {undelivered})" if undelivered else ""))


def alert_line(a: dict[str, Any]) -> str:
    ann = a.get("annotations", {})
    summary = ann.get("summary") or a["labels"].get("alertname", "alert")
    return f"[{a['status'].upper()}] {summary}"


def runbook_links(alerts: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """(alert name, runbook URL) once per URL, in alert order."""
    seen: dict[str, str] = {}
    for a in alerts:
        url = a.get("annotations", {}).get("runbook_url", "")
        if url.startswith(("http://", "https://")) and url not in seen:
            seen[url] = a["labels"].get("alertname", "alert")
    return [(name, url) for url, name in seen.items()]


def plain_text(payload: dict[str, Any], limit: int) -> str:
    """Title, one line per alert with its runbook, cut to ``limit`` characters with a note of what was cut."""
    alerts = payload.get("alerts", [])
    lines = [notification_title(payload)]
    for a in alerts:
        url = a.get("annotations", {}).get("runbook_url", "")
        lines.append(alert_line(a) + (f" (runbook: {url})" if url else ""))
    text = "\n".join(lines)
    if len(text) <= limit:
        return text
    note = "\n… (cut; see the alert list in mevwatch)"
    return text[: limit - len(note)] + note
