"""One JSON request to a paging or chat service, with the retry decision and the service's Retry-After."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any, Protocol

import aiohttp

from mevwatch.alerts.sinks.base import DeliveryError
from mevwatch.redaction import redact

__all__ = ["JsonClient", "JsonSink", "retry_after_seconds"]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number >= 0 else None


def retry_after_seconds(header: str | None, body: Any, now: float | None = None) -> float | None:
    """The wait a 429/503 asks for: the Retry-After header (seconds or an HTTP date), else the hint the
    service puts in its JSON body (Telegram ``parameters.retry_after``, Discord ``retry_after`` in seconds,
    Matrix ``retry_after_ms``)."""
    if header:
        seconds = _number(header.strip())
        if seconds is not None:
            return seconds
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(0.0, when.timestamp() - (time.time() if now is None else now))
    if isinstance(body, dict):
        params = body.get("parameters")
        if isinstance(params, dict) and _number(params.get("retry_after")) is not None:
            return _number(params.get("retry_after"))
        if _number(body.get("retry_after")) is not None:
            return _number(body.get("retry_after"))
        ms = _number(body.get("retry_after_ms"))
        if ms is not None:
            return ms / 1000.0
    return None


class JsonClient:
    """A session that sends JSON and turns every failure into a DeliveryError: 5xx, 408 and 429 are
    retried (after the service's Retry-After when it gives one), any other 4xx is final."""

    def __init__(self, shown_url: str, timeout: float) -> None:
        self.shown_url = shown_url  # what errors name: never a secret path or key
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def send(self, method: str, url: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        """The answer's JSON (None when it has no JSON body) on a 2xx; DeliveryError otherwise."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        all_headers = {"Content-Type": "application/json", "User-Agent": "mevwatch", **(headers or {})}
        try:
            async with self._session.request(method, url, data=data, headers=all_headers,
                                             timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                raw = await resp.read()
                try:
                    answer = json.loads(raw) if raw else None
                except ValueError:
                    answer = None
                if resp.status < 300:
                    return answer
                text = raw[:300].decode("utf-8", "replace").strip()
                retry = resp.status >= 500 or resp.status in (408, 429)
                raise DeliveryError(
                    f"{self.shown_url} answered HTTP {resp.status}: {redact(text)}", retry=retry,
                    retry_after=retry_after_seconds(resp.headers.get("Retry-After"), answer) if retry else None,
                )
        except TimeoutError:
            raise DeliveryError(f"{self.shown_url}: no answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"{self.shown_url}: {redact(str(exc)) or type(exc).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _SinkSettings(Protocol):
    @property
    def send_resolved(self) -> bool: ...

    @property
    def timeout(self) -> float: ...


class JsonSink:
    """What the PagerDuty, Slack and chat sinks share: name, send_resolved and a JsonClient."""

    kind: str  # set by each subclass

    def __init__(self, receiver: str, index: int, settings: _SinkSettings, shown_url: str) -> None:
        self.receiver = receiver
        self.name = f"{receiver}/{self.kind}/{index}"
        self._send_resolved = settings.send_resolved
        self._client = JsonClient(shown_url, settings.timeout)

    def wants(self, payload: dict[str, Any]) -> bool:
        return self._send_resolved or payload.get("status") == "firing"

    async def close(self) -> None:
        await self._client.close()
