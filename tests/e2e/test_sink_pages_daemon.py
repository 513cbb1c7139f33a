"""Every page links back to the alert on mevwatch's page and carries the command that silences it.

A real daemon (a refused RPC port makes RpcEndpointDown fire) pages PagerDuty, Slack, Telegram, Discord,
Matrix and a custom chat webhook (local stand-ins that check each request against the service's documented
format), mail (aiosmtpd), a webhook and its log. Each page is read as its service shows it: its link back is
opened on the running daemon and answers 200 with the alert's row, and its silence command is the one the
daemon shows for the alert, whole, in the service's code markup; run from the page, it silences the alert.
"""

from __future__ import annotations

import json
import re
import shlex
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.daemon import RunningDaemon
from tests.support.peers import free_port
from tests.support.screens import firing_alert, mevwatch_cli
from tests.support.services import MATRIX_TOKEN, PD_KEY, TELEGRAM_TOKEN, FakeServices, Shown, shown
from tests.support.smtp import Inbox, mail_shown, start_smtp
from tests.support.webhook import WebhookReceiver

CONFIG = """collectors:
  - rpc: {{interval: 500ms, endpoints: [{{name: dead, url: "http://127.0.0.1:{dead}"}}]}}
alerts:
  host: mev-host-1
  startup_grace: 0s
  group_wait: 0s
  group_interval: 1s
  external_url: "{external_url}"
  rule_overrides:
    RpcEndpointDown: {{for: 0s}}
  receiver: pager
  receivers:
    - name: pager
      log_configs: [{{level: warning}}]
      webhook_configs: [{{url: "{webhook}", timeout: 2s}}]
      email_configs: [{{to: [oncall@example.org], from: mevwatch@example.org, smarthost: "127.0.0.1:{smtp}",
                        tls: none, timeout: 2s}}]
      pagerduty_configs: [{{routing_key: {pd_key}, url: "{services}/v2/enqueue", timeout: 2s}}]
      slack_configs: [{{url: "{services}/services/T000/B000/XXXX", timeout: 2s}}]
      chat_configs:
        - {{preset: telegram, url: "{services}/bot{telegram_token}/sendMessage", chat_id: "-100123", timeout: 2s}}
        - {{preset: discord, url: "{services}/api/webhooks/42/discord-token", timeout: 2s}}
        - {{preset: matrix, url: "{services}/_matrix/client/v3/rooms/!room:example/send/m.room.message",
            bearer_token: {matrix_token}, timeout: 2s}}
        - {{preset: custom, url: "{services}/hooks/ops", body: {{text: "$text", id: "$notification_id"}}, timeout: 2s}}
"""


@dataclass
class Paged:
    daemon: RunningDaemon
    services: FakeServices
    inbox: Inbox
    hook: WebhookReceiver
    alert: dict[str, Any]  # RpcEndpointDown's entry in the daemon's /api/v1/alerts


@pytest.fixture(scope="module")
def paged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Paged]:
    tmp = tmp_path_factory.mktemp("sink-pages")
    services, inbox, hook = FakeServices().start(), Inbox(), WebhookReceiver().start()
    smtp_port = free_port()
    smtp = start_smtp(inbox, smtp_port)
    try:
        daemon = RunningDaemon(tmp, "")
        # the link back is the address this daemon is reached at, set in the config as an operator sets it
        daemon.config.write_text(CONFIG.format(
            dead=free_port(), external_url=daemon.url, webhook=hook.url, smtp=smtp_port, pd_key=PD_KEY,
            services=services.url("").rstrip("/"), telegram_token=TELEGRAM_TOKEN, matrix_token=MATRIX_TOKEN))
        with daemon:
            alert = firing_alert(daemon, "RpcEndpointDown", endpoint="dead")
            yield Paged(daemon, services, inbox, hook, alert)
    finally:
        smtp.stop()
        hook.stop()
        services.stop()


