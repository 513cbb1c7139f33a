"""Config models of the paging and chat receivers: PagerDuty, Slack and chat webhooks (Telegram, Discord, Matrix).

Field names follow Alertmanager's receiver configs where they have one (``routing_key_file``,
``url_file``, ``send_resolved``). Kept apart from the sink modules so that loading a config does not
import an HTTP client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from mevwatch.fields import Duration, SinkURL, check_sink_url, read_secret_file
from mevwatch.redaction import register_secret

__all__ = ["CHAT_PRESETS", "ChatConfig", "PagerDutyConfig", "SlackConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _secret(value: str | None, file: Path | None, name: str) -> str:
    if (value is None) == (file is None):
        raise ValueError(f"set exactly one of {name} and {name}_file")
    text = read_secret_file(file) if file is not None else value
    assert text is not None
    text = text.strip()
    if not text:
        raise ValueError(f"{name} is empty")
    register_secret(text)
    return text


PagerDutySeverity = Literal["critical", "error", "warning", "info"]


def _default_severity_map() -> dict[str, PagerDutySeverity]:
    return {"page": "critical", "critical": "critical", "error": "error", "warning": "warning", "info": "info"}


class PagerDutyConfig(_Strict):
    """PagerDuty Events API v2: one event per host and alert group, triggered and resolved by dedup key; links
    each alert's row on mevwatch's page and carries its silence command in custom_details."""

    routing_key: str | None = Field(None, repr=False, description="integration key of the PagerDuty service")
    routing_key_file: Path | None = Field(None, description="file holding the routing key instead")
    url: str = Field("https://events.pagerduty.com/v2/enqueue", description="Events API v2 endpoint")
    client: str = Field("mevwatch", description="shown in PagerDuty as the event's client")
    client_url: str = Field("", description=(
        "link from the incident back to this monitoring (e.g. Grafana); default: mevwatch's page "
        "(alerts.external_url)"))
    severity_map: dict[str, PagerDutySeverity] = Field(
        default_factory=_default_severity_map,
        description="alert severity label -> PagerDuty severity (unknown ones: error)",
    )
    timeout: Duration = Field(10.0, gt=0, description="per request")
    send_resolved: bool = True
    _key: str = PrivateAttr("")

    @model_validator(mode="after")
    def _resolve(self) -> PagerDutyConfig:
        self._key = _secret(self.routing_key, self.routing_key_file, "routing_key")
        if len(self._key) != 32:
            raise ValueError("routing_key must be the 32-character integration key of an Events API v2 integration")
        check_sink_url(self.url, "url")
        return self

    @property
    def key(self) -> str:
        return self._key


class SlackConfig(SinkURL, _Strict):
    """Slack incoming webhook (``url`` or ``url_file``): a Block Kit message, per alert a runbook button, a link
    to its row on mevwatch's page and its silence command as code."""

    channel: str | None = Field(None, description="override the webhook's channel (legacy webhooks only)")
    username: str | None = Field(None, description="override the webhook's name (legacy webhooks only)")
    timeout: Duration = Field(10.0, gt=0, description="per request")
    send_resolved: bool = True


#: per chat service: HTTP method, the JSON body ($text and $notification_id are replaced in its strings),
#: the longest message text the service accepts and the markup of $text (alerts.sinks._message: plain if none).
CHAT_PRESETS: dict[str, dict[str, Any]] = {
    # https://core.telegram.org/bots/api#sendmessage ; url: https://api.telegram.org/bot<token>/sendMessage
    # parse_mode HTML: the silence command in <code> (a tap copies it), the links as <a href>
    "telegram": {"method": "POST", "max_text": 4096, "markup": "html",
                 "body": {"chat_id": "$chat_id", "text": "$text", "parse_mode": "HTML",
                          "disable_web_page_preview": True}},
    # https://discord.com/developers/docs/resources/webhook#execute-webhook ; url: the channel's webhook URL
    # content is markdown: the silence command in a code span, links as <url> (no embed)
    "discord": {"method": "POST", "max_text": 2000, "markup": "markdown",
                "body": {"content": "$text", "username": "mevwatch", "allowed_mentions": {"parse": []}}},
    # https://spec.matrix.org/v1.9/client-server-api/#put_matrixclientv3roomsroomidsendeventtypetxnid ;
    # url: https://<homeserver>/_matrix/client/v3/rooms/<room id>/send/m.room.message (the txn id is appended)
    "matrix": {"method": "PUT", "max_text": 32000, "append_notification_id": True,
               "body": {"msgtype": "m.text", "body": "$text"}},
}


class ChatConfig(SinkURL, _Strict):
    """A chat webhook from a template: a preset (telegram, discord, matrix) or your own ``body``; $text has per
    alert its runbook, its link to mevwatch's page and its silence command."""

    preset: Literal["telegram", "discord", "matrix", "custom"] = Field(description="the service's request shape")
    chat_id: str | None = Field(None, description="telegram: the chat to post to")
    bearer_token: str | None = Field(None, repr=False, description="matrix: access token (Authorization: Bearer)")
    bearer_token_file: Path | None = Field(None, description="file holding the bearer token instead")
    method: Literal["POST", "PUT"] | None = Field(None, description="custom: HTTP method (default POST)")
    body: dict[str, Any] | None = Field(
        None, description="custom: JSON body; $text, $status, $notification_id are replaced in its strings")
    max_text: int | None = Field(None, ge=100, description="longest message text (default per preset; custom 4000)")
    timeout: Duration = Field(10.0, gt=0, description="per request")
    send_resolved: bool = True
    _token: str | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> ChatConfig:
        if self.preset == "custom":
            if self.body is None:
                raise ValueError("preset custom needs a body")
        elif self.body is not None or self.method is not None:
            raise ValueError(f"preset {self.preset} sets method and body itself; use preset custom for your own")
        if self.preset == "telegram" and not self.chat_id:
            raise ValueError("preset telegram needs chat_id")
        if self.preset == "matrix" and self.bearer_token is None and self.bearer_token_file is None:
            raise ValueError("preset matrix needs bearer_token or bearer_token_file")
        if self.bearer_token is not None or self.bearer_token_file is not None:
            self._token = _secret(self.bearer_token, self.bearer_token_file, "bearer_token")
        return self

    @property
    def token(self) -> str | None:
        return self._token
