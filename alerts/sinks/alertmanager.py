"""The Alertmanager sink: POST /api/v2/alerts to every configured Alertmanager, like Prometheus does.

Firing alerts get ``endsAt = now + 4 x max(evaluation interval, resend delay)``, so an Alertmanager
resolves them by itself if mevwatch dies; the router re-sends them every resend delay, and resolved
alerts for 15 minutes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog

from mevwatch.alerts.config import AlertmanagerSinkConfig
from mevwatch.alerts.sinks.base import DeliveryError
from mevwatch.alerts.sinks.webhook import is_retryable_status
from mevwatch.redaction import redact, redact_sink_url

__all__ = ["AlertmanagerSink", "alertmanager_alerts"]

log = structlog.get_logger("mevwatch.alerts")


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def alertmanager_alerts(payload: dict[str, Any], now: float, ends_in: float) -> list[dict[str, Any]]:
    """The /api/v2/alerts body for a notification's alerts."""
    out = []
    for a in payload.get("alerts", []):
        ends = a["endsAt"] if a["status"] == "resolved" else _rfc3339(now + ends_in)
        out.append({
            "labels": a["labels"],
            # as Prometheus sends them: the silence command is for people reading a page, Alertmanager has its own
            "annotations": {k: v for k, v in a["annotations"].items() if v and k != "silence"},
            "startsAt": a["startsAt"],
            "endsAt": ends,
            "generatorURL": a.get("generatorURL", ""),
        })
    return out


class AlertmanagerSink:
    kind = "alertmanager"

    def __init__(self, receiver: str, index: int, config: AlertmanagerSinkConfig, eval_interval: float) -> None:
        self.receiver = receiver
        self.name = f"{receiver}/alertmanager/{index}"
        self.config = config
        self.ends_in = 4 * max(eval_interval, config.resend_delay)
        self._session: aiohttp.ClientSession | None = None
        self.observer: Callable[[str, bool], None] | None = None  # told whether each Alertmanager answered

    def wants(self, payload: dict[str, Any]) -> bool:
        return True

    async def _post(self, url: str, body: bytes) -> None:
        assert self._session is not None
        target = f"{url}/api/v2/alerts"
        try:
            async with self._session.post(
                target, data=body, headers={"Content-Type": "application/json", "User-Agent": "mevwatch"},
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            ) as resp:
                if resp.status < 300:
                    return
                text = (await resp.text(errors="replace"))[:500].strip()
                raise DeliveryError(f"{redact_sink_url(target)} answered HTTP {resp.status}: {redact(text)}",
                                    retry=is_retryable_status(resp.status))
        except TimeoutError:
            raise DeliveryError(f"{redact_sink_url(target)}: no answer within {self.config.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"{redact_sink_url(target)}: {redact(str(exc)) or type(exc).__name__}") from None

    async def send(self, payload: dict[str, Any], notification_id: str) -> None:
        """Acknowledged when at least one Alertmanager took it; they dedupe among themselves."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = json.dumps(alertmanager_alerts(payload, time.time(), self.ends_in)).encode()
        urls = self.config.target_urls
        results = await asyncio.gather(*(self._post(u, body) for u in urls), return_exceptions=True)
        if self.observer is not None:
            for url, res in zip(urls, results, strict=True):
                self.observer(url, not isinstance(res, BaseException))
        errors = [r for r in results if isinstance(r, BaseException)]
        for err in errors:
            if len(errors) < len(results):
                log.warning("alertmanager_send_failed", sink=self.name, error=str(err))
        if len(errors) == len(results):
            first = errors[0]
            if isinstance(first, DeliveryError):
                raise DeliveryError("; ".join(str(e) for e in errors),
                                    retry=any(getattr(e, "retry", True) for e in errors))
            raise first

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
