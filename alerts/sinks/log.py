"""The log sink: each notification as one structured log event."""

from __future__ import annotations

from typing import Any

import structlog

from mevwatch.alerts.config import LogSinkConfig

__all__ = ["LogSink"]

log = structlog.get_logger("mevwatch.alerts")


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
            )

    async def close(self) -> None:
        return None
