"""The mail sink: plain-text and HTML mail over SMTP (STARTTLS or implicit TLS, optional auth)."""

from __future__ import annotations

import html
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import aiosmtplib

from mevwatch.alerts.config import EmailConfig
from mevwatch.alerts.sinks._message import link_back, notification_title
from mevwatch.alerts.sinks.base import DeliveryError
from mevwatch.fields import read_secret_file

__all__ = ["MailSink", "render_mail"]


def render_mail(payload: dict[str, Any], sender: str, to: list[str], notification_id: str) -> EmailMessage:
    """The mail of one notification: subject names incident and host; body has value and runbook link, and for
    each firing alert its link back to mevwatch's page and the command that silences it."""
    msg = EmailMessage()
    msg["Subject"] = notification_title(payload)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(idstring=notification_id, domain="mevwatch")
    msg["X-Mevwatch-Notification-Id"] = notification_id
    lines, rows = [], []
    for a in payload.get("alerts", []):
        ann, labels = a["annotations"], a["labels"]
        label_text = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
        back = link_back(a) if a["status"] == "firing" else None
        lines += [
            f"[{a['status'].upper()}] {ann.get('summary', '')}",
            *([ann["description"]] if ann.get("description") else []),
            f"Runbook: {ann.get('runbook_url', '')}",
            f"Labels: {label_text}",
            f"Since: {a['startsAt']}",
            *([f"Open in mevwatch: {back.url if back.opens else back.missing}"] if back else []),
            *([f"Silence: {back.silence}"] if back and back.silence else []),
            "",
        ]
        link = html.escape(ann.get("runbook_url", ""), quote=True)
        way_back = ""
        if back is not None:
            way_back = (f"<br><a href=\"{html.escape(back.url, quote=True)}\">Open in mevwatch</a>" if back.opens
                        else f"<br>{html.escape(back.missing)}")
            if back.silence:
                way_back += f"<br>Silence:<pre><code>{html.escape(back.silence)}</code></pre>"
        rows.append(
            f"<li><b>[{html.escape(a['status'].upper())}] {html.escape(ann.get('summary', ''))}</b><br>"
            f"{html.escape(ann.get('description', ''))}<br>"
            f"<a href=\"{link}\">Runbook</a> &middot; <code>{html.escape(label_text)}</code>"
            f" &middot; since {html.escape(a['startsAt'])}{way_back}</li>"
        )
    msg.set_content("\n".join(lines))
    msg.add_alternative(
        f"<html><body><h3>{html.escape(msg['Subject'])}</h3><ul>{''.join(rows)}</ul></body></html>",
        subtype="html",
    )
    return msg


class MailSink:
    kind = "mail"

    def __init__(self, receiver: str, index: int, config: EmailConfig) -> None:
        self.receiver = receiver
        self.name = f"{receiver}/mail/{index}"
        self.config = config
        host, _, port = config.smarthost.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)

    def wants(self, payload: dict[str, Any]) -> bool:
        return self.config.send_resolved or payload.get("status") == "firing"

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.config.ca_file) if self.config.ca_file else None)
        if self.config.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def send(self, payload: dict[str, Any], notification_id: str) -> None:
        cfg = self.config
        msg = render_mail(payload, cfg.from_, cfg.to, notification_id)
        password = cfg.password
        if cfg.password_file is not None:
            try:
                password = read_secret_file(cfg.password_file)
            except ValueError as exc:
                raise DeliveryError(str(exc)) from None
        where = f"SMTP {cfg.smarthost}"
        try:
            await aiosmtplib.send(
                msg,
                hostname=self.host,
                port=self.port,
                username=cfg.username,
                password=password,
                use_tls=cfg.tls == "implicit",
                start_tls=cfg.tls == "starttls",
                tls_context=self._tls_context() if cfg.tls != "none" else None,
                timeout=cfg.timeout,
            )
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"{where}: authentication failed: {exc.code} {exc.message}", retry=False) from None
        except aiosmtplib.SMTPResponseException as exc:
            # 4xx SMTP replies are transient by definition, 5xx are final
            raise DeliveryError(f"{where}: server replied {exc.code} {exc.message}", retry=exc.code < 500) from None
        except (aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPServerDisconnected) as exc:
            raise DeliveryError(f"{where}: {exc}") from None
        except aiosmtplib.SMTPConnectError as exc:
            raise DeliveryError(f"{where}: {_tls_hint(exc)}", retry=not _is_cert_error(exc)) from None
        except aiosmtplib.SMTPException as exc:
            text = str(exc)
            if "STARTTLS" in text:
                raise DeliveryError(
                    f"{where}: the server does not offer STARTTLS; set tls: implicit for SMTPS, "
                    "or tls: none to send in clear text",
                    retry=False,
                ) from None
            raise DeliveryError(f"{where}: {_tls_hint(exc)}", retry=not _is_cert_error(exc)) from None
        except ssl.SSLError as exc:
            raise DeliveryError(f"{where}: {_tls_hint(exc)}", retry=not _is_cert_error(exc)) from None
        except OSError as exc:
            raise DeliveryError(f"{where}: {exc.strerror or exc}") from None

    async def close(self) -> None:
        return None


def _is_cert_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _tls_hint(exc: BaseException) -> str:
    if _is_cert_error(exc):
        return (f"TLS certificate verification failed ({exc}); set ca_file to the server's CA, "
                "or insecure_skip_verify: true for a test server")
    return str(exc) or type(exc).__name__
