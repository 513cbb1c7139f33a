"""A notification a receiver gave up on reaches the fallback receiver in full, once, across a kill -9, and two
refusing receivers do not bounce it between them; the loss is a page of its own, told the same on the landing
page and in diagnose. A real daemon (a refused RPC port makes RpcEndpointDown fire) and real webhook receivers
answering 400 or 500."""

from __future__ import annotations

import html
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.daemon import RunningDaemon, sample_value
from tests.support.peers import free_port
from tests.support.screens import mevwatch_cli, screens_agree, verdicts_agree
from tests.support.webhook import WebhookReceiver, webhook_v4_problems

CONFIG = """collectors:
  - rpc: {{interval: 500ms, endpoints: [{{name: dead, url: "http://127.0.0.1:{port}"}}]}}
alerts:
  startup_grace: 0s
  group_wait: 0s
  group_interval: 1s
  external_url: "http://mev-host-1:9717"
  outbox: {{retry_initial: 200ms, retry_max: 500ms}}
  rule_overrides:
    RpcEndpointDown: {{for: 0s}}
  receivers:
    - name: pager
      webhook_configs: [{{url: "{pager}", timeout: 2s}}]
    - name: backup
      webhook_configs: [{{url: "{backup}", timeout: 2s}}]
  receiver: backup
  routes:
    - {{receiver: pager, matchers: ['alertname="RpcEndpointDown"']}}
"""

PAGER, BACKUP = "pager/webhook/0", "backup/webhook/0"


@contextmanager
def _receivers(pager_answers: list[int], backup_answers: list[int]
               ) -> Iterator[tuple[WebhookReceiver, WebhookReceiver]]:
    """The pager and the backup receiver, answering these statuses first (then 200)."""
    pager, backup = WebhookReceiver(), WebhookReceiver()
    pager.statuses.extend(pager_answers)
    backup.statuses.extend(backup_answers)
    pager.start()
    try:
        backup.start()
        try:
            yield pager, backup
        finally:
            backup.stop()
    finally:
        pager.stop()


