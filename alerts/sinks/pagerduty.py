"""The PagerDuty sink: Events API v2, one incident per alert group, triggered and resolved by its dedup key.

The dedup key is the group's incident id (alerts.identity), the key Alertmanager's own PagerDuty
integration sends for the same group: the host is always a group label, so each host has its own
incident, and an incident paged by mevwatch and by a central Alertmanager is one incident.
"""

from __future__ import annotations

from typing import Any

from mevwatch.alerts.identity import incident_id
from mevwatch.alerts.receivers import PagerDutyConfig
from mevwatch.alerts.sinks._http import JsonSink
from mevwatch.alerts.sinks._message import alert_line, group_link, links_back, notification_title, runbook_links

__all__ = ["PagerDutySink", "pagerduty_event"]

_SEVERITY_ORDER = ("info", "warning", "error", "critical")
MAX_ALERT_LINKS = 20  # links back to alerts in one event; custom_details has every one
MAX_LINK_TEXT = 256


def pagerduty_event(payload: dict[str, Any], config: PagerDutyConfig, notification_id: str) -> dict[str, Any]:
    """The Events API v2 event of one notification: trigger while any alert of the group fires, else resolve.

    A trigger links each firing alert's row on mevwatch's page (``links``, before the runbooks; the
    incident's ``client_url`` is mevwatch's page unless configured) and carries, in ``custom_details``, those
    links and the command that silences each alert."""
    key = incident_id(str(payload.get("groupKey", "")))
    alerts = payload.get("alerts", [])
    firing = [a for a in alerts if a["status"] == "firing"]
    if not firing:
        return {"routing_key": config.key, "event_action": "resolve", "dedup_key": key}
    severity = max((config.severity_map.get(a["labels"].get("severity", ""), "error") for a in firing),
                   key=_SEVERITY_ORDER.index)
    group = str(payload.get("groupLabels", {}).get("alertname", ""))
    backs = links_back(firing)
    event: dict[str, Any] = {
        "routing_key": config.key,
        "event_action": "trigger",
        "dedup_key": key,
        "payload": {
            "summary": notification_title(payload)[:1024],
            "source": firing[0]["labels"].get("host") or "mevwatch",
            "severity": severity,
            "timestamp": min(a["startsAt"] for a in firing),
            "class": firing[0]["labels"].get("alertname", "alert"),
            "custom_details": {
                "firing": [alert_line(a) for a in firing],
                "labels": [a["labels"] for a in firing],
                # per firing alert, in the order above: its row on mevwatch's page (or what that link needs)
                # and the command that silences exactly it
                "open_in_mevwatch": [b.url if b.opens else b.missing for b in backs],
                "silence": [b.silence for b in backs],
                "notification_id": notification_id,
            },
        },
        "links": [{"href": b.url, "text": f"mevwatch: {alert_line(a)}"[:MAX_LINK_TEXT]}
                  for a, b in zip(firing, backs, strict=True) if b.opens][:MAX_ALERT_LINKS]
        + [{"href": url, "text": f"Runbook: {name}"} for name, url in runbook_links(firing)],
        "client": config.client,
    }
    if group:
        event["payload"]["group"] = group[:255]
    client_url = config.client_url or group_link(payload)
    if client_url:
        event["client_url"] = client_url
    return event


class PagerDutySink(JsonSink):
    kind = "pagerduty"

    def __init__(self, receiver: str, index: int, config: PagerDutyConfig) -> None:
        super().__init__(receiver, index, config, config.url)
        self.config = config

    async def send(self, payload: dict[str, Any], notification_id: str) -> None:
        if payload.get("status") != "firing" and not self.config.send_resolved:
            return
        await self._client.send("POST", self.config.url, pagerduty_event(payload, self.config, notification_id))
