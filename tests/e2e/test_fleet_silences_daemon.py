"""In fleet mode mevwatch's screens say who silences an alert in Alertmanager, or that nobody can tell.

A real mevwatch in fleet mode sends a dead RPC endpoint's alert to a real two-peer Alertmanager cluster
(Debian's prometheus-alertmanager); amtool silences it there. The landing page (also in headless chromium,
JavaScript off), /api/v1/alerts, `mevwatch alerts list` and `mevwatch diagnose` then name the silence (id,
author, comment, end), and the landing page's verdict and diagnose's (status and exit code) count it as WARN,
not CRIT; with both peers stopped they say the silence state is UNKNOWN, never "not silenced", and it counts
as CRIT again;
with a peer back they name it again, and once amtool expires it they show the alert plainly firing.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import RunningDaemon
from tests.support.fullstack import wait_until
from tests.support.peers import free_port, need_binary, start_alertmanager, stop_process
from tests.support.screens import firing_alert, headless_chromium, masked, mevwatch_cli

pytestmark = [pytest.mark.slow, pytest.mark.peer("alertmanager")]

RULE = "RpcEndpointDown"
AM_CONFIG = """route: {receiver: "null", group_by: [alertname, host], group_wait: 1s, group_interval: 1s,
        repeat_interval: 1h}
receivers: [{name: "null"}]
"""
CONFIG = """collectors:
  - rpc: {{interval: 500ms, endpoints: [{{name: dead, url: "http://127.0.0.1:{dead}"}}]}}
alerts:
  mode: fleet
  host: mev-1
  startup_grace: 0s
  group_wait: 0s
  group_interval: 1s
  outbox: {{retry_initial: 200ms, retry_max: 1s}}
  receivers:
    - name: fleet
      alertmanager_configs: [{{urls: {urls}, timeout: 1s, resend_delay: 1s}}]
      log_configs: [{{}}]
  receiver: fleet
  rule_overrides:
    {rule}: {{for: 0s}}
  # the receivers' Alertmanagers (the default), read faster than the shipped 15s
  alertmanager_silences: {{refresh_interval: 500ms, timeout: 1s}}
