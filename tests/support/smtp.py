"""A real SMTP server (aiosmtpd) on a loopback port, keeping every mail it accepts, and what a mail shows."""

from __future__ import annotations

import email
import email.policy
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.services import Shown, shown_html, shown_plain

__all__ = ["Inbox", "mail_shown", "start_smtp"]


@dataclass
class Inbox:
    """aiosmtpd's handler: every mail accepted, parsed."""

    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        return "250 OK"

    def wait(self, n: int, timeout: float = 10.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} mail(s) within {timeout}s, got {len(self.messages)}")
            time.sleep(0.05)
        return list(self.messages)


def start_smtp(inbox: Inbox, port: int, **kw: Any) -> Controller:
    """The server, started (``kw``: aiosmtpd's TLS and auth options); stop it with ``.stop()``."""
    c = Controller(inbox, hostname="127.0.0.1", port=port, ready_timeout=10, **kw)
    c.start()
    return c


def mail_shown(msg: EmailMessage) -> tuple[Shown, Shown]:
    """What a mail reader shows of the plain-text part and of the HTML part."""
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert isinstance(plain, EmailMessage), "a mail without its plain-text part"
    assert isinstance(html, EmailMessage), "a mail without its HTML part"
    return shown_plain(plain.get_content()), shown_html(html.get_content())
