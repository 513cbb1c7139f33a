"""The on-call's three screens of one incident, read from a real running daemon, and checked to agree.

A firing alert is told three ways: the page a receiver gets (Alertmanager webhook JSON), the line
``mevwatch diagnose --json`` prints for its rule, and the landing page ``/`` (plus ``/api/v1/alerts``,
which the page is drawn from). ``screens_agree`` waits until the alert fires and has been paged, then
asserts the three say the same thing, and returns them so a test can check its incident's own facts::

    with paged_daemon(tmp_path, COLLECTORS, instant=["RpcEndpointDown"]) as (daemon, hook):
        seen = screens_agree(daemon, hook, "RpcEndpointDown", endpoint="dead")
        assert seen.page["annotations"]["summary"] == ...

Numbers inside texts may move between the moment of the page and the moment a screen is read (an age
grows, a value is re-rendered at each evaluation), so texts are compared with their numbers masked.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from mevwatch.runbookdoc import section_titles
from tests.support.daemon import RunningDaemon
from tests.support.peers import REPO
from tests.support.webhook import WebhookReceiver

__all__ = [
    "EXTERNAL_URL",
    "Screens",
    "firing_alert",
    "headless_chromium",
    "mevwatch_cli",
    "paged_daemon",
    "pager_alerts_config",
    "pages_of",
    "screens_agree",
    "screens_cleared",
]

EXTERNAL_URL = "http://mev-host-1:9717"
HOST = "mev-host-1"
SEVERITY_STATUS = {"critical": "CRIT", "warning": "WARN", "info": "INFO"}
_HIDDEN_LABELS = ("alertname", "severity", "host")
# a number, or a humanized duration whose units change as it moves ("2m20s", "980ms")
_NUMBER = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|[dhms](?![a-z]))?)+")


@dataclass(frozen=True, slots=True)
class Screens:
    page: dict[str, Any]  # the alert as the receiver got it (one entry of the webhook's "alerts")
    notification: dict[str, Any]  # the whole webhook message that carried it
    line: dict[str, Any]  # the `mevwatch diagnose --json` line of its rule
    diagnose: dict[str, Any]  # the whole diagnose document ({"status", "lines"})
    alert: dict[str, Any]  # its entry in /api/v1/alerts
    landing: str  # the landing page's HTML
    row: str  # the alert's row on the landing page


def pager_alerts_config(hook: WebhookReceiver, instant: Sequence[str] = (), extra: str = "") -> str:
    """An ``alerts:`` section paging ``hook`` at once (no group wait, 1 s group interval), with the rules in
    ``instant`` firing without their ``for``; ``extra`` is more YAML indented under ``alerts:``."""
    overrides = "".join(f"\n    {name}: {{for: 0s}}" for name in instant)
    return (
        "alerts:\n"
        f"  host: {HOST}\n"
        "  startup_grace: 0s\n"
        "  group_wait: 0s\n"
        "  group_interval: 1s\n"
        f"  external_url: \"{EXTERNAL_URL}\"\n"
        "  receivers:\n"
        f"    - name: pager\n      webhook_configs: [{{url: \"{hook.url}\", timeout: 2s}}]\n"
        "  receiver: pager\n"
        + (f"  rule_overrides:{overrides}\n" if overrides else "")
        + extra
    )


@contextmanager
def paged_daemon(tmp: Path, collectors: str, instant: Sequence[str] = (), extra: str = "",
                 env: dict[str, str] | None = None) -> Iterator[tuple[RunningDaemon, WebhookReceiver]]:
    """A running daemon with the ``collectors:`` section given, paging a fresh webhook receiver."""
    hook = WebhookReceiver().start()
    try:
        with RunningDaemon(tmp, collectors.rstrip("\n") + "\n" + pager_alerts_config(hook, instant, extra),
                           env=env) as daemon:
            yield daemon, hook
    finally:
        hook.stop()


def headless_chromium(profile: Path) -> list[str] | None:
    """The argv of Debian's chromium, headless with JavaScript off (through the profile's content setting:
    --blink-settings=scriptEnabled=false also stops --dump-dom and --screenshot from producing anything);
    None where it is not installed (.ci/install-deps installs it)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        return None
    (profile / "Default").mkdir(parents=True, exist_ok=True)
    (profile / "Default" / "Preferences").write_text(
        json.dumps({"profile": {"default_content_setting_values": {"javascript": 2}}}))
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
            f"--user-data-dir={profile}"]


