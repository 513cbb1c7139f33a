"""The on-call's three screens of one incident, read from a real running daemon, and checked to agree.

A firing alert is told three ways: the page a receiver gets (Alertmanager webhook JSON), the line
``mevwatch diagnose --json`` prints for its rule, and the landing page ``/`` (plus ``/api/v1/alerts``,
which the page is drawn from). ``screens_agree`` waits until the alert fires and has been paged, then
asserts the three say the same thing, and returns them so a test can check its incident's own facts::

    with paged_daemon(tmp_path, COLLECTORS, instant=["RpcEndpointDown"]) as (daemon, hook):
        seen = screens_agree(daemon, hook, "RpcEndpointDown", endpoint="dead")
        assert seen.page["annotations"]["summary"] == ...

Numbers are compared too. A text is its rule's template filled in: what the template fills from labels, the
threshold, ``for`` and the window, and its own words and numbers, are the same on every screen, exactly. Only
what it fills from the value (``{{ $value }}``, ``{{ $metric.NAME }}``) may move between the page and a later
read; and those too are compared exactly between /api/v1/alerts, ``/`` and diagnose once they are read while
the alert's texts hold still (read before and after the others, unchanged). Each screen's host verdict is the
same at such a moment, and so are its counts of firing and pending alerts.
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

from mevwatch.alerts.api import VERDICT_RANK, rule_condition
from mevwatch.alerts.rule import Rule
from mevwatch.alerts.templates import render_template
from mevwatch.daemon.config import load_config
from mevwatch.daemon.diagnose import series_text
from mevwatch.runbookdoc import section_titles
from tests.support.daemon import RunningDaemon
from tests.support.peers import REPO
from tests.support.webhook import WebhookReceiver

__all__ = ["EXTERNAL_URL", "Screens", "firing_alert", "headless_chromium", "masked", "mevwatch_cli", "paged_daemon",
           "pager_alerts_config", "pages_of", "screens_agree", "screens_cleared", "stable_text", "verdicts_agree"]

EXTERNAL_URL = "http://mev-host-1:9717"
HOST = "mev-host-1"
SEVERITY_STATUS = {"critical": "CRIT", "warning": "WARN", "info": "INFO"}
_HIDDEN_LABELS = ("alertname", "severity", "host")
# a number, or a humanized duration whose units change as it moves ("2m20s", "980ms")
_NUMBER = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|[dhms](?![a-z]))?)+")
_TEMPLATE = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_MOVES = ("$value", "$metric.")  # what a template fills from the value: it moves between evaluations
_STILL_TRIES = 6  # reads for a moment when the alert's texts hold still


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
                 env: dict[str, str] | None = None,
                 wrapper: Sequence[str] = ()) -> Iterator[tuple[RunningDaemon, WebhookReceiver]]:
    """A running daemon with the ``collectors:`` section given, paging a fresh webhook receiver; run through
    ``wrapper`` (e.g. ``nsenter ... --``) when given, as ``mevwatch_cli`` then runs the CLI."""
    hook = WebhookReceiver().start()
    try:
        daemon = RunningDaemon(tmp, collectors.rstrip("\n") + "\n" + pager_alerts_config(hook, instant, extra),
                               env=env)
        daemon.argv = [*wrapper, *daemon.argv]
        with daemon:
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
    """``mevwatch ARGS --config <the daemon's config>``, as the on-call would run it on the host: where the
    daemon runs (a daemon started through a wrapper such as ``nsenter ... --`` has its CLI run through it too)."""
    wrapper = daemon.argv[:daemon.argv.index(sys.executable)] if sys.executable in daemon.argv else []
    return subprocess.run([*wrapper, sys.executable, "-m", "mevwatch", *args, "--config", str(daemon.config)],
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
    """``text`` with every number replaced by ``#``: the same statement, whatever the value is now (for texts
    without a template, such as a silence's age; an alert's texts are compared with ``stable_text``)."""
    return _NUMBER.sub("#", text)


def _rule(daemon: RunningDaemon, alertname: str) -> Rule | None:
    """The rule as the daemon runs it (defaults, files, inline rules and overrides merged)."""
    cfg = load_config(daemon.config, env=daemon.env)
    return next((r for r in cfg.daemon.alerts.all_rules if r.name == alertname), None)


def stable_text(rule: Rule | None, key: str, labels: dict[str, str]) -> re.Pattern[str]:
    """What every screen must show for annotation ``key`` of ``rule``'s alert with ``labels``: the template with
    its labels, threshold, ``for`` and window filled in exactly, and what it fills from the value left open.
    Without the rule (an alert no rule of the config raises), any text."""
    template = rule.texts.get(key, "") if rule is not None else None
    if template is None:
        return re.compile(".*", re.DOTALL)
    parts, pos = [], 0
    for m in _TEMPLATE.finditer(template):
        parts.append(re.escape(template[pos:m.start()]))
        expr = m.group(0)
        if any(x in expr for x in _MOVES):
            parts.append("(.*?)")
        else:
            assert rule is not None
            parts.append(re.escape(render_template(expr, labels, 0.0, None, rule.threshold, rule.for_,
                                                   window=rule.text_window)))
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts), re.DOTALL)


def _says(pattern: re.Pattern[str], text: str, where: str) -> None:
    assert pattern.fullmatch(text), f"{where} says {text!r}, not what its template says: {pattern.pattern!r}"


def _anchor(url: str) -> str:
    assert "#" in url, f"runbook link without an anchor: {url!r}"
    return url.rsplit("#", 1)[1]


def _diagnose(daemon: RunningDaemon) -> tuple[dict[str, Any], int]:
    proc = mevwatch_cli(daemon, "diagnose", "--json", "--url", daemon.url)
    doc = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {"lines": [], "status": None}
    if doc["status"] is not None:  # the exit code tells the verdict the document does
        assert proc.returncode == {"CRIT": 2, "WARN": 1}.get(doc["status"], 0), (doc["status"], proc.returncode)
    return doc, proc.returncode


def _diagnose_line(daemon: RunningDaemon, alertname: str, alert: dict[str, Any],
                   timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The diagnose line of ``alertname`` once it names ``alert``'s series as firing (it may still be catching up)."""
    deadline = time.monotonic() + timeout
    while True:
        doc, _ = _diagnose(daemon)
        lines = [ln for ln in doc["lines"] if ln["check"].startswith(f"{alertname} (")]
        # the labels that name the series, but those the rule's own matchers fix (its check shows them)
        naming = [f"{k}={v}" for k, v in alert["labels"].items() if k not in _HIDDEN_LABELS
                  and not any(f'{k}="{v}"' in ln["check"] for ln in lines)]
        if len(lines) == 1 and lines[0]["value"].startswith("firing: ") and (
                not naming or any(n in lines[0]["value"] for n in naming)):
            return dict(lines[0]), dict(doc)
        if time.monotonic() > deadline:
            raise AssertionError(f"diagnose shows no firing line of {alertname} naming {naming}: {lines}")
        time.sleep(0.3)