def _alerts(receiver: WebhookReceiver, name: str, delivered: bool = True) -> list[tuple[dict[str, Any], Any]]:
    """(alert, the request it came in) for every alert called ``name`` the receiver got (or acknowledged)."""
    requests = receiver.delivered() if delivered else list(receiver.requests)
    return [(a, r) for r in requests for a in r.json()["alerts"] if a["labels"]["alertname"] == name]


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def _quiet(*receivers: WebhookReceiver, still: float = 3.0, timeout: float = 20.0) -> None:
    """Wait until no receiver got a request for ``still`` seconds (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while True:
        n = sum(len(r.requests) for r in receivers)
        if n != seen:
            seen, since = n, time.monotonic()
        elif time.monotonic() - since >= still:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still sending after {timeout}s: {[len(r.requests) for r in receivers]}")
        time.sleep(0.1)


def test_a_critical_alert_refused_with_400_reaches_the_fallback_receiver_in_full_once(tmp_path: Path) -> None:
    with _receivers([400] * 50, []) as (pager, backup), \
        RunningDaemon(tmp_path, CONFIG.format(port=free_port(), pager=pager.url, backup=backup.url)) as d:
        _wait(lambda: _alerts(backup, "RpcEndpointDown"), 20, "RpcEndpointDown resent to the backup")
        _quiet(pager, backup)
        [(alert, req)] = _alerts(backup, "RpcEndpointDown")  # once
        doc = req.json()
        assert webhook_v4_problems(doc) == []
        assert doc["receiver"] == "backup"
        assert doc["externalURL"] == "http://mev-host-1:9717"
        # what the pager would have shown, in full
        [(refused, _)] = _alerts(pager, "RpcEndpointDown", delivered=False)
        assert alert["labels"] == refused["labels"]
        assert alert["labels"]["endpoint"] == "dead"
        assert alert["labels"]["severity"] == "critical"
        assert (alert["startsAt"], alert["generatorURL"], alert["fingerprint"]) == (
            refused["startsAt"], refused["generatorURL"], refused["fingerprint"])
        assert alert["generatorURL"] == f"http://mev-host-1:9717/#alert-{alert['fingerprint']}"
        ann = alert["annotations"]
        assert ann["runbook_url"].endswith("#rpc-down")
        assert ann["silence"].startswith("mevwatch silence add")
        assert {k: v for k, v in ann.items() if not k.startswith("undelivered_")} == refused["annotations"]
        # and why it comes here
        assert ann["undelivered_to"] == PAGER
        assert "answered HTTP 400" in ann["undelivered_reason"]
        # the page about the loss: on the daemon's own screen and, through its own route, at the backup
        doc = json.loads(d.get("/api/v1/alerts"))
        [firing] = [a for a in doc["data"]["alerts"] if a["labels"]["alertname"] == "NotificationDeadLettered"]
        assert firing["state"] == "firing"
        assert firing["labels"]["severity"] == "critical"
        assert (firing["labels"]["sink"], firing["labels"]["lost"]) == (PAGER, 'RpcEndpointDown{endpoint="dead"}')
        [(page, _)] = _alerts(backup, "NotificationDeadLettered")
        assert page["labels"] == firing["labels"]
        assert 'RpcEndpointDown{endpoint="dead"}' in page["annotations"]["summary"]
        # the log names what was lost and where it went instead
        events = [json.loads(line) for line in d.log.read_text().splitlines() if line.startswith("{")]
        [dead] = [e for e in events if e.get("event") == "notification_dead_lettered" and e["sink"] == PAGER]
        assert dead["lost"] == 'RpcEndpointDown{endpoint="dead"}'
        assert dead["resent_to"] == [BACKUP]
        d.wait_value("mevwatch_notifications_dead_lettered_total", 1, sink=PAGER)
        # the loss on the on-call's other screens, told as the backup's page tells it: the landing page (its row,
        # the verdict) and diagnose (a line naming the sink and what was lost, and its exit code)
        seen = screens_agree(d, backup, "NotificationDeadLettered", sink=PAGER)
        assert seen.line["status"] == "CRIT"
        lost = 'lost=RpcEndpointDown{endpoint="dead"}'
        assert seen.line["value"].startswith(f"firing: !sink={PAGER},{lost}="), seen.line
        assert html.escape(lost) in seen.row
        assert seen.diagnose["status"] == "CRIT"
        [summary] = [ln for ln in seen.diagnose["lines"] if ln["check"] == f"NotificationDeadLettered {PAGER}"]
        assert summary["value"] == firing["annotations"]["summary"]
        metrics = d.get()
        assert sample_value(metrics, "mevwatch_notifications_dead_lettered_total", sink=BACKUP) == 0
        # one copy queued for the backup, none for the pager
        assert sample_value(metrics, "mevwatch_notifications_resent_to_fallback_total", sink=BACKUP) == 1
        assert sample_value(metrics, "mevwatch_notifications_resent_to_fallback_total", sink=PAGER) == 0


def test_two_receivers_refusing_with_400_do_not_bounce_a_dead_letter(tmp_path: Path) -> None:
    with _receivers([400] * 50, [400] * 50) as (pager, backup), \
        RunningDaemon(tmp_path, CONFIG.format(port=free_port(), pager=pager.url, backup=backup.url)) as d:
        def lost_on(sink: str) -> bool:
            doc = json.loads(d.get("/api/v1/alerts"))
            return any(a["labels"]["alertname"] == "NotificationDeadLettered" and a["labels"]["sink"] == sink
                       for a in doc["data"]["alerts"])

        _wait(lambda: lost_on(PAGER) and lost_on(BACKUP), 20, "both losses paged")
        _quiet(pager, backup)
        # the pager lost the endpoint's page; the backup lost its copy: each is named once, on the screen
        doc = json.loads(d.get("/api/v1/alerts"))
        lost = sorted((a["labels"]["sink"], a["labels"]["lost"]) for a in doc["data"]["alerts"]
                      if a["labels"]["alertname"] == "NotificationDeadLettered")
        assert lost == [(BACKUP, 'RpcEndpointDown{endpoint="dead"}'), (PAGER, 'RpcEndpointDown{endpoint="dead"}')]
        # the backup got the endpoint's page once, as the pager's fallback, and never sent it back
        assert len(_alerts(backup, "RpcEndpointDown", delivered=False)) == 1
        assert len(_alerts(pager, "RpcEndpointDown", delivered=False)) == 1
        for receiver, own in ((pager, PAGER), (backup, BACKUP)):
            for r in receiver.requests:
                assert webhook_v4_problems(r.json()) == []
                assert all(a["annotations"].get("undelivered_to") != own for a in r.json()["alerts"])
        # a few requests each, then silence: no loop
        assert len(pager.requests) <= 3, [r.json()["alerts"] for r in pager.requests]
        assert len(backup.requests) <= 3, [r.json()["alerts"] for r in backup.requests]
        # both losses on / and in diagnose, though no receiver took the page about them
        assert verdicts_agree(d) == "CRIT"
        landing = d.get("/")
        diagnose = json.loads(mevwatch_cli(d, "diagnose", "--json", "--url", d.url).stdout)
        [line] = [ln for ln in diagnose["lines"] if ln["check"].startswith("NotificationDeadLettered (")]
        assert line["status"] == "CRIT"
        for a in doc["data"]["alerts"]:
            if a["labels"]["alertname"] == "NotificationDeadLettered":
                assert f'<tr id="alert-{a["fingerprint"]}">' in landing
                assert f"sink={a['labels']['sink']}" in line["value"]
        metrics = d.get()
        assert sample_value(metrics, "mevwatch_alert_outbox_depth", sink=PAGER) in (None, 0)
        assert sample_value(metrics, "mevwatch_alert_outbox_depth", sink=BACKUP) in (None, 0)


def test_a_fallback_queued_before_kill_9_is_delivered_once_after_the_restart(tmp_path: Path) -> None:
    with _receivers([400] * 50, [500] * 10_000) as (pager, backup):  # the backup is down until the restart
        text = CONFIG.format(port=free_port(), pager=pager.url, backup=backup.url)
        with RunningDaemon(tmp_path, text) as d:
            # dead-lettered at the pager, and the fallback tried (and failed) at the backup
            _wait(lambda: _alerts(backup, "RpcEndpointDown", delivered=False), 20, "fallback tried")
            d.wait_value("mevwatch_notifications_dead_lettered_total", 1, sink=PAGER)
            assert d.proc is not None
            os.killpg(d.proc.pid, signal.SIGKILL)
            d.proc.wait(10)
        tried = {r.headers["X-Mevwatch-Notification-Id"] for _, r in _alerts(backup, "RpcEndpointDown", False)}
        assert len(tried) == 1
        backup.statuses.clear()  # the backup is back
        paged_before = len(_alerts(pager, "RpcEndpointDown", delivered=False))
        with RunningDaemon(tmp_path, text) as d:
            _wait(lambda: _alerts(backup, "RpcEndpointDown"), 20, "fallback delivered after the restart")
            _quiet(pager, backup)
            [(alert, req)] = _alerts(backup, "RpcEndpointDown")
            assert req.headers["X-Mevwatch-Notification-Id"] in tried  # the entry written before the kill
            assert alert["annotations"]["undelivered_to"] == PAGER
            assert alert["annotations"]["runbook_url"].endswith("#rpc-down")
            # the pager is not asked again (its group was sent), so nothing is lost twice
            assert len(_alerts(pager, "RpcEndpointDown", delivered=False)) == paged_before == 1
            assert sample_value(d.get(), "mevwatch_alert_outbox_depth", sink=BACKUP) in (None, 0)


def test_a_reload_that_removes_a_receiver_sends_what_waited_for_it_to_the_fallback(tmp_path: Path) -> None:
    """The pager is down (HTTP 500, retried) when a reload removes it: what waited in its outbox reaches the
    default receiver in full, marked as undelivered to the pager, and is counted; it is not dropped."""
    with _receivers([500] * 10_000, []) as (pager, backup):
        text = CONFIG.format(port=free_port(), pager=pager.url, backup=backup.url)
        with RunningDaemon(tmp_path, text) as d:
            _wait(lambda: _alerts(pager, "RpcEndpointDown", delivered=False), 20, "the pager tried")
            d.wait_value("mevwatch_alert_outbox_depth", 1, sink=PAGER)
            assert not [a for a, _ in _alerts(backup, "RpcEndpointDown") if "undelivered_to" in a["annotations"]]
            without_pager = text.replace(f'    - name: pager\n      webhook_configs: [{{url: "{pager.url}", '
                                         'timeout: 2s}]\n', "")
            without_pager = without_pager.split("  routes:\n")[0]
            assert "pager" not in without_pager
            d.config.write_text(without_pager)
            assert d.proc is not None
            d.proc.send_signal(signal.SIGHUP)

            def resent() -> list[dict[str, Any]]:
                return [a for a, _ in _alerts(backup, "RpcEndpointDown") if "undelivered_to" in a["annotations"]]

            _wait(resent, 20, "the pager's notification resent to the backup")
            _quiet(backup, still=2.0)
            [alert] = resent()
            ann = alert["annotations"]
            assert ann["undelivered_to"] == PAGER
            assert ann["undelivered_reason"] == "the sink is no longer configured"
            assert ann["runbook_url"].endswith("#rpc-down")
            assert alert["labels"]["endpoint"] == "dead"
            d.wait_value("mevwatch_notifications_resent_to_fallback_total", 1, sink=BACKUP)
            events = [json.loads(line) for line in d.log.read_text().splitlines() if line.startswith("{")]
            [dead] = [e for e in events if e.get("event") == "notification_dead_lettered" and e["sink"] == PAGER]
            assert dead["resent_to"] == [BACKUP]
            assert dead["lost"] == 'RpcEndpointDown{endpoint="dead"}'
