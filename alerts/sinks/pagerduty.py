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
from mevwatch.alerts.sinks._message import alert_line, notification_title, runbook_links

__all__ = ["PagerDutySink", "pagerduty_event"]

_SEVERITY_ORDER = ("info", "warning", "error", "critical")


def pagerduty_event(payload: dict[str, Any], config: PagerDutyConfig, notification_id: str) -> dict[str, Any]:
    """The Events API v2 event of one notification: trigger while any alert of the group fires, else resolve."""
    key = incident_id(str(payload.get("groupKey", "")))
    alerts = payload.get("alerts", [])
    firing = [a for a in alerts if a["status"] == "firing"]
    if not firing:
        return {"routing_key": config.key, "event_action": "resolve", "dedup_key": key}
    severity = max((config.severity_map.get(a["labels"].get("severity", ""), "error") for a in firing),
                   key=_SEVERITY_ORDER.index)
    group = str(payload.get("groupLabels", {}).get("alertname", ""))
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
                "notification_id": notification_id,
            },
        },
        "links": [{"href": url, "text": f"Runbook: {name}"} for name, url in runbook_links(firing)],
        "client": config.client,
    }
    if group:
        event["payload"]["group"] = group[:255]
    if config.client_url:
        event["client_url"] = config.client_url
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
