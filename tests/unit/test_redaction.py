"""Sink URLs are shown as scheme://host[:port] only; chat webhook tokens are caught even unregistered."""

from __future__ import annotations

from pathlib import Path

import pytest

from mevwatch.alerts.config import AlertmanagerSinkConfig, WebhookConfig
from mevwatch.redaction import redact, redact_sink_url, register_sink_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://api.telegram.org/bot123456:AAH-token/sendMessage", "https://api.telegram.org/***"),
        ("https://hooks.slack.com/services/T0/B0/secret", "https://hooks.slack.com/***"),
        ("https://discord.com/api/webhooks/1/tok?wait=true", "https://discord.com/***"),
        ("http://u:pw@127.0.0.1:9093", "http://127.0.0.1:9093"),
        ("http://127.0.0.1:9093/", "http://127.0.0.1:9093"),
        ("http://[::1]:9093/x", "http://[::1]:9093/***"),
        ("http://127.0.0.1:99999/x", "***"),  # unparseable: nothing of it
        ("not a url at all", "***"),
    ],
)
def test_sink_url_shows_scheme_host_and_port_only(url: str, shown: str) -> None:
    assert redact_sink_url(url) == shown


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("POST https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJx/sendMessage failed", "AAHdqTcvCH1vGWJx"),
        ("404 for /services/T000/B000/shortsecret", "shortsecret"),
        ("url='https://discord.com/api/webhooks/1234/tok-en_1'", "tok-en_1"),
    ],
)
def test_chat_webhook_paths_are_redacted_without_registration(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert "***" in out


def test_file_paths_that_merely_look_alike_are_left_alone() -> None:
    for text in ("/etc/mev/services/engine.yaml", "/srv/api/webhooks/README", "/home/bot/notes"):
        assert redact(text) == text


def test_a_registered_sink_url_is_scrubbed_wherever_it_is_quoted() -> None:
    url = "https://chat.example/hooks/plain-looking-path?sig=abc123def"
    assert register_sink_url(url) == "https://chat.example/***"
    for quoted, shown in ((url, "https://chat.example/***"), ("/hooks/plain-looking-path?sig=abc123def", "/***"),
                          ("sig=abc123def", "***")):
        assert redact(f"error: {quoted} refused") == f"error: {shown} refused"


def test_a_sink_url_does_not_mangle_other_urls_of_its_server() -> None:
    # a receiver at the server's root, then a probe of the same server: the probe's URL stays whole
    assert register_sink_url("http://am.test.example:9093/") == "http://am.test.example:9093"
    assert redact("http://am.test.example:9093/-/healthy") == "http://am.test.example:9093/-/healthy"
    # with credentials, the URL is masked and its "/" kept
    assert register_sink_url("http://user:pw-1234@pd.test.example:8080/") == "http://pd.test.example:8080"
    assert redact("GET http://user:pw-1234@pd.test.example:8080/v2/enqueue") == \
        "GET http://pd.test.example:8080/v2/enqueue"


def test_url_file_is_read_checked_and_registered(tmp_path: Path) -> None:
    f = tmp_path / "hook.url"
    f.write_text("https://chat.example/incoming/unguessable-part-42\n")
    cfg = WebhookConfig.model_validate({"url_file": str(f)})
    assert cfg.target_url == "https://chat.example/incoming/unguessable-part-42"
    assert cfg.shown_url == "https://chat.example/***"
    assert "unguessable" not in repr(cfg)
    assert "unguessable-part-42" not in redact("failed: /incoming/unguessable-part-42")
    am = AlertmanagerSinkConfig.model_validate({"urls": ["http://127.0.0.1:9093/"], "url_files": [str(f)]})
    assert am.target_urls == ["http://127.0.0.1:9093", "https://chat.example/incoming/unguessable-part-42"]
    with pytest.raises(ValueError, match="set urls or url_files"):
        AlertmanagerSinkConfig.model_validate({})
    with pytest.raises(ValueError, match="exactly one of url and url_file"):
        WebhookConfig.model_validate({})
