"""The chat sink: a message to Telegram, Discord or Matrix (presets), or any JSON chat webhook (a template)."""

from __future__ import annotations

import string
import urllib.parse
from typing import Any

from mevwatch.alerts.receivers import CHAT_PRESETS, ChatConfig
from mevwatch.alerts.sinks._http import JsonSink
from mevwatch.alerts.sinks._message import DISCORD, PLAIN, TELEGRAM_HTML, Markup, plain_text

__all__ = ["ChatSink", "chat_request"]

CUSTOM_MAX_TEXT = 4000
#: a preset's "markup": how its service shows $text (Telegram's parse_mode HTML, Discord's markdown)
MARKUPS: dict[str, Markup] = {"html": TELEGRAM_HTML, "markdown": DISCORD}


def _fill(template: Any, values: dict[str, str]) -> Any:
    """The template with ``$name`` replaced in every string (JSON escaping happens when it is serialised)."""
    if isinstance(template, str):
        return string.Template(template).safe_substitute(values)
    if isinstance(template, dict):
        return {k: _fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, values) for v in template]
    return template


def chat_request(payload: dict[str, Any], config: ChatConfig, notification_id: str) -> tuple[str, str, Any]:
    """(method, url, JSON body) of one notification; its text has each firing alert's link back to mevwatch
    and its silence command in the service's markup."""
    preset = CHAT_PRESETS.get(config.preset, {})
    limit = config.max_text or preset.get("max_text", CUSTOM_MAX_TEXT)
    markup = MARKUPS.get(preset.get("markup", ""), PLAIN)
    values = {"text": plain_text(payload, limit, markup), "status": str(payload.get("status", "")),
              "notification_id": notification_id, "chat_id": config.chat_id or ""}
    body = _fill(preset["body"] if preset else config.body, values)
    url = config.target_url
    if preset.get("append_notification_id"):
        # Matrix's transaction id: a retried notification is the same event, not a second message
        url = url.rstrip("/") + "/" + urllib.parse.quote(notification_id, safe="")
    return str(preset.get("method") or config.method or "POST"), url, body


class ChatSink(JsonSink):
    kind = "chat"

    def __init__(self, receiver: str, index: int, config: ChatConfig) -> None:
        super().__init__(receiver, index, config, config.shown_url)
        self.config = config

    async def send(self, payload: dict[str, Any], notification_id: str) -> None:
        method, url, body = chat_request(payload, self.config, notification_id)
        headers = {"Authorization": f"Bearer {self.config.token}"} if self.config.token else {}
        await self._client.send(method, url, body, headers)
