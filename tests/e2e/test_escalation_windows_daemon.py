"""Escalation levels limited to time windows, in a real daemon: a page still firing escalates to the level
whose window is open now and not to the one whose window is closed (Alertmanager's time_intervals syntax)."""

from __future__ import annotations

from pathlib import Path

from tests.support.daemon import RunningDaemon
from tests.support.peers import free_port
from tests.support.screens import EXTERNAL_URL, HOST, screens_agree
from tests.support.webhook import WebhookReceiver

CONFIG = """collectors:
  - rpc: {{interval: 500ms, endpoints: [{{name: dead, url: 'http://127.0.0.1:{port}'}}]}}
alerts:
  host: {host}
  external_url: "{external_url}"
  startup_grace: 0s
  group_wait: 0s
  group_interval: 1s
  rule_overrides:
    RpcEndpointDown: {{for: 0s}}
  time_intervals:
    - name: every-day
      time_intervals: [{{weekdays: ["monday:sunday"]}}]
    - name: year-2000
      time_intervals: [{{years: ["2000"]}}]
  receivers:
    - name: pager
      webhook_configs: [{{url: "{pager}", timeout: 2s}}]
    - name: closed
      webhook_configs: [{{url: "{closed}", timeout: 2s}}]
    - name: open
      webhook_configs: [{{url: "{open}", timeout: 2s}}]
  receiver: pager
  escalation:
    - {{after: 1s, receiver: closed, active_time_intervals: [year-2000]}}
    - {{after: 2s, receiver: open, active_time_intervals: [every-day]}}
"""


def test_a_firing_page_escalates_only_to_the_level_whose_window_is_open(tmp_path: Path) -> None:
    pager, closed, opened = WebhookReceiver().start(), WebhookReceiver().start(), WebhookReceiver().start()
    try:
        text = CONFIG.format(port=free_port(), host=HOST, external_url=EXTERNAL_URL, pager=pager.url,
                             closed=closed.url, open=opened.url)
        with RunningDaemon(tmp_path, text) as d:
            screens_agree(d, pager, "RpcEndpointDown", endpoint="dead")
            got = opened.wait_delivered(1, timeout=30)  # after 2 s; its window (every day) is open
            assert {a["labels"]["alertname"] for r in got for a in r.json()["alerts"]} == {"RpcEndpointDown"}
            # the level due a second earlier has a closed window (the year 2000): it was never sent anything
            assert closed.requests == []
    finally:
        for receiver in (pager, closed, opened):
            receiver.stop()
