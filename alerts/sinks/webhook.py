"""The webhook sink: Alertmanager's webhook JSON (version 4), optionally signed with HMAC-SHA256."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import aiohttp

from mevwatch.alerts.config import WebhookConfig
from mevwatch.alerts.sinks.base import DeliveryError
from mevwatch.fields import read_secret_file
from mevwatch.redaction import redact, redact_sink_url

__all__ = ["NOTIFICATION_ID_HEADER", "WebhookSink", "is_retryable_status", "sign"]

NOTIFICATION_ID_HEADER = "X-Mevwatch-Notification-Id"


def sign(secret: str, body: bytes) -> str:
    """The signature header value: ``sha256=<hex HMAC-SHA256 of the body>`` (GitHub's scheme)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def is_retryable_status(status: int) -> bool:
    """5xx, 408 and 429 are worth retrying; any other 4xx will fail again the same way."""
    return status >= 500 or status in (408, 429)


class WebhookSink:
    kind = "webhook"

    def __init__(self, receiver: str, index: int, config: WebhookConfig) -> None:
        self.receiver = receiver
        self.name = f"{receiver}/webhook/{index}"
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    def wants(self, payload: dict[str, Any]) -> bool:
        return self.config.send_resolved or payload.get("status") == "firing"

    def _secret(self) -> str | None:
        if self.config.hmac_secret_file is not None:
            try:
                return read_secret_file(self.config.hmac_secret_file)
            except ValueError as exc:
                raise DeliveryError(str(exc), retry=True) from None
        return self.config.hmac_secret

    async def send(self, payload: dict[str, Any], notification_id: str) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", NOTIFICATION_ID_HEADER: notification_id,
                   "User-Agent": "mevwatch", **self.config.headers}
        secret = self._secret()
        if secret:
            headers[self.config.signature_header] = sign(secret, body)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = self.config.target_url
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=self.config.timeout)
            ) as resp:
                text = (await resp.text(errors="replace"))[:500]
                if resp.status < 300:
                    return
                raise DeliveryError(
                    f"{redact_sink_url(url)} answered HTTP {resp.status}: {redact(text.strip())}",
                    retry=is_retryable_status(resp.status),
                )
        except TimeoutError:
            raise DeliveryError(f"{redact_sink_url(url)}: no answer within {self.config.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"{redact_sink_url(url)}: {redact(str(exc)) or type(exc).__name__}") from None
        except asyncio.CancelledError:
            raise

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
