"""Every runbook link opens: a real daemon serves the runbooks at /runbooks, alerts link there by default
(external_url derived as Prometheus derives its own), and the landing page's links open from the page."""

from __future__ import annotations

import json
import re
import socket
import time
from html.parser import HTMLParser
from pathlib import Path

from mevwatch.daemon.config import load_config_text
from mevwatch.daemon.flags import Overrides
from mevwatch.runbookdoc import runbooks_html, section_titles
from tests.support.daemon import RunningDaemon
from tests.support.peers import free_port

CONFIG = """collectors:
  - rpc: {{interval: 500ms, endpoints: [{{name: dead, url: "http://127.0.0.1:{port}"}}]}}
alerts:
  startup_grace: 0s
  group_wait: 0s
  rule_overrides:
    RpcEndpointDown: {{for: 0s}}
"""


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for k, v in attrs:
            if k == "href" and v:
                self.hrefs.append(v)
            if k == "id" and v:
                self.ids.add(v)


def _parse(page: str) -> _Links:
    p = _Links()
    p.feed(page)
    return p


def test_the_links_default_to_this_daemon_and_follow_the_listen_flag() -> None:
    alerts = load_config_text("collectors: []\nalerts: {host: mev-host-1}\n").daemon.alerts
    assert (alerts.external_url, alerts.runbook_url) == ("http://mev-host-1:9717", "http://mev-host-1:9717/runbooks")
    assert alerts.export_runbook_url == "docs/runbooks.md"  # an exported rule file serves a fleet, not this host
    moved = Overrides(listen_addresses=("0.0.0.0:9800",)).apply(load_config_text("collectors: []\n")).daemon.alerts
    assert moved.runbook_url == f"http://{socket.gethostname()}:9800/runbooks"
    given = load_config_text("collectors: []\nalerts: {external_url: 'https://mev-1.example.org/'}\n").daemon.alerts
    assert given.runbook_url == "https://mev-1.example.org/runbooks"
    assert Overrides(listen_addresses=("127.0.0.1:9800",)).apply(
        load_config_text("collectors: []\nalerts: {external_url: 'https://mev-1.example.org/'}\n")
    ).daemon.alerts.external_url == "https://mev-1.example.org/"
    wiki = load_config_text("collectors: []\nalerts: {runbook_url: 'https://wiki/rb'}\n").daemon.alerts
    assert (wiki.runbook_url, wiki.export_runbook_url) == ("https://wiki/rb", "https://wiki/rb")


def test_the_runbooks_page_has_every_rules_anchor() -> None:
    alerts = load_config_text("collectors: []\n").daemon.alerts
    ids = _parse(runbooks_html()).ids
    missing = sorted({r.runbook for r in alerts.all_rules} - ids)
    assert not missing, missing
    assert set(section_titles()) <= ids
    assert "<table>" in runbooks_html()  # the runbook check table renders as a table, not as pipes


def test_a_firing_alerts_runbook_link_opens_from_the_landing_page_and_the_page(tmp_path: Path) -> None:
    with RunningDaemon(tmp_path, CONFIG.format(port=free_port())) as d:
        deadline = time.monotonic() + 20
        while True:
            alerts = json.loads(d.get("/api/v1/alerts"))["data"]["alerts"]
            hit = [a for a in alerts if a["labels"]["alertname"] == "RpcEndpointDown" and a["state"] == "firing"]
            if hit or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert hit, alerts
        [alert] = hit
        # the page carries an absolute link to this daemon (the external URL derived from the host and port)
        link = alert["annotations"]["runbook_url"]
        assert link == f"http://{alert['labels']['host']}:{d.port}/runbooks#rpc-down"
        assert alert["generatorURL"].startswith(f"http://{alert['labels']['host']}:{d.port}/#alert-")
        # the landing page links relative to itself, so it opens however the page was reached
        landing = _parse(d.get("/"))
        assert "/runbooks#rpc-down" in landing.hrefs
        assert "/runbooks" in landing.hrefs
        runbooks = d.get("/runbooks")
        ids = _parse(runbooks).ids
        for href in (h for h in landing.hrefs if h.startswith("/runbooks#")):
            assert href.split("#", 1)[1] in ids, href
        assert re.search(r'<a id="rpc-down"></a>(</p>)?\s*<h2>RPC endpoint down</h2>', runbooks)
