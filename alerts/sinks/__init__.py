"""Notification sinks: log, webhook, mail, alertmanager, pagerduty, slack, chat.

Each sink module is imported when a receiver uses it, so a daemon that only logs its alerts never
loads the HTTP client or the SMTP library.
"""

from __future__ import annotations

from mevwatch.alerts.config import Receiver
from mevwatch.alerts.sinks.base import DeliveryError, Sink
from mevwatch.alerts.sinks.log import LogSink

__all__ = ["DeliveryError", "Sink", "build_sinks"]


def build_sinks(receiver: Receiver, eval_interval: float) -> list[Sink]:
    """One sink per configured destination of ``receiver``, named receiver/kind/index."""
    sinks: list[Sink] = []
    sinks += [LogSink(receiver.name, i, c) for i, c in enumerate(receiver.log_configs)]
    if receiver.webhook_configs:
        from mevwatch.alerts.sinks.webhook import WebhookSink

        sinks += [WebhookSink(receiver.name, i, c) for i, c in enumerate(receiver.webhook_configs)]
    if receiver.email_configs:
        from mevwatch.alerts.sinks.mail import MailSink

        sinks += [MailSink(receiver.name, i, c) for i, c in enumerate(receiver.email_configs)]
    if receiver.alertmanager_configs:
        from mevwatch.alerts.sinks.alertmanager import AlertmanagerSink

        sinks += [
            AlertmanagerSink(receiver.name, i, c, eval_interval) for i, c in enumerate(receiver.alertmanager_configs)
        ]
    if receiver.pagerduty_configs:
        from mevwatch.alerts.sinks.pagerduty import PagerDutySink

        sinks += [PagerDutySink(receiver.name, i, c) for i, c in enumerate(receiver.pagerduty_configs)]
    if receiver.slack_configs:
        from mevwatch.alerts.sinks.slack import SlackSink

        sinks += [SlackSink(receiver.name, i, c) for i, c in enumerate(receiver.slack_configs)]
    if receiver.chat_configs:
        from mevwatch.alerts.sinks.chat import ChatSink

        sinks += [ChatSink(receiver.name, i, c) for i, c in enumerate(receiver.chat_configs)]
    return sinks
