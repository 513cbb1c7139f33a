"""The Slack sink: an incoming webhook message in Block Kit, one section per alert with its runbook button, its
link back to mevwatch and the command that silences it."""

from __future__ import annotations

from typing import Any

from mevwatch.alerts.receivers import SlackConfig
from mevwatch.alerts.sinks._http import JsonSink
from mevwatch.alerts.sinks._message import alert_line, group_link, link_back, notification_title

__all__ = ["SlackSink", "slack_message"]

MAX_ALERT_SECTIONS = 20  # Slack takes 50 blocks; the rest is summed up in one line
SECTION_TEXT = 3000  # Slack's longest section text


def _mrkdwn(text: str) -> str:
    """Slack's escaping for message text: &, < and > only."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _way_back(a: dict[str, Any]) -> str:
    """The alert's link back to mevwatch (mrkdwn ``<url|text>``) and its silence command as code."""
    back = link_back(a)
    out = f"<{_mrkdwn(back.url)}|Open in mevwatch>" if back.opens else _mrkdwn(back.missing)
    if back.silence:
        # a code span shows its text as is; one with a backtick cannot be a span, a code block holds it
        cmd = _mrkdwn(back.silence)
        out += f"\nSilence: `{cmd}`" if "`" not in cmd else f"\nSilence:\n```{cmd}```"
    return out


def _section_text(a: dict[str, Any]) -> str:
    """An alert's section: its line, description and labels, then (firing) its way back, within Slack's 3000
    characters; a long description is shortened before it is escaped, so no escape or link is cut through."""
    labels = ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items()))
    desc = a.get("annotations", {}).get("description", "")
    tail = "\n" + _way_back(a) if a["status"] == "firing" else ""

    def render(n: int) -> str:
        d = desc if len(desc) <= n else desc[: max(n - 1, 0)] + "…"
        return f"*{_mrkdwn(alert_line(a))}*" + (f"\n{_mrkdwn(d)}" if d else "") + f"\n`{_mrkdwn(labels)}`" + tail

    n = len(desc)
    text = render(n)
    while len(text) > SECTION_TEXT and n > 0:
        n = max(n - (len(text) - SECTION_TEXT), 0)
        text = render(n)
    return text[:SECTION_TEXT]


def slack_message(payload: dict[str, Any], config: SlackConfig, notification_id: str) -> dict[str, Any]:
    """The webhook body: fallback ``text`` and the Block Kit ``blocks``; each firing alert's section ends with
    its link back to mevwatch and the command that silences it (kept whole: the rest is cut to Slack's 3000)."""
    alerts = payload.get("alerts", [])
    title = notification_title(payload)
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": title[:150]}}]
    for a in alerts[:MAX_ALERT_SECTIONS]:
        section: dict[str, Any] = {"type": "section", "text": {"type": "mrkdwn", "text": _section_text(a)}}
        url = a.get("annotations", {}).get("runbook_url", "")
        if url.startswith(("http://", "https://")) and len(url) <= 3000:
            section["accessory"] = {"type": "button", "text": {"type": "plain_text", "text": "Runbook"},
                                    "url": url, "action_id": f"runbook-{a.get('fingerprint', '')}"[:255]}
        blocks.append(section)
    if len(alerts) > MAX_ALERT_SECTIONS:
        more = f"… and {len(alerts) - MAX_ALERT_SECTIONS} more"
        where = group_link(payload)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": more + (
            f": <{_mrkdwn(where)}|the alert list in mevwatch>" if where else "")}})
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