def _landing_verdict(landing: str) -> tuple[str, str]:
    """The landing page's verdict and the line that says why."""
    m = re.search(r'id="verdict">([A-Z]+)</span> ([^<]*)</p>', landing)
    assert m is not None, "no verdict on /"
    return m.group(1), html.unescape(m.group(2))


def _counts(alerts: list[dict[str, Any]]) -> str:
    firing = sum(1 for a in alerts if a["state"] == "firing")
    return f"{firing} firing.*, {len(alerts) - firing} pending alert"


def verdicts_agree(daemon: RunningDaemon, tries: int = _STILL_TRIES) -> str:
    """The host's verdict, once ``/`` and ``mevwatch diagnose`` (status and exit code) were read at a moment when
    what counts in it held still (the alerts that count, and what they count for, the same before and after):
    they must say the same; and ``/`` must count the alerts /api/v1/alerts lists when none moved at all. Returns
    the verdict."""
    moved: list[Any] = []
    for _ in range(tries):
        before = _alert_states(daemon)
        verdict, why = _landing_verdict(daemon.get("/"))
        doc, _ = _diagnose(daemon)
        after = _alert_states(daemon)
        if _counting(after) == _counting(before) and _landing_verdict(daemon.get("/"))[0] == verdict:
            assert doc["status"] == verdict, (doc["status"], verdict, why)
            if [(a["fingerprint"], a["state"]) for a in after] == [(a["fingerprint"], a["state"]) for a in before]:
                assert re.match(_counts(before), why), (why, [(a["labels"], a["state"]) for a in before])
            return verdict
        moved = [_counting(before), _counting(after)]
        time.sleep(0.3)
    raise AssertionError(f"what counts in the verdict kept moving over {tries} reads: {moved}")