def _wait(what: str, get: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = get()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        time.sleep(0.1)


def _page(paged: Paged, service: str) -> Shown:
    """What the service shows of the first page of the alert it accepted (after checking it against the
    service's documented format: a request that broke it was answered 400 and is not counted)."""
    reqs = _wait(f"{service} page", lambda: paged.services.of(service))
    refused = [r.problems for r in paged.services.of(service, ok_only=False) if r.problems]
    assert not refused, refused
    return shown(service, reqs[0].body)


def _opens_the_alert(paged: Paged, link: str) -> None:
    """``link`` answers 200 from the running daemon with the alert's row on its page."""
    fp = paged.alert["fingerprint"]
    assert link == f"{paged.daemon.url}/#alert-{fp}", link
    with urllib.request.urlopen(link, timeout=5) as resp:
        assert resp.status == 200
        page = resp.read().decode()
    row = re.search(rf'<tr id="alert-{re.escape(fp)}">.*?</tr>', page, re.S)
    assert row is not None, f"{link} shows no row of the alert"
    assert "<b>RpcEndpointDown</b>" in row.group(0)


def _carries_the_way_back(paged: Paged, page: Shown) -> None:
    link = paged.alert["generatorURL"]
    assert link in page.links, (link, page.links)
    _opens_the_alert(paged, link)
    # the exact command the daemon shows for this alert, whole and copyable (in the service's code markup)
    assert paged.alert["silence"] in page.code, (paged.alert["silence"], page.code)


@pytest.mark.parametrize("service", ["pagerduty", "slack", "telegram", "discord", "matrix", "custom"])
def test_a_page_through_each_paging_and_chat_service_links_the_alert_and_silences_it(
        paged: Paged, service: str) -> None:
    _carries_the_way_back(paged, _page(paged, service))


def test_pagerduty_links_the_alert_before_the_runbook_and_the_incident_to_mevwatch(paged: Paged) -> None:
    [req] = paged.services.of("pagerduty")[:1]
    links = req.body["links"]
    assert links[0] == {"href": paged.alert["generatorURL"],
                        "text": "mevwatch: [FIRING] " + paged.alert["annotations"]["summary"]}
    assert links[1]["text"] == "Runbook: RpcEndpointDown"
    assert req.body["client_url"] == paged.daemon.url
    details = req.body["payload"]["custom_details"]
    assert (details["open_in_mevwatch"], details["silence"]) == ([paged.alert["generatorURL"]],
                                                                 [paged.alert["silence"]])


def test_a_mail_links_the_alert_and_silences_it_in_both_parts(paged: Paged) -> None:
    [msg, *_] = paged.inbox.wait(1)
    plain, rich = mail_shown(msg)
    _carries_the_way_back(paged, plain)
    _carries_the_way_back(paged, rich)


def test_the_webhook_and_the_log_carry_the_link_and_the_command(paged: Paged) -> None:
    doc = paged.hook.wait_delivered(1)[0].json()
    [page] = [a for a in doc["alerts"] if a["fingerprint"] == paged.alert["fingerprint"]]
    assert doc["externalURL"] == paged.daemon.url
    _opens_the_alert(paged, page["generatorURL"])
    assert page["annotations"]["silence"] == paged.alert["silence"]
    events = _wait("alert_notification log line", lambda: [
        json.loads(line) for line in paged.daemon.log.read_text(errors="replace").splitlines()
        if '"alert_notification"' in line])
    assert (events[0]["generator_url"], events[0]["silence"]) == (paged.alert["generatorURL"],
                                                                  paged.alert["silence"])


def test_the_command_copied_from_a_page_silences_the_alert(paged: Paged) -> None:
    page = _page(paged, "telegram")
    [command] = [c for c in page.code if c.startswith("mevwatch silence add")]
    argv = shlex.split(command)
    assert argv[:3] == ["mevwatch", "silence", "add"]
    done = mevwatch_cli(paged.daemon, *argv[1:])
    assert done.returncode == 0, done.stderr
    fp = paged.alert["fingerprint"]

    def held() -> list[dict[str, Any]]:
        alerts = json.loads(paged.daemon.get("/api/v1/alerts"))["data"]["alerts"]
        return [a for a in alerts if a["fingerprint"] == fp and a["status"]["silencedBy"]]

    [alert] = _wait("silence holding the alert", held)
    # it holds this alert by every label that names it (all but severity), not a wider set
    [by] = alert["silencing"]["by"]
    assert sorted(by["matchers"]) == sorted(f'{k}="{v}"' for k, v in paged.alert["labels"].items()
                                            if k != "severity")
