"""The Slack sink: an incoming webhook message in Block Kit, one section per alert with its runbook button."""

from __future__ import annotations

from typing import Any

from mevwatch.alerts.receivers import SlackConfig
from mevwatch.alerts.sinks._http import JsonSink
from mevwatch.alerts.sinks._message import alert_line, notification_title

__all__ = ["SlackSink", "slack_message"]

MAX_ALERT_SECTIONS = 20  # Slack takes 50 blocks; the rest is summed up in one line


def _mrkdwn(text: str) -> str:
    """Slack's escaping for message text: &, < and > only."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(payload: dict[str, Any], config: SlackConfig, notification_id: str) -> dict[str, Any]:
    """The webhook body: fallback ``text`` and the Block Kit ``blocks``."""
    alerts = payload.get("alerts", [])
    title = notification_title(payload)
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": title[:150]}}]
    for a in alerts[:MAX_ALERT_SECTIONS]:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items()))
        desc = a.get("annotations", {}).get("description", "")
        text = f"*{_mrkdwn(alert_line(a))}*" + (f"\n{_mrkdwn(desc)}" if desc else "") + f"\n`{_mrkdwn(labels)}`"
        section: dict[str, Any] = {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}
        url = a.get("annotations", {}).get("runbook_url", "")
        if url.startswith(("http://", "https://")) and len(url) <= 3000:
            section["accessory"] = {"type": "button", "text": {"type": "plain_text", "text": "Runbook"},
                                    "url": url, "action_id": f"runbook-{a.get('fingerprint', '')}"[:255]}
        blocks.append(section)
    if len(alerts) > MAX_ALERT_SECTIONS:
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": f"… and {len(alerts) - MAX_ALERT_SECTIONS} more"}})
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": _mrkdwn(f"mevwatch · notification {notification_id}")[:3000]}]})
    body: dict[str, Any] = {"text": title, "blocks": blocks}
    if config.channel:
        body["channel"] = config.channel
    if config.username:
        body["username"] = config.username
    return body


class SlackSink(JsonSink):
    kind = "slack"

    def __init__(self, receiver: str, index: int, config: SlackConfig) -> None:
        super().__init__(receiver, index, config, config.shown_url)
        self.config = config

    async def send(self, payload: dict[str, Any], notification_id: str) -> None:
        await self._client.send("POST", self.config.target_url, slack_message(payload, self.config, notification_id))
