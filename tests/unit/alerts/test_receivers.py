"""PagerDuty, Slack and chat sinks against local servers that check each request against the service's schema.

Retries: 5xx and 429 are retried (after the service's Retry-After, from the header or its JSON body),
any other 4xx is final. Each firing alert's link back to mevwatch and its silence command are shown whole
in the service's markup (or, without alerts.external_url, what the link needs), whatever the labels hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mevwatch.alerts.cli import run_test
from mevwatch.alerts.identity import group_key, route_key
from mevwatch.alerts.receivers import ChatConfig, PagerDutyConfig, SlackConfig
from mevwatch.alerts.router import generator_url, silence_command
from mevwatch.alerts.sinks._http import retry_after_seconds
from mevwatch.alerts.sinks.base import DeliveryError, Sink
from mevwatch.alerts.sinks.chat import ChatSink
from mevwatch.alerts.sinks.pagerduty import PagerDutySink
from mevwatch.alerts.sinks.slack import SlackSink
from mevwatch.daemon.config import ConfigError, load_config_text
from tests.support.services import MATRIX_TOKEN, PD_KEY, TELEGRAM_TOKEN, FakeServices, Scripted, shown

RUNBOOK = "https://runbooks.example/mevwatch"
EXTERNAL_URL = "http://mev-host-1:9717"
NO_LINK = ("no link: alerts.external_url is empty; set alerts.external_url to the http(s) address this mevwatch's "
           "page is reached at")


@pytest.fixture(scope="module")
def services() -> Iterator[FakeServices]:
    s = FakeServices().start()
    try:
        yield s
    finally:
        s.stop()


def alert(name: str, host: str, status: str = "firing", severity: str = "critical", external_url: str = EXTERNAL_URL,
          labels: dict[str, str] | None = None, **ann: str) -> dict[str, Any]:
    """An alert as the router puts it in a notification: its link back and silence command included."""
    all_labels = {"alertname": name, "host": host, "severity": severity, **(labels or {})}
    fp = f"{name}-{host}-{len(labels or {})}"
    return {"status": status, "labels": all_labels,
            "annotations": {"summary": f"{name} on {host}", "runbook_url": f"{RUNBOOK}#{name.lower()}",
                            "silence": silence_command(all_labels), **ann},
            "startsAt": "2026-12-04T15:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": generator_url(external_url, fp), "fingerprint": fp, "value": 1.0}


def payload(*alerts: dict[str, Any], group_key: str = '{}:{alertname="HeadLag"}',
            external_url: str = EXTERNAL_URL) -> dict[str, Any]:
    return {"version": "4", "groupKey": group_key, "truncatedAlerts": 0,
            "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
            "receiver": "page", "groupLabels": {"alertname": alerts[0]["labels"]["alertname"]},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": external_url, "alerts": list(alerts)}


def pd(services: FakeServices, **kw: Any) -> PagerDutySink:
    return PagerDutySink("page", 0, PagerDutyConfig(routing_key=PD_KEY, url=services.url("/v2/enqueue"), **kw))


def chat(services: FakeServices, preset: str, **kw: Any) -> ChatSink:
    urls = {"telegram": f"/bot{TELEGRAM_TOKEN}/sendMessage", "discord": "/api/webhooks/42/discord-token",
            "matrix": "/_matrix/client/v3/rooms/!room:example/send/m.room.message", "custom": "/api/webhooks/1/x"}
    extras: dict[str, dict[str, Any]] = {"telegram": {"chat_id": "-100123"}, "matrix": {"bearer_token": MATRIX_TOKEN},
                                         "discord": {}, "custom": {"body": {"content": "$status: $text"}}}
    extra = extras[preset]
    return ChatSink("chat", 0, ChatConfig(preset=preset, url=services.url(urls[preset]), **{**extra, **kw}))


async def _send(sink: Sink, body: dict[str, Any], nid: str = "n1") -> None:
    try:
        await sink.send(body, nid)
    finally:
        await sink.close()


async def test_pagerduty_pages_each_hosts_group_once_and_resolves_it_by_alertmanagers_key(
        services: FakeServices) -> None:
    before = len(services.of("pagerduty"))
    keys = {h: group_key(route_key(None), {"alertname": "HeadLag", "host": h}) for h in ("mev-1", "mev-2")}
    await _send(pd(services), payload(alert("HeadLag", "mev-1"), group_key=keys["mev-1"]))
    await _send(pd(services), payload(alert("HeadLag", "mev-2", severity="warning"), group_key=keys["mev-2"]))
    a, b = services.of("pagerduty")[before:]
    assert (a.problems, b.problems) == ((), ())
    # Alertmanager's PagerDuty integration sends sha256(group key): the same incident either way
    assert a.body["dedup_key"] == hashlib.sha256(keys["mev-1"].encode()).hexdigest()
    assert b.body["dedup_key"] == hashlib.sha256(keys["mev-2"].encode()).hexdigest()
    assert a.body["payload"]["source"] == "mev-1"
    assert (a.body["payload"]["severity"], b.body["payload"]["severity"]) == ("critical", "warning")
    assert a.body["links"] == [
        {"href": f"{EXTERNAL_URL}/#alert-HeadLag-mev-1-0", "text": "mevwatch: [FIRING] HeadLag on mev-1"},
        {"href": f"{RUNBOOK}#headlag", "text": "Runbook: HeadLag"}]
    assert a.body["client_url"] == EXTERNAL_URL
    # mev-1 recovers: only its incident is resolved
    await _send(pd(services), payload(alert("HeadLag", "mev-1", status="resolved"), group_key=keys["mev-1"]))
    [c] = services.of("pagerduty")[before + 2:]
    assert c.problems == ()
    assert (c.body["event_action"], c.body["dedup_key"]) == ("resolve", a.body["dedup_key"])
    assert "payload" not in c.body


async def test_slack_gets_block_kit_with_a_runbook_button_per_alert(services: FakeServices) -> None:
    before = len(services.of("slack"))
    many = [alert("DiskFull", f"mev-{i}", description="<b>disk</b> & more") for i in range(30)]
    sink = SlackSink("chat", 0, SlackConfig(url=services.url("/services/T000/B000/XXXX")))
    await _send(sink, payload(*many))
    [req] = services.of("slack")[before:]
    assert req.problems == ()
    blocks = req.body["blocks"]
    assert blocks[0]["text"]["text"] == "[FIRING:30] DiskFull on mev-0"
    buttons = [b["accessory"] for b in blocks if "accessory" in b]
    assert buttons[0]["url"] == f"{RUNBOOK}#diskfull"
    assert buttons[0]["text"]["text"] == "Runbook"
    assert "&lt;b&gt;disk&lt;/b&gt; &amp; more" in blocks[1]["text"]["text"]
    assert any("and 10 more" in b.get("text", {}).get("text", "") for b in blocks)


@pytest.mark.parametrize("preset", ["telegram", "discord", "matrix", "custom"])
async def test_chat_presets_and_a_custom_template_are_accepted(services: FakeServices, preset: str) -> None:
    service = "discord" if preset == "custom" else preset
    before = len(services.of(service))
    await _send(chat(services, preset), payload(alert("PeersLow", "mev-1")))
    [req] = services.of(service)[before:]
    assert req.problems == ()
    text = {"telegram": lambda b: b["text"], "discord": lambda b: b["content"], "matrix": lambda b: b["body"],
            "custom": lambda b: b["content"]}[preset](req.body)
    assert "[FIRING:1] PeersLow on mev-1" in text
    assert f"{RUNBOOK}#peerslow" in text
    if preset == "custom":
        assert text.startswith("firing: ")


async def test_a_message_over_the_services_limit_is_cut_not_refused(services: FakeServices) -> None:
    before = len(services.of("discord"))
    long = [alert("LogErrors", "mev-1", summary="x" * 300) for _ in range(20)]
    await _send(chat(services, "discord"), payload(*long))
    [req] = services.of("discord")[before:]
    assert req.problems == ()
    assert len(req.body["content"]) <= 2000
    # whole alerts only: every command shown is an alert's whole command; the note says where the rest is
    page = shown("discord", req.body)
    kept = page.text.count("\n  silence: ")
    assert 0 < kept < 20
    assert page.code == tuple(a["annotations"]["silence"] for a in long[:kept])
    assert page.text.endswith(f"… {20 - kept} more not shown (cut); see the alert list in mevwatch at "
                              f"<{EXTERNAL_URL}>")


async def test_a_retried_matrix_notification_is_the_same_event(services: FakeServices) -> None:
    await _send(chat(services, "matrix"), payload(alert("NodeDown", "mev-1")), nid="same-id")
    await _send(chat(services, "matrix"), payload(alert("NodeDown", "mev-1")), nid="same-id")
    paths = {r.path for r in services.of("matrix") if r.path.endswith("/same-id")}
    assert len(paths) == 1
    assert len({v for k, v in services.matrix_events.items() if k == "same-id"}) == 1


PAGING = ["pagerduty", "slack", "telegram", "discord", "matrix", "custom"]
#: label values as a watched file's path or a log line may carry them: markup of every service, quotes, backticks
HOSTILE = {"path": "/etc/mev/<a&b>`x`'y\".yaml", "line": "</code><b>*bold* _it_ [l](http://x) &amp;"}


def _page_sink(services: FakeServices, service: str) -> Sink:
    if service == "custom":  # a JSON chat webhook of one's own: the text in a field
        return ChatSink("chat", 0, ChatConfig(preset="custom", url=services.url("/hooks/ops"),
                                              body={"text": "$text", "id": "$notification_id"}))
    return _sink_for(services, service)


async def _page(services: FakeServices, service: str, body: dict[str, Any]) -> Any:
    before = len(services.of(service, ok_only=False))
    await _send(_page_sink(services, service), body)
    [req] = services.of(service, ok_only=False)[before:]
    assert req.problems == ()
    return req


@pytest.mark.parametrize("service", PAGING)
async def test_each_service_shows_the_link_back_and_the_whole_silence_command_whatever_the_labels_hold(
        services: FakeServices, service: str) -> None:
    a = alert("FileChanged", "mev-1", labels=HOSTILE)
    resolved = alert("NodeDown", "mev-1", status="resolved")
    page = shown(service, (await _page(services, service, payload(a, resolved))).body)
    assert a["generatorURL"] in page.links
    assert a["annotations"]["silence"] in page.code  # verbatim: what the on-call copies silences this alert
    # a resolved alert has nothing left to open or silence
    assert resolved["generatorURL"] not in page.links
    assert resolved["annotations"]["silence"] not in page.code


@pytest.mark.parametrize("service", PAGING)
async def test_without_external_url_a_page_says_what_the_link_needs_and_links_nothing_broken(
        services: FakeServices, service: str) -> None:
    a = alert("NodeDown", "mev-1", external_url="")
    req = await _page(services, service, payload(a, external_url=""))
    page = shown(service, req.body)
    assert NO_LINK in page.text
    assert set(page.links) == {f"{RUNBOOK}#nodedown"}
    assert a["annotations"]["silence"] in page.code
    if service == "pagerduty":
        assert "client_url" not in req.body


async def test_a_long_telegram_page_fits_after_its_entities_are_parsed_and_keeps_whole_commands(
        services: FakeServices) -> None:
    many = [alert("FileChanged", f"mev-{i}", labels=HOSTILE, summary="<&>" * 60) for i in range(40)]
    page = shown("telegram", (await _page(services, "telegram", payload(*many))).body)
    kept = page.text.count("\n  silence: ")
    assert 0 < kept < 40
    assert page.code == tuple(a["annotations"]["silence"] for a in many[:kept])
    assert f"{40 - kept} more not shown (cut)" in page.text
    assert page.links[-1] == EXTERNAL_URL  # where the rest is


async def test_one_alert_longer_than_the_message_keeps_its_link_and_command_and_loses_summary(
        services: FakeServices) -> None:
    a = alert("LogErrors", "mev-1", labels=HOSTILE, summary="y" * 3000)
    req = await _page(services, "discord", payload(a))
    page = shown("discord", req.body)
    assert len(req.body["content"]) <= 2000
    assert "y" * 100 in page.text
    assert "y" * 3000 not in page.text
    assert a["generatorURL"] in page.links
    assert page.code == (a["annotations"]["silence"],)


async def test_a_slack_section_over_3000_characters_shortens_the_description_not_the_link_or_command(
        services: FakeServices) -> None:
    a = alert("LogErrors", "mev-1", labels=HOSTILE, description="<&> " * 1500)
    req = await _page(services, "slack", payload(a))  # the fake refuses an escape or a link cut through
    page = shown("slack", req.body)
    assert len(req.body["blocks"][1]["text"]["text"]) <= 3000
    assert a["generatorURL"] in page.links
    assert a["annotations"]["silence"] in page.code


RETRYABLE = [
    ("pagerduty", Scripted(500, {"status": "error"}), None),
    ("pagerduty", Scripted(429, {"status": "throttle"}, {"Retry-After": "7"}), 7.0),
    ("slack", Scripted(503), None),
    ("slack", Scripted(429, None, {"Retry-After": "30"}), 30.0),
    ("telegram", Scripted(429, {"ok": False, "error_code": 429, "parameters": {"retry_after": 3}}), 3.0),
    ("discord", Scripted(429, {"message": "You are being rate limited.", "retry_after": 0.5, "global": False}), 0.5),
    ("matrix", Scripted(429, {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 2000}), 2.0),
]
FINAL = [
    ("pagerduty", Scripted(400, {"status": "invalid event"})),
    ("slack", Scripted(404, None)),
    ("slack", Scripted(403, None)),
    ("telegram", Scripted(403, {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked"})),
    ("discord", Scripted(401, {"code": 50027, "message": "Invalid Webhook Token"})),
    ("matrix", Scripted(401, {"errcode": "M_UNKNOWN_TOKEN"})),
]


def _sink_for(services: FakeServices, service: str) -> Sink:
    if service == "pagerduty":
        return pd(services)
    if service == "slack":
        return SlackSink("chat", 0, SlackConfig(url=services.url("/services/T000/B000/XXXX")))
    return chat(services, service)


@pytest.mark.parametrize(("service", "answer", "wait"), RETRYABLE)
async def test_5xx_and_429_are_retried_after_the_services_wait(
        services: FakeServices, service: str, answer: Scripted, wait: float | None) -> None:
    services.fail_next(service, answer)
    with pytest.raises(DeliveryError) as exc:
        await _send(_sink_for(services, service), payload(alert("NodeDown", "mev-1")))
    assert exc.value.retry is True
    assert exc.value.retry_after == wait
    assert f"HTTP {answer.status}" in exc.value.message


@pytest.mark.parametrize(("service", "answer"), FINAL)
async def test_other_4xx_are_final(services: FakeServices, service: str, answer: Scripted) -> None:
    services.fail_next(service, answer)
    with pytest.raises(DeliveryError) as exc:
        await _send(_sink_for(services, service), payload(alert("NodeDown", "mev-1")))
    assert exc.value.retry is False


def test_retry_after_also_reads_an_http_date() -> None:
    assert retry_after_seconds("Fri, 04 Dec 2026 15:00:30 GMT", None, now=1796396400.0) == 30.0
    assert retry_after_seconds("soon", {"retry_after": "x"}) is None


async def test_an_error_never_shows_a_webhook_urls_secret_path(services: FakeServices) -> None:
    services.fail_next("slack", Scripted(500))
    with pytest.raises(DeliveryError) as exc:
        await _send(SlackSink("chat", 0, SlackConfig(url=services.url("/services/T000/B000/SECRETPART"))),
                    payload(alert("NodeDown", "mev-1")))
    assert "SECRETPART" not in exc.value.message
    assert f"127.0.0.1:{services.port}" in exc.value.message


CONFIG = """\
collectors: []
alerts:
  default_rules: false
  host: mev-1
  runbook_url: https://runbooks.example/mevwatch
  receiver: page
  receivers:
    - name: page
      pagerduty_configs:
        - routing_key_file: {key_file}
          url: {pd}
      slack_configs:
        - url_file: {slack_file}
      chat_configs:
        - preset: telegram
          url: {telegram}
          chat_id: "-100123"
        - preset: matrix
          url: {matrix}
          bearer_token_file: {token_file}