def _alert_states(daemon: RunningDaemon) -> list[dict[str, Any]]:
    alerts = json.loads(daemon.get("/api/v1/alerts"))["data"]["alerts"]
    return sorted(alerts, key=lambda a: str(a["fingerprint"]))


def _counting(alerts: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The alerts that count in the verdict, with what each counts for."""
    return [(a["fingerprint"], a["verdict"]["status"]) for a in alerts if a["verdict"]["status"] != "INFO"]


def _row_of(landing: str, fp: str) -> str:
    row_match = re.search(rf'<tr id="alert-{re.escape(fp)}">.*?</tr>', landing)
    assert row_match is not None, f"no row for alert {fp} on /"
    return row_match.group(0)


def _row_summary(row: str) -> str:
    """The summary cell's text of a landing row (before its labels)."""
    m = re.search(r"</b></td><td>(.*?)<br><span class=\"muted\">", row, re.DOTALL)
    assert m is not None, row
    return html.unescape(m.group(1))


def screens_agree(daemon: RunningDaemon, hook: WebhookReceiver, alertname: str, timeout: float = 30.0,
                  **labels: str) -> Screens:
    """Wait until ``alertname{labels}`` fires and is paged; assert the page, diagnose and ``/`` agree on it."""
    alert = firing_alert(daemon, alertname, timeout, **labels)
    fp = alert["fingerprint"]
    page, notification = _paged(hook, fp, timeout)
    severity = alert["labels"]["severity"]
    anchor = _anchor(alert["annotations"]["runbook_url"])
    rule = _rule(daemon, alertname)

    # the page: the same alert, the same labels and texts, a link back and a silence command
    assert page["labels"] == alert["labels"], (page["labels"], alert["labels"])
    assert page["labels"]["severity"] in SEVERITY_STATUS
    assert anchor in section_titles(), f"docs/runbooks.md has no anchor {anchor!r}"
    assert page["annotations"]["runbook_url"] == alert["annotations"]["runbook_url"]
    for key in ("summary", "description"):
        want = stable_text(rule, key, alert["labels"])
        _says(want, page["annotations"].get(key, ""), f"the page's {key}")
        _says(want, alert["annotations"].get(key, ""), f"/api/v1/alerts' {key}")
    assert page["annotations"]["summary"], "a page without a summary"
    assert page["generatorURL"] == alert["generatorURL"] == f"{EXTERNAL_URL}/#alert-{fp}"
    assert notification["externalURL"] == EXTERNAL_URL
    assert page["annotations"]["silence"] == alert["silence"]
    assert f"-m 'alertname=\"{alertname}\"'" in alert["silence"]
    assert page["startsAt"] == alert["startsAt"]

    # diagnose asks the running daemon: the rule's line is firing on its series, counting as /api/v1/alerts says
    line, diag = _diagnose_line(daemon, alertname, alert, timeout)
    counts = alert.get("verdict", {"status": SEVERITY_STATUS[severity]})["status"]
    assert VERDICT_RANK[line["status"]] >= VERDICT_RANK[counts], (line, alert.get("verdict"))
    if rule is not None:
        assert line["check"] == f"{alertname} ({rule_condition(rule)})", line  # its threshold, exactly
    assert line["runbook"] == line["section"] == anchor, line
    assert any(ln["value"] == f"the running daemon at {daemon.url}" for ln in diag["lines"])
    if counts != "INFO":  # an info alert tells, it does not make the host WARN
        assert diag["status"] != "OK"

    # the landing page and diagnose at a moment the rule's alerts hold still: the same words and numbers
    for _ in range(_STILL_TRIES):
        before = _rule_alerts(daemon, alertname)
        landing = daemon.get("/")
        diag, _ = _diagnose(daemon)
        now = _rule_alerts(daemon, alertname)
        still = now == before
        if still:
            break
        time.sleep(0.3)
    row = _row_of(landing, fp)
    summary = stable_text(rule, "summary", alert["labels"])
    [rule_line] = [ln for ln in diag["lines"] if ln["check"].startswith(f"{alertname} (")]
    facts = [ln["value"] for ln in diag["lines"] if ln["status"] == "INFO" and ln["section"] == anchor
             and (ln["check"] + " ").startswith(alertname + " ") and summary.fullmatch(ln["value"])]
    assert facts, ("no diagnose line carries the page's summary",
                   [ln for ln in diag["lines"] if alertname in ln["check"]])
    if still:  # read at one moment: exactly the same, numbers and all
        [mine] = [a for a in now if a["fingerprint"] == fp]
        assert _row_summary(row) == mine["annotations"]["summary"], (row, mine["annotations"]["summary"])
        assert mine["annotations"]["summary"] in facts, (facts, mine["annotations"]["summary"])
        state = "firing" if any(a["state"] == "firing" for a in now) else "pending"
        values = {tuple(sorted((k, v) for k, v in a["labels"].items() if k not in _HIDDEN_LABELS)): float(a["value"])
                  for a in now}
        shown_values = f"{state}: " + series_text(values, dict.fromkeys(values, True))
        assert rule_line["value"] == shown_values or rule_line["value"].startswith(shown_values + " ("), (
            rule_line["value"], shown_values)
    else:  # its value moves at every evaluation: what does not move is still the same
        _says(summary, _row_summary(row), "the landing row's summary")
    shown = ", ".join(f"{k}={v}" for k, v in alert["labels"].items() if k not in _HIDDEN_LABELS)
    assert f'<span class="muted">{html.escape(shown)}</span>' in row, (shown, row)
    assert f"<td>{html.escape(alert['startsAt'])}</td>" in row

    # the landing page: a verdict that is not OK, the alert's row with its summary, runbook link and silence
    assert "<script" not in landing
    verdict, _ = _landing_verdict(landing)
    assert VERDICT_RANK[verdict] >= VERDICT_RANK[counts], (verdict, alert.get("verdict"))
    if counts != "INFO":
        assert verdict != "OK", verdict
    if alert["status"]["state"] == "active" and severity == "critical":
        assert verdict == "CRIT", verdict
    verdicts_agree(daemon)
    assert f"<b>{html.escape(alertname)}</b>" in row
    # the runbook link opens from the page (it is relative when it points into this mevwatch)
    href = re.search(r'<a href="([^"]*)">runbook</a>', row)
    assert href is not None, row
    link = html.unescape(href.group(1))
    assert urljoin(EXTERNAL_URL + "/", link) == alert["annotations"]["runbook_url"], link
    if link.startswith("/"):
        assert f'id="{anchor}"' in daemon.get(link.split("#", 1)[0]), link
    assert html.escape(alert["silence"]) in row
    assert landing.index('id="verdict"') < landing.index(f'id="alert-{fp}"') < landing.index("<h2>Collectors")
    return Screens(page, notification, rule_line, diag, alert, landing, row)


def _rule_alerts(daemon: RunningDaemon, alertname: str) -> list[dict[str, Any]]:
    """The pending and firing alerts of ``alertname`` on /api/v1/alerts, in a stable order."""
    alerts = json.loads(daemon.get("/api/v1/alerts"))["data"]["alerts"]
    return sorted((a for a in alerts if a["labels"]["alertname"] == alertname), key=lambda a: str(a["fingerprint"]))


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