"""


@dataclass
class Cluster:
    tmp: Path
    ports: list[tuple[int, int]]  # (web, cluster) per peer
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{web}" for web, _ in self.ports]

    def start(self, i: int) -> None:
        web, cluster = self.ports[i]
        self.procs[i] = start_alertmanager(self.tmp, f"am{i}", self.tmp / "am.yml", web, cluster,
                                           [c for j, (_, c) in enumerate(self.ports) if j != i])

    def stop(self, i: int) -> None:
        stop_process(self.procs.pop(i))


@contextlib.contextmanager
def alertmanager_cluster(tmp: Path) -> Iterator[Cluster]:
    (tmp / "am.yml").write_text(AM_CONFIG)
    c = Cluster(tmp, [(free_port(), free_port()) for _ in range(2)])
    try:
        for i in range(2):
            c.start(i)
        yield c
    finally:
        for proc in c.procs.values():
            stop_process(proc)


def _amtool(url: str, *args: str) -> str:
    return subprocess.run([need_binary("amtool"), *args, f"--alertmanager.url={url}"], capture_output=True,
                          text=True, timeout=30, check=True).stdout


@dataclass(frozen=True, slots=True)
class Seen:
    """One alert as every screen shows it at one moment."""

    api: dict[str, Any]  # its /api/v1/alerts entry
    source: dict[str, Any]  # /api/v1/alerts' alertmanagerSilences
    landing: str
    row: str  # its row on the landing page
    listed: str  # its `mevwatch alerts list` line
    list_out: str  # the whole `mevwatch alerts list` output
    diagnose: dict[str, Any]  # `mevwatch diagnose --json`
    exit_code: int  # diagnose's


def _screens(d: RunningDaemon) -> Seen:
    doc = json.loads(d.get("/api/v1/alerts"))["data"]
    [api] = [a for a in doc["alerts"] if a["labels"]["alertname"] == RULE]
    landing = d.get("/")
    row = re.search(rf'<tr id="alert-{api["fingerprint"]}">.*?</tr>', landing)
    assert row is not None, landing
    listed = mevwatch_cli(d, "alerts", "list")
    assert listed.returncode == 0, listed.stderr
    [line] = [ln for ln in listed.stdout.splitlines() if RULE in ln]
    diag = mevwatch_cli(d, "diagnose", "--json", "--url", d.url)
    assert diag.stdout.startswith("{"), diag.stderr
    return Seen(api, doc["alertmanagerSilences"], landing, row.group(0), line, listed.stdout, json.loads(diag.stdout),
                diag.returncode)


def _verdicts(seen: Seen) -> tuple[str, str, int, str]:
    """The verdict on /, diagnose's status and exit code, and the status of diagnose's line of the rule."""
    verdict = re.search(r'id="verdict">([A-Z]+)<', seen.landing)
    assert verdict is not None
    [line] = [ln for ln in seen.diagnose["lines"] if ln["check"].startswith(f"{RULE} (")]
    return verdict.group(1), seen.diagnose["status"], seen.exit_code, line["status"]


def _silence_lines(seen: Seen) -> list[dict[str, Any]]:
    return [ln for ln in seen.diagnose["lines"] if ln["check"] == f"{RULE} dead silence"]


def _source_line(seen: Seen) -> dict[str, Any]:
    [line] = [ln for ln in seen.diagnose["lines"] if ln["check"] == "Alertmanager silences"]
    return dict(line)


#: silence state -> (the status of diagnose's silence line, the mark on the `alerts list` line); None: neither
_SHOWN = {"silenced": ("INFO", "[silenced in Alertmanager by "), "unknown": ("UNKNOWN", "[silence state UNKNOWN: "),
          "not silenced": (None, None)}


def _wait_screens(d: RunningDaemon, what: str, state: str, timeout: float = 20.0) -> Seen:
    """The screens once every one of them shows the alert's silence state ``state`` (the state DB that
    `alerts list` reads is written after each read, so it may be one read behind the daemon)."""
    seen: list[Seen] = []
    status, mark = _SHOWN[state]

    def settled() -> bool:
        s = _screens(d)
        seen[:] = [s]
        lines = _silence_lines(s)
        return (s.api["silencing"]["state"] == state and [ln["status"] for ln in lines] == ([status] if status else [])
                and (mark in s.listed if mark else "[silence" not in s.listed))

    wait_until(what, settled, timeout)
    return seen[0]


def test_fleet_mode_screens_name_alertmanagers_silence_or_say_unknown(tmp_path: Path) -> None:
    with alertmanager_cluster(tmp_path) as am, RunningDaemon(
            tmp_path, CONFIG.format(dead=free_port(), urls=json.dumps(am.urls), rule=RULE)) as d:
        alert = firing_alert(d, RULE, endpoint="dead")
        wait_until("Alertmanager holds the alert", lambda: RULE in _amtool(am.urls[0], "alert", "query"), 20)
        # read, and nothing silences it: said so, with the read's age
        seen = _wait_screens(d, "silences read", "not silenced")
        assert seen.source["state"] == "read"
        assert seen.source["effect"] == "display"
        assert seen.api["silencing"]["text"].startswith("not silenced (Alertmanager's silences read ")
        assert 'id="verdict">CRIT<' in seen.landing
        assert _verdicts(seen) == ("CRIT", "CRIT", 2, "CRIT")
        assert _source_line(seen)["status"] == "OK"

        # -- the on-call silences it in Alertmanager with amtool
        sid = _amtool(am.urls[0], "silence", "add", f"alertname={RULE}", "host=mev-1", "--duration=10m",
                      "--author=oncall-e2e", "--comment=rotating the RPC node").strip()
        assert re.fullmatch(r"[0-9a-f-]{36}", sid), sid
        seen = _wait_screens(d, "the silence on every screen", "silenced")
        held = f'silenced in Alertmanager by {sid} (oncall-e2e: "rotating the RPC node", ends at '
        # /api/v1/alerts: Alertmanager's status fields, and who holds it
        assert seen.api["status"] == {"state": "suppressed", "silencedBy": [sid], "inhibitedBy": []}
        assert seen.api["silencing"]["text"].startswith(held)
        [by] = seen.api["silencing"]["by"]
        assert (by["id"], by["source"], by["createdBy"], by["comment"]) == (
            sid, "alertmanager", "oncall-e2e", "rotating the RPC node")
        # the landing page: in the alert's row, and in the silences list with its source; the verdict: the silence
        # mutes the page, not the fault, so it counts as WARN, not CRIT, on / and in diagnose (exit code 1) alike
        assert html.escape(held) in seen.row
        assert re.search(rf"<td>{sid}</td><td>Alertmanager {re.escape(am.urls[0])}</td>", seen.landing), seen.landing
        assert "Alertmanager&#39;s silences: read from http://127.0.0.1:" in seen.landing
        assert seen.api["verdict"] == {"status": "WARN", "reason": "silenced: counts as WARN, not CRIT"}
        assert _verdicts(seen) == ("WARN", "WARN", 1, "WARN")
        assert '<span class="WARN counts">silenced: counts as WARN, not CRIT</span>' in seen.row
        # `mevwatch alerts list` (from the state DB) and `mevwatch diagnose` (from the daemon)
        assert f"[{held}" in seen.listed
        assert seen.list_out.startswith("Alertmanager's silences: read from http://127.0.0.1:")
        [line] = _silence_lines(seen)
        assert line["value"].startswith(held)
        silences = mevwatch_cli(d, "silence", "list").stdout.splitlines()
        assert silences[0].startswith("Alertmanager's silences: read from http://127.0.0.1:"), silences
        assert [ln for ln in silences if ln.startswith(sid)] == [
            f'{sid}  active    until {by["endsAt"][:10]} {by["endsAt"][11:19]}Z  alertname="{RULE}", host="mev-1"  '
            "by oncall-e2e  rotating the RPC node"]
        # Alertmanager, which owns it, agrees: mevwatch still sent the alert, and it holds it silenced
        assert RULE in _amtool(am.urls[0], "alert", "query", "--silenced")
        argv = headless_chromium(tmp_path / "chromium")
        if argv is not None:
            dom = subprocess.run([*argv, "--dump-dom", d.url + "/"], capture_output=True, text=True, timeout=60)
            # the browser's serialization leaves quotes in text as they are
            assert html.escape(held, quote=False) in dom.stdout, dom.stderr[-2000:]

        # -- one peer gone: the other answers, nothing changes but where it was read
        am.stop(0)
        wait_until("read from the other peer", lambda: _screens(d).source["url"] == am.urls[1], 20)
        seen = _wait_screens(d, "still silenced", "silenced")
        assert seen.source["state"] == "read"

        # -- no Alertmanager answers: unknown on every screen, never "not silenced"
        am.stop(1)
        seen = _wait_screens(d, "unknown on every screen", "unknown")
        assert seen.api["status"]["state"] == "active"
        text = seen.api["silencing"]["text"]
        assert text.startswith("silence state UNKNOWN: no Alertmanager answered since "), text
        assert f"when {sid} silenced it" in text  # what the last read said, as the last read
        assert seen.source["state"] == "unknown"
        assert seen.source["silences"] == []
        assert 'id="verdict">CRIT<' in seen.landing
        assert _verdicts(seen) == ("CRIT", "CRIT", 2, "CRIT")  # nobody can tell it is silenced: it counts in full
        assert '<span class="UNKNOWN silencing">silence state UNKNOWN: no Alertmanager answered since' in seen.row
        assert '<p id="alertmanager-silences" class="UNKNOWN">' in seen.landing
        assert "[silence state UNKNOWN: no Alertmanager answered since" in seen.listed
        assert masked(_silence_lines(seen)[0]["value"]) == masked(text)  # an age grows between the reads
        assert _source_line(seen)["status"] == "UNKNOWN"
        for shown in (seen.landing, seen.listed, json.dumps(seen.diagnose)):
            assert "not silenced" not in shown
        listed_silences = mevwatch_cli(d, "silence", "list").stdout
        assert listed_silences.startswith("Alertmanager's silences: UNKNOWN: no Alertmanager answered since ")
        assert sid not in listed_silences.split("\n", 1)[1]

        # -- a peer back (its silences kept on disk): the silence is named again
        am.start(1)
        seen = _wait_screens(d, "silenced again", "silenced")
        assert seen.api["status"]["silencedBy"] == [sid]

        # -- the silence expired in Alertmanager: plainly firing again everywhere
        _amtool(am.urls[1], "silence", "expire", sid)
        seen = _wait_screens(d, "firing again", "not silenced")
        assert seen.api["status"] == {"state": "active", "silencedBy": [], "inhibitedBy": []}
        assert 'id="verdict">CRIT<' in seen.landing
        assert _verdicts(seen) == ("CRIT", "CRIT", 2, "CRIT")
        assert "silenced in Alertmanager" not in seen.landing
        assert "silence" not in seen.listed
        assert _silence_lines(seen) == []
        assert alert["fingerprint"] == seen.api["fingerprint"]
