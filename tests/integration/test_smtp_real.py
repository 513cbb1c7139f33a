"""The mail sink against a real SMTP server (aiosmtpd): plain, STARTTLS with auth, SMTPS, faults, outage."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from mevwatch.alerts.config import EmailConfig
from mevwatch.alerts.engine import AlertEngine
from mevwatch.alerts.router import notification_payload, silence_command
from mevwatch.alerts.rules import Alert
from mevwatch.alerts.sinks.base import DeliveryError
from mevwatch.alerts.sinks.mail import MailSink
from mevwatch.daemon.config import load_config_text
from mevwatch.daemon.state import StateDB
from mevwatch.daemon.store import SampleStore
from tests.support.peers import free_port, need_binary
from tests.support.smtp import Inbox, mail_shown, start_smtp
from tests.unit.alerts._helpers import gauge


def _auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == b"alerts" and data.password == b"pw"
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = need_binary("openssl")
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "smtp.crt", d / "smtp.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True, timeout=60)
    return crt, key


def _server_ctx(cert: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def payload(status: str = "firing") -> dict[str, Any]:
    labels = {"alertname": "DiskFillingUp", "severity": "critical", "host": "mev-host-1", "mountpoint": "/data"}
    a = Alert("DiskFillingUp", "f1", labels, {
        "summary": "/data on mev-host-1 is full in 3h", "description": "act now",
        "runbook_url": "https://runbooks.example/mevwatch#disk-full"}, "firing", 10800, 1_700_000_000,
        fired_at=1_700_000_000)
    return notification_payload("mail", "k", {"alertname": "DiskFillingUp"}, [a], [], "")


def sink(port: int, **kw: Any) -> MailSink:
    cfg = EmailConfig.model_validate({"to": ["oncall@example.org"], "from": "mevwatch@example.org",
                                      "smarthost": f"127.0.0.1:{port}", "timeout": 5, **kw})
    return MailSink("mail", 0, cfg)


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


def _check_mail(msg: EmailMessage) -> None:
    assert msg["Subject"] == "[FIRING:1] DiskFillingUp on mev-host-1"
    assert msg["To"] == "oncall@example.org"
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None
    assert html is not None
    text = plain.get_content()
    assert "/data on mev-host-1 is full in 3h" in text
    assert "Runbook: https://runbooks.example/mevwatch#disk-full" in text
    assert '<a href="https://runbooks.example/mevwatch#disk-full">Runbook</a>' in html.get_content()
    # the command that silences it, in both parts; the link back needs alerts.external_url (empty here): said so
    silence = silence_command(payload()["alerts"][0]["labels"])
    for part in mail_shown(msg):
        assert silence in part.code
        assert "no link: alerts.external_url is empty" in part.text
        assert part.links == ("https://runbooks.example/mevwatch#disk-full",)


async def test_plain_smtp_delivers_subject_body_and_runbook_link(inbox: Inbox) -> None:
    port = free_port()
    c = start_smtp(inbox, port)
    try:
        await sink(port, tls="none").send(payload(), "nid-1")
    finally:
        c.stop()
    [msg] = inbox.messages
    _check_mail(msg)
    assert "nid-1" in msg["Message-ID"]


async def test_starttls_with_auth(inbox: Inbox, cert: tuple[Path, Path]) -> None:
    port = free_port()
    c = start_smtp(inbox, port, tls_context=_server_ctx(cert), require_starttls=True, auth_required=True,
              authenticator=_auth)
    try:
        await sink(port, tls="starttls", ca_file=str(cert[0]), username="alerts", password="pw").send(payload(), "n")
        with pytest.raises(DeliveryError, match="authentication failed: 535") as bad:
            await sink(port, tls="starttls", ca_file=str(cert[0]), username="alerts", password="no").send(
                payload(), "n")
        assert bad.value.retry is False
    finally:
        c.stop()
    [msg] = inbox.messages
    _check_mail(msg)


async def test_implicit_tls(inbox: Inbox, cert: tuple[Path, Path]) -> None:
    port = free_port()
    c = start_smtp(inbox, port, ssl_context=_server_ctx(cert))
    try:
        await sink(port, tls="implicit", ca_file=str(cert[0])).send(payload(), "n")
    finally:
        c.stop()
    assert len(inbox.messages) == 1


async def test_starttls_required_but_not_offered_is_a_clear_permanent_error(inbox: Inbox) -> None:
    port = free_port()
    c = start_smtp(inbox, port)
    try:
        with pytest.raises(DeliveryError, match="does not offer STARTTLS") as err:
            await sink(port, tls="starttls").send(payload(), "n")
    finally:
        c.stop()
    assert err.value.retry is False
    assert inbox.messages == []


async def test_untrusted_certificate_is_a_clear_error(inbox: Inbox, cert: tuple[Path, Path]) -> None:
    port = free_port()
    c = start_smtp(inbox, port, tls_context=_server_ctx(cert), require_starttls=True)
    try:
        with pytest.raises(DeliveryError, match="TLS certificate verification failed") as err:
            await sink(port, tls="starttls").send(payload(), "n")  # system CAs do not know the test cert
        await sink(port, tls="starttls", insecure_skip_verify=True).send(payload(), "n")
    finally:
        c.stop()
    assert "set ca_file" in err.value.message
    assert len(inbox.messages) == 1


async def test_server_down_then_up_delivers_once(tmp_path: Path, inbox: Inbox) -> None:
    port = free_port()
    cfg = load_config_text(f"""collectors: []
alerts:
  default_rules: false
  group_wait: 0s
  outbox: {{retry_initial: 100ms, retry_max: 300ms}}
  receivers:
    - name: mail
      email_configs: [{{to: [oncall@example.org], from: mevwatch@example.org, smarthost: "127.0.0.1:{port}",
                        tls: none, timeout: 2s}}]
  receiver: mail
  rules:
    - {{name: DiskFillingUp, metric: test_ttf_seconds, op: "<", threshold: 14400,
       summary: "full in {{{{ $value | humanizeDuration }}}}", runbook: disk-full}}
""", str(tmp_path / "m.yaml"))
    store = SampleStore()
    db = StateDB.open_dir(tmp_path / "state")
    engine = AlertEngine(cfg.daemon.alerts, store, db)
    await engine.start()
    c: Controller | None = None
    try:
        store.put(("disk", "default"), [gauge("test_ttf_seconds", 3600, mountpoint="/data")], 60)
        await asyncio.sleep(0.8)
        assert engine.outbox.failed["mail/mail/0"] >= 2
        assert inbox.messages == []
        c = start_smtp(inbox, port)
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while not inbox.messages:
            assert loop.time() < end, "mail not delivered after the server came back"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.8)
        assert len(inbox.messages) == 1
        assert inbox.messages[0]["Subject"].startswith("[FIRING:1] DiskFillingUp")
        assert engine.outbox.depth() == {}
    finally:
        if c is not None:
            c.stop()
        await engine.stop()
        db.close()
