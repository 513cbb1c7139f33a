"""The log sink: each notification as one structured log event."""

from __future__ import annotations

from typing import Any

import structlog

from mevwatch.alerts.config import LogSinkConfig
from mevwatch.alerts.sinks._message import link_back

__all__ = ["LogSink"]

log = structlog.get_logger("mevwatch.alerts")


def _way_back(a: dict[str, Any]) -> dict[str, str]:
    """A firing alert's link back to mevwatch's page (or what it needs) and the command that silences it."""
    if a["status"] != "firing":
        return {}
    back = link_back(a)
    return {"generator_url": back.url if back.opens else back.missing, "silence": back.silence}


class LogSink:
    kind = "log"

    def __init__(self, receiver: str, index: int, config: LogSinkConfig) -> None:
        self.receiver = receiver
        self.name = f"{receiver}/log/{index}"
        self.config = config

    def wants(self, payload: dict[str, Any]) -> bool:
        return self.config.send_resolved or payload.get("status") == "firing"

    async def send(self, payload: dict[str, Any], notification_id: str) -> None:
        emit = getattr(log, self.config.level)
        for a in payload.get("alerts", []):
            emit(
                "alert_notification",
                notification_id=notification_id,
                receiver=self.receiver,
                status=a["status"],
                alertname=a["labels"].get("alertname", ""),
                severity=a["labels"].get("severity", ""),
                labels=a["labels"],
                summary=a["annotations"].get("summary", ""),
                runbook_url=a["annotations"].get("runbook_url", ""),
                starts_at=a["startsAt"],
                **_way_back(a),
            )

    async def close(self) -> None:
        return None
