"""The PagerDuty sink: Events API v2, one event per host and alert group, triggered and resolved by dedup key.

A group whose alerts come from several hosts (``group_by`` without ``host``) pages once per host, so
resolving one host's incident never closes another's.
"""

from __future__ import annotations

import hashlib
from typing import Any

from mevwatch.alerts.receivers import PagerDutyConfig
from mevwatch.alerts.sinks._http import JsonSink
from mevwatch.alerts.sinks._message import alert_line, by_host, notification_title, runbook_links

__all__ = ["PagerDutySink", "dedup_key", "pagerduty_events"]

_SEVERITY_ORDER = ("info", "warning", "error", "critical")


def dedup_key(group_key: str, host: str) -> str:
    """The incident's key: one per alert group and host, stable across restarts (at most 255 characters)."""
    return hashlib.sha256(f"{group_key}\x00host={host}".encode()).hexdigest()


def pagerduty_events(payload: dict[str, Any], config: PagerDutyConfig, notification_id: str) -> list[dict[str, Any]]:
    """The Events API v2 events of one notification: a trigger for each host with firing alerts, a resolve
    for each host whose alerts all resolved."""
    events: list[dict[str, Any]] = []
    for host, alerts in by_host(payload.get("alerts", [])).items():
        key = dedup_key(str(payload.get("groupKey", "")), host)
        firing = [a for a in alerts if a["status"] == "firing"]
        if not firing:
            if config.send_resolved:
                events.append({"routing_key": config.key, "event_action": "resolve", "dedup_key": key})
            continue
        severity = max((config.severity_map.get(a["labels"].get("severity", ""), "error") for a in firing),
                       key=_SEVERITY_ORDER.index)
        event: dict[str, Any] = {
            "routing_key": config.key,
            "event_action": "trigger",
            "dedup_key": key,
            "payload": {
                "summary": notification_title(payload, alerts)[:1024],
                "source": host or "mevwatch",
                "severity": severity,
                "timestamp": min(a["startsAt"] for a in firing),
                "group": str(payload.get("groupLabels", {}).get("alertname", ""))[:255] or None,
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
        if event["payload"]["group"] is None:
            del event["payload"]["group"]
        if config.client_url:
            event["client_url"] = config.client_url
        events.append(event)
    return events


class PagerDutySink(JsonSink):
    kind = "pagerduty"

    def __init__(self, receiver: str, index: int, config: PagerDutyConfig) -> None:
        super().__init__(receiver, index, config, config.url)
        self.config = config

    async def send(self, payload: dict[str, Any], notification_id: str) -> None:
        # a retry sends every event again: PagerDuty folds repeats of a dedup key into one incident
        for event in pagerduty_events(payload, self.config, notification_id):
            await self._client.send("POST", self.config.url, event)