def mevwatch_cli(daemon: RunningDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    """``mevwatch ARGS --config <the daemon's config>``, as the on-call would run it on the host."""
    return subprocess.run([sys.executable, "-m", "mevwatch", *args, "--config", str(daemon.config)],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=daemon.env)


def _matches(labels: dict[str, str], alertname: str, want: dict[str, str]) -> bool:
    return labels.get("alertname") == alertname and all(labels.get(k) == v for k, v in want.items())


def firing_alert(daemon: RunningDaemon, alertname: str, timeout: float = 30.0, **labels: str) -> dict[str, Any]:
    """Wait until /api/v1/alerts shows ``alertname{labels}`` firing; its entry."""
    deadline = time.monotonic() + timeout
    while True:
        doc = json.loads(daemon.get("/api/v1/alerts"))
        hits = [a for a in doc["data"]["alerts"] if a["state"] == "firing" and _matches(a["labels"], alertname, labels)]
        if hits:
            return dict(hits[0])
        if time.monotonic() > deadline:
            shown = [(a["labels"], a["state"]) for a in doc["data"]["alerts"]]
            raise AssertionError(f"{alertname}{labels} not firing after {timeout}s: {shown}\n"
                                 + daemon.log.read_text(errors="replace")[-3000:])
        time.sleep(0.2)


def _paged(hook: WebhookReceiver, fingerprint: str, timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        for req in reversed(hook.delivered()):
            doc = req.json()
            for a in doc["alerts"]:
                if a["fingerprint"] == fingerprint and a["status"] == "firing":
                    return dict(a), dict(doc)
        if time.monotonic() > deadline:
            got = [(a["labels"], a["status"]) for r in hook.delivered() for a in r.json()["alerts"]]
            raise AssertionError(f"alert {fingerprint} not paged within {timeout}s; the receiver got {got}")
        time.sleep(0.1)


def pages_of(hook: WebhookReceiver, alertname: str, **labels: str) -> list[dict[str, Any]]:
    """Every page of ``alertname{labels}`` the receiver got, in the order it got them (an alert once per
    notification that carried it), each with ``received_at``: the receiver's time.monotonic() on arrival."""
    return [{**a, "received_at": req.at} for req in hook.delivered() for a in req.json()["alerts"]
            if _matches(a["labels"], alertname, labels)]


def masked(text: str) -> str:
    """``text`` with every number replaced by ``#``: the same statement, whatever the value is now."""
    return _NUMBER.sub("#", text)


def _anchor(url: str) -> str:
    assert "#" in url, f"runbook link without an anchor: {url!r}"
    return url.rsplit("#", 1)[1]


def _diagnose_line(daemon: RunningDaemon, alertname: str, alert: dict[str, Any],
                   timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The diagnose line of ``alertname`` once it names ``alert``'s series as firing (it may still be catching up)."""
    deadline = time.monotonic() + timeout
    while True:
        proc = mevwatch_cli(daemon, "diagnose", "--json", "--url", daemon.url)
        doc = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {"lines": []}
        lines = [ln for ln in doc["lines"] if ln["check"].startswith(f"{alertname} (")]
        # the labels that name the series, but those the rule's own matchers fix (its check shows them)
        naming = [f"{k}={v}" for k, v in alert["labels"].items() if k not in _HIDDEN_LABELS
                  and not any(f'{k}="{v}"' in ln["check"] for ln in lines)]
        if len(lines) == 1 and lines[0]["value"].startswith("firing: ") and (
                not naming or any(n in lines[0]["value"] for n in naming)):
            assert proc.returncode == {"CRIT": 2, "WARN": 1}.get(doc["status"], 0), proc.stderr
            return dict(lines[0]), dict(doc)
        if time.monotonic() > deadline:
            raise AssertionError(f"diagnose shows no firing line of {alertname} naming {naming}: "
                                 f"{lines}\n{proc.stderr[-2000:]}")
        time.sleep(0.3)


def screens_agree(daemon: RunningDaemon, hook: WebhookReceiver, alertname: str, timeout: float = 30.0,
                  **labels: str) -> Screens:
    """Wait until ``alertname{labels}`` fires and is paged; assert the page, diagnose and ``/`` agree on it."""
    alert = firing_alert(daemon, alertname, timeout, **labels)
    fp = alert["fingerprint"]
    page, notification = _paged(hook, fp, timeout)
    severity = alert["labels"]["severity"]
    anchor = _anchor(alert["annotations"]["runbook_url"])

    # the page: the same alert, the same labels and texts, a link back and a silence command
    assert page["labels"] == alert["labels"], (page["labels"], alert["labels"])
    assert page["labels"]["severity"] in SEVERITY_STATUS
    assert anchor in section_titles(), f"docs/runbooks.md has no anchor {anchor!r}"
    assert page["annotations"]["runbook_url"] == alert["annotations"]["runbook_url"]
    for key in ("summary", "description"):
        assert masked(page["annotations"].get(key, "")) == masked(alert["annotations"].get(key, "")), key
    assert page["annotations"]["summary"], "a page without a summary"
    assert page["generatorURL"] == alert["generatorURL"] == f"{EXTERNAL_URL}/#alert-{fp}"
    assert notification["externalURL"] == EXTERNAL_URL
    assert page["annotations"]["silence"] == alert["silence"]
    assert f"-m 'alertname=\"{alertname}\"'" in alert["silence"]
    assert page["startsAt"] == alert["startsAt"]

    # diagnose asks the running daemon: the rule's line is firing with the alert's severity, on its series
    line, diag = _diagnose_line(daemon, alertname, alert, timeout)
    assert line["status"] == SEVERITY_STATUS[severity], line
    assert line["runbook"] == line["section"] == anchor, line
    assert any(ln["value"] == f"the running daemon at {daemon.url}" for ln in diag["lines"])
    if severity != "info":  # an info alert tells, it does not make the host WARN
        assert diag["status"] != "OK"

    # the landing page: a verdict that is not OK, the alert's row with its summary, runbook link and silence
    landing = daemon.get("/")
    assert "<script" not in landing
    verdict = re.search(r'id="verdict">([A-Z]+)<', landing)
    assert verdict is not None, "no verdict on /"
    if severity != "info":
        assert verdict.group(1) != "OK", verdict.group(1)
    if alert["status"]["state"] == "active" and severity == "critical":
        assert verdict.group(1) == "CRIT", verdict.group(1)
    row_match = re.search(rf'<tr id="alert-{re.escape(fp)}">.*?</tr>', landing)
    assert row_match is not None, f"no row for alert {fp} on /"
    row = row_match.group(0)
    assert f"<b>{html.escape(alertname)}</b>" in row
    assert masked(html.escape(page["annotations"]["summary"])) in masked(row)
    # the runbook link opens from the page (it is relative when it points into this mevwatch)
    href = re.search(r'<a href="([^"]*)">runbook</a>', row)
    assert href is not None, row
    link = html.unescape(href.group(1))
    assert urljoin(EXTERNAL_URL + "/", link) == alert["annotations"]["runbook_url"], link
    if link.startswith("/"):
        assert f'id="{anchor}"' in daemon.get(link.split("#", 1)[0]), link
    assert html.escape(alert["silence"]) in row
    assert landing.index('id="verdict"') < landing.index(f'id="alert-{fp}"') < landing.index("<h2>Collectors")
    return Screens(page, notification, line, diag, alert, landing, row)


def screens_cleared(daemon: RunningDaemon, hook: WebhookReceiver, alertname: str, timeout: float = 30.0,
                    **labels: str) -> dict[str, Any]:
    """Wait until ``alertname{labels}`` is resolved and paged as such; assert /api/v1/alerts, the landing page
    and diagnose no longer show it. Returns the resolved page."""
    deadline = time.monotonic() + timeout
    while True:
        alerts = [a for a in json.loads(daemon.get("/api/v1/alerts"))["data"]["alerts"]
                  if _matches(a["labels"], alertname, labels)]
        resolved = [a for r in hook.delivered() for a in r.json()["alerts"]
                    if a["status"] == "resolved" and _matches(a["labels"], alertname, labels)]
        if not alerts and resolved:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{alertname}{labels} not cleared after {timeout}s: shown {alerts}, "
                                 f"{len(resolved)} resolved page(s)")
        time.sleep(0.2)
    rows = re.findall(rf'<tr id="alert-[^"]*">(?:(?!</tr>).)*<b>{re.escape(alertname)}</b>.*?</tr>', daemon.get("/"))
    assert not [r for r in rows if all(f"{k}={v}" in html.unescape(r) for k, v in labels.items())], rows
    doc = json.loads(mevwatch_cli(daemon, "diagnose", "--json", "--url", daemon.url).stdout)
    for ln in doc["lines"]:
        if ln["check"].startswith(f"{alertname} (") and ln["value"].startswith("firing: "):
            assert not all(f"{k}={v}" in ln["value"] for k, v in labels.items()), ln
    return dict(resolved[-1])