"""


async def test_alerts_test_reaches_every_configured_receiver(services: FakeServices, tmp_path: Path) -> None:
    (tmp_path / "pd.key").write_text(PD_KEY + "\n")
    (tmp_path / "slack.url").write_text(services.url("/services/T000/B000/XXXX") + "\n")
    (tmp_path / "matrix.token").write_text(MATRIX_TOKEN + "\n")
    cfg = load_config_text(CONFIG.format(
        key_file=tmp_path / "pd.key", pd=services.url("/v2/enqueue"), slack_file=tmp_path / "slack.url",
        telegram=services.url(f"/bot{TELEGRAM_TOKEN}/sendMessage"), token_file=tmp_path / "matrix.token",
        matrix=services.url("/_matrix/client/v3/rooms/!room:example/send/m.room.message")), "m.yaml")
    results = await run_test(cfg, None)
    assert results == [("page/pagerduty/0", None), ("page/slack/0", None), ("page/chat/0", None),
                       ("page/chat/1", None)]


@pytest.mark.parametrize(
    ("receiver", "message"),
    [
        ("pagerduty_configs: [{routing_key: short}]", "pagerduty_configs[0]: Value error, routing_key must be the 32"),
        (f"pagerduty_configs: [{{routing_key: {PD_KEY}, routing_key_file: /x}}]", "exactly one of routing_key"),
        ("chat_configs: [{preset: telegram, url: 'https://api.telegram.org/botX/sendMessage'}]", "needs chat_id"),
        ("chat_configs: [{preset: matrix, url: 'https://m.example/_matrix'}]", "needs bearer_token"),
        ("chat_configs: [{preset: discord, url: 'https://d.example/x', body: {a: b}}]", "use preset custom"),
        ("slack_configs: [{url: 'ftp://x'}]", "http(s)://"),
    ],
)
def test_a_bad_receiver_config_is_a_config_error_with_its_path(receiver: str, message: str) -> None:
    text = f"collectors: []\nalerts:\n  receiver: r\n  receivers:\n    - name: r\n      {receiver}\n"
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "m.yaml")
    shown = str(exc.value)
    assert "m.yaml:" in shown
    assert "alerts.receivers[0]" in shown
    assert message.split(": Value error, ")[-1] in shown


def test_a_fallback_message_says_which_sink_did_not_deliver_it() -> None:
    from mevwatch.alerts.outbox import fallback_payload
    from mevwatch.alerts.sinks._message import notification_title, plain_text

    alert: dict[str, Any] = {"status": "firing", "labels": {"alertname": "RpcEndpointDown", "host": "mev-1"},
             "annotations": {"summary": "endpoint dead", "runbook_url": "https://rb/#rpc-down"}}
    payload: dict[str, Any] = {"status": "firing", "groupLabels": {"alertname": "RpcEndpointDown"},
                               "alerts": [alert]}
    assert notification_title(payload) == "[FIRING:1] RpcEndpointDown on mev-1"
    moved = fallback_payload(payload, "backup", "pager/webhook/0", "HTTP 400: no")
    assert notification_title(moved) == "[FIRING:1] RpcEndpointDown on mev-1 (undelivered to pager/webhook/0)"
    assert "(runbook: https://rb/#rpc-down)" in plain_text(moved, 4000)
    assert payload["alerts"][0]["annotations"] == alert["annotations"]  # the original is left as it was
