"""Alertmanager as the one place to silence: its silences read (API v2), and written.

``AlertmanagerWatch`` polls every configured Alertmanager: the silence source's peers for their
silences (GET /api/v2/silences, the first peer that answers wins, as they gossip the same set) and
the alertmanager sinks' peers for reachability (GET /-/healthy). In standalone mode the direct sinks
honour those silences, fail-safe: while no peer of the silence source answers, none of them mutes
anything, so an unreachable Alertmanager means a page rather than silence. In both modes the read,
with its time or since when no peer answers, is what mevwatch's screens show (``last_read``,
mevwatch.alerts.silencing). ``reachable`` feeds ``mevwatch_alertmanager_up``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog

from mevwatch.aio import cancel_and_wait
from mevwatch.alerts.config import AlertmanagerSilencesConfig
from mevwatch.alerts.matchers import Matcher
from mevwatch.alerts.router import Silence, rfc3339
from mevwatch.alerts.silencing import SilenceRead
from mevwatch.redaction import redact, redact_sink_url

__all__ = ["AlertmanagerError", "AlertmanagerWatch", "parse_silences", "post_silence", "silence_body"]

log = structlog.get_logger("mevwatch.alerts")

PROBE_INTERVAL = 15.0  # reachability of sink-only Alertmanagers, when no silence source sets the pace


class AlertmanagerError(Exception):
    """Alertmanager could not be reached or refused the request."""


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def _op(m: Mapping[str, Any]) -> str:
    equal = m.get("isEqual", True)
    if m.get("isRegex"):
        return "=~" if equal else "!~"
    return "=" if equal else "!="


def parse_silences(doc: Any) -> list[Silence]:
    """The active silences of a GET /api/v2/silences answer (expired and pending ones are left out)."""
    if not isinstance(doc, list):
        raise AlertmanagerError(f"/api/v2/silences answered a {type(doc).__name__}, not a list")
    out = []
    for s in doc:
        try:
            if s.get("status", {}).get("state") != "active":
                continue
            matchers = tuple(Matcher(str(m["name"]), _op(m), str(m["value"])) for m in s["matchers"])
            for m in matchers:
                if m.op in ("=~", "!~"):
                    # one Python cannot read makes the whole read unreadable (its silences unknown), where
                    # matching would fail on every alert
                    re.compile(m.value)
            out.append(Silence(str(s["id"]), matchers, _time(s["startsAt"]), _time(s["endsAt"]),
                               str(s.get("createdBy", "")), str(s.get("comment", ""))))
        except (KeyError, TypeError, ValueError, AttributeError, re.error) as exc:
            raise AlertmanagerError(f"unreadable silence in /api/v2/silences: {exc!r}") from None
    return out


def silence_body(matchers: Sequence[Matcher], starts_at: float, ends_at: float, created_by: str,
                 comment: str) -> dict[str, Any]:
    """A POST /api/v2/silences body."""
    return {
        "matchers": [{"name": m.name, "value": m.value, "isRegex": m.op in ("=~", "!~"),
                      "isEqual": m.op in ("=", "=~")} for m in matchers],
        "startsAt": rfc3339(starts_at),
        "endsAt": rfc3339(ends_at),
        "createdBy": created_by,
        "comment": comment or "set with mevwatch silence add",
    }


async def _request(session: aiohttp.ClientSession, method: str, url: str, timeout: float,
                   body: Any = None) -> Any:
    try:
        async with session.request(method, url, json=body, timeout=aiohttp.ClientTimeout(total=timeout),
                                   headers={"User-Agent": "mevwatch"}) as resp:
            text = await resp.text(errors="replace")
            if resp.status >= 300:
                raise AlertmanagerError(
                    f"{redact_sink_url(url)} answered HTTP {resp.status}: {redact(text[:300].strip())}")
            if resp.content_type == "application/json":
                return await resp.json()
            return text
    except TimeoutError:
        raise AlertmanagerError(f"{redact_sink_url(url)}: no answer within {timeout:g}s") from None
    except aiohttp.ClientError as exc:
        raise AlertmanagerError(f"{redact_sink_url(url)}: {redact(str(exc)) or type(exc).__name__}") from None


async def post_silence(urls: Sequence[str], body: dict[str, Any], timeout: float = 10.0) -> tuple[str, str]:
    """Create a silence on the first Alertmanager that takes it (the cluster gossips it); (url, silence id)."""
    errors = []
    async with aiohttp.ClientSession() as session:
        for url in urls:
            try:
                doc = await _request(session, "POST", f"{url}/api/v2/silences", timeout, body)
            except AlertmanagerError as exc:
                errors.append(str(exc))
                continue
            return url, str(doc.get("silenceID", "")) if isinstance(doc, dict) else ""
    raise AlertmanagerError("; ".join(errors) or "no Alertmanager URL")


class AlertmanagerWatch:
    """Polls Alertmanagers for silences and reachability; see the module doc."""

    def __init__(self, silences: AlertmanagerSilencesConfig | None, sink_urls: Iterable[str],
                 clock: Callable[[], float] = time.time, mutes: bool = True) -> None:
        """``silences``: the source to read (None: only probe ``sink_urls``); ``mutes``: whether its
        silences hold the direct sinks' pages (standalone) or are only shown (fleet)."""
        self.config = silences
        self.silence_urls = list(silences.urls) if silences else []
        self.probe_urls = [u for u in dict.fromkeys(sink_urls) if u not in self.silence_urls]
        self.interval = silences.refresh_interval if silences else PROBE_INTERVAL
        self.timeout = silences.timeout if silences else 5.0
        self.clock = clock
        self.reachable: dict[str, bool] = {}
        self.silences: list[Silence] = []  # what mutes: empty while the source cannot be read
        self.source_ok: bool | None = None  # None: not read yet
        # what the screens show; a poll is due every interval and takes at most the timeout, so a read older
        # than two of those is not current
        self.last_read: SilenceRead | None = None if silences is None else SilenceRead(
            redact_sink_url(self.silence_urls[0]), (), None, None, None, "", 2 * (self.interval + self.timeout),
            mutes)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._changed: Callable[[], None] | None = None

    @property
    def urls(self) -> list[str]:
        return [*self.silence_urls, *self.probe_urls]

    def mutes(self, labels: Mapping[str, str], now: float) -> bool:
        return any(s.mutes(labels, now) for s in self.silences)

    def mark(self, url: str, ok: bool) -> None:
        """A sink's delivery result also tells whether ``url`` is reachable."""
        if url in self.reachable or url in self.urls:
            self.reachable[url] = ok

    async def start(self, changed: Callable[[], None] | None = None) -> None:
        self._changed = changed
        if self.urls:
            self._task = asyncio.create_task(self._run(), name="alertmanager-watch")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # a bug here must not stop the polling: the next round tries again
                log.exception("alertmanager_watch_failed")
            await asyncio.sleep(self.interval)

    async def poll(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        session = self._session
        probes = [_request(session, "GET", f"{u}/-/healthy", self.timeout) for u in self.probe_urls]
        reads = [_request(session, "GET", f"{u}/api/v2/silences", self.timeout) for u in self.silence_urls]
        results = await asyncio.gather(*reads, *probes, return_exceptions=True)
        for url, res in zip(self.urls, results, strict=True):
            was = self.reachable.get(url)
            self.reachable[url] = not isinstance(res, BaseException)
            if isinstance(res, BaseException) and was is not False:
                log.warning("alertmanager_unreachable", url=redact_sink_url(url), error=str(res))
            elif not isinstance(res, BaseException) and was is False:
                log.info("alertmanager_reachable", url=redact_sink_url(url))
        if self.silence_urls:
            self._take_silences(results[:len(self.silence_urls)], self.clock())
        if self._changed is not None:
            self._changed()

    def _take_silences(self, results: Sequence[Any], now: float) -> None:
        errors = []
        for url, res in zip(self.silence_urls, results, strict=True):
            if isinstance(res, BaseException):
                errors.append(str(res))
                continue
            try:
                self.silences = parse_silences(res)
            except AlertmanagerError as exc:
                log.warning("alertmanager_silences_unreadable", error=str(exc))
                errors.append(str(exc))
                continue
            if self.source_ok is not True:
                log.info("alertmanager_silences_read", silences=len(self.silences))
            self.source_ok = True
            if self.last_read is not None:
                self.last_read = replace(self.last_read, url=redact_sink_url(url), silences=tuple(self.silences),
                                         read_at=now, checked_at=now, unreachable_since=None, error="")
            return
        if self.source_ok is not False:
            log.error("alertmanager_silences_unavailable", effect=(
                "its silences mute nothing until it answers again: alerts page" if self.mutes_pages else
                "the screens show every alert's silence state as unknown until it answers again"))
        self.source_ok = False
        self.silences = []
        if self.last_read is not None:
            self.last_read = self.last_read.failed(now, "; ".join(errors))

    @property
    def mutes_pages(self) -> bool:
        return self.last_read is not None and self.last_read.mutes
