"""What is firing, told the same way everywhere: a dead RPC endpoint (a refused port) seen by a real daemon,
then read from the page a webhook receiver gets, /api/v1/alerts, the landing page (also in headless chromium,
JavaScript off), `mevwatch diagnose` asking the daemon, and `mevwatch alerts list|history` reading the state DB;
silenced with the command its page prints, it is shown as silenced and counts as WARN, not CRIT, everywhere.
And diagnose adds the journal's recent errors (a journald of the test's own) to the daemon's verdicts."""

from __future__ import annotations

import getpass
import html
import json
import re
import shlex
import subprocess
import time
from pathlib import Path

from tests.support.daemon import RunningDaemon
from tests.support.fullstack import wait_until
from tests.support.journal import journal_err, journald_namespace, nsenter
from tests.support.peers import free_port
from tests.support.screens import headless_chromium, mevwatch_cli, paged_daemon, screens_agree, verdicts_agree

COLLECTORS = """collectors:
  - rpc: {{interval: 500ms, endpoints: [{{name: dead, url: "http://127.0.0.1:{port}"}}]}}
  - process: {{interval: 1s}}
"""


def test_a_dead_endpoint_is_firing_on_every_screen(tmp_path: Path) -> None:
    # RpcEndpointDown without its 30s `for`
    with paged_daemon(tmp_path, COLLECTORS.format(port=free_port()), instant=["RpcEndpointDown"]) as (d, hook):
        seen = screens_agree(d, hook, "RpcEndpointDown", endpoint="dead")
        alert = seen.alert
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"].endswith("#rpc-down")
        assert alert["status"] == {"state": "active", "silencedBy": [], "inhibitedBy": []}
        assert alert["startsAt"].endswith("Z")
        assert alert["silence"].startswith("mevwatch silence add -d 2h ")
        assert seen.page["annotations"]["summary"].startswith("RPC endpoint dead does not answer")

        page = seen.landing
        assert page.index('id="verdict">CRIT<') < page.index("RpcEndpointDown") < page.index("<h2>Collectors")

        rules = json.loads(d.get("/api/v1/rules"))["data"]["rules"]
        [rule] = [r for r in rules if r["name"] == "RpcEndpointDown"]
        assert rule["state"] == "firing"
        [nodata] = [r for r in rules if r["name"] == "HeadStale"]
        assert nodata["state"] == "nodata"
        assert nodata["reason"] == ("no series of mevwatch_chain_head_age_blocks: the chain collector, which exports "
                                    "it, is not configured")

        assert seen.diagnose["status"] == "CRIT"
        assert seen.line["value"] == "firing: !endpoint=dead=0"
        lines = seen.diagnose["lines"]
        [recent] = [ln for ln in lines if ln["check"] == RECENT]
        if Path("/run/systemd/journal/socket").exists():  # this host's journal: read, however many lines
            assert recent["status"] == "INFO", recent
            assert re.fullmatch(r"\d+ line\(s\)", recent["value"]), recent
        else:  # no journal here: UNKNOWN and why, never OK (the test below plays one with errors in it)
            assert (recent["status"], recent["value"]) == (
                "UNKNOWN", "journald is not running (no /run/systemd/journal/socket)"), recent
        assert any(ln["check"] == "top memory #1" for ln in lines)

        listed = mevwatch_cli(d, "alerts", "list")
        assert listed.returncode == 0, listed.stderr
        assert any(ln.startswith("firing") and "RpcEndpointDown" in ln and "endpoint=dead" in ln
                   for ln in listed.stdout.splitlines()), listed.stdout
        history = json.loads(mevwatch_cli(d, "alerts", "history", "--since", "1h", "--json").stdout)
        assert [(h["alertname"], h["state"]) for h in history if h["alertname"] == "RpcEndpointDown"] == [
            ("RpcEndpointDown", "firing")]

        argv = headless_chromium(tmp_path / "chromium")
        if argv is not None:
            shot = tmp_path / "landing.png"
            dom = subprocess.run([*argv, "--dump-dom", d.url + "/"], capture_output=True, text=True, timeout=60)
            assert 'id="verdict">CRIT<' in dom.stdout, dom.stderr[-2000:]
            assert "RPC endpoint dead does not answer" in dom.stdout
            subprocess.run([*argv, f"--screenshot={shot}", d.url + "/"], capture_output=True, timeout=60, check=True)
            assert shot.stat().st_size > 5000

        # the page's silence command works as printed
        argv = shlex.split(alert["silence"])
        assert argv[:3] == ["mevwatch", "silence", "add"]
        added = mevwatch_cli(d, *argv[1:])
        assert added.returncode == 0, added.stderr
        deadline = time.monotonic() + 10
        while True:
            [now] = [a for a in json.loads(d.get("/api/v1/alerts"))["data"]["alerts"]
                     if a["fingerprint"] == alert["fingerprint"]]
            if now["status"]["silencedBy"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert now["status"]["state"] == "suppressed"
        # silenced, it is shown as such with who holds it and until when, and counts as WARN, not CRIT, on /
        # and in diagnose alike (exit code 1)
        printed = re.fullmatch(r"(\S+) silences .* until (.+)", added.stdout.strip())
        assert printed is not None, added.stdout
        sid, until = printed.groups()
        held = f'silenced locally by {sid} ({getpass.getuser()}: "...", ends at {until})'
        assert now["silencing"]["text"] == held
        assert now["verdict"] == {"status": "WARN", "reason": "silenced: counts as WARN, not CRIT"}
        assert verdicts_agree(d) == "WARN"
        row = re.search(rf'<tr id="alert-{alert["fingerprint"]}">.*?</tr>', d.get("/"))
        assert row is not None
        assert html.escape(held) in row.group(0)
        diagnose = mevwatch_cli(d, "diagnose", "--json", "--url", d.url)
        assert diagnose.returncode == 1, diagnose.stdout + diagnose.stderr
        lines = {ln["check"]: ln for ln in json.loads(diagnose.stdout)["lines"]}
        rule = lines["RpcEndpointDown (mevwatch_rpc_up == 0)"]
        assert (rule["status"], rule["value"]) == (
            "WARN", "firing: !endpoint=dead=0 (silenced: counts as WARN, not CRIT)")
        assert (lines["RpcEndpointDown dead silence"]["status"], lines["RpcEndpointDown dead silence"]["value"]) == (
            "INFO", held)
        # expired, it counts as CRIT again everywhere
        assert mevwatch_cli(d, "silence", "expire", sid).returncode == 0
        wait_until("the silence lifted", lambda: _landing_verdict(d) == "CRIT", 10)
        assert verdicts_agree(d) == "CRIT"


def _landing_verdict(d: RunningDaemon) -> str:
    m = re.search(r'id="verdict">([A-Z]+)<', d.get("/"))
    assert m is not None
    return m.group(1)


RECENT = "recent errors (last 10 min, journal -p err)"


def test_diagnose_tells_the_journals_recent_errors_beside_the_daemons_verdicts(tmp_path: Path) -> None:
    with journald_namespace() as pid, paged_daemon(tmp_path, "collectors:\n  - process: {interval: 1s}\n",
                                                   wrapper=nsenter(pid)) as (d, _):
        journal_err(pid, "mev-execution", "bundle rejected by relay: nonce too low\nrelay timeout after 2s\n")
        lines: list[dict[str, str]] = []
        ours = [r" mev-execution\[\d+\]: bundle rejected by relay: nonce too low$",
                r" mev-execution\[\d+\]: relay timeout after 2s$"]

        def told() -> bool:
            diagnose = mevwatch_cli(d, "diagnose", "--json", "--url", d.url)
            lines[:] = json.loads(diagnose.stdout)["lines"]
            errors = [ln["value"] for ln in lines if ln["check"] == "  error"]
            return all(any(re.search(p, e) for e in errors) for p in ours)

        wait_until("the journal's errors in diagnose", told, 10)
        assert any(ln["value"] == f"the running daemon at {d.url}" for ln in lines)  # the daemon's verdicts
        [recent] = [ln for ln in lines if ln["check"] == RECENT]
        assert (recent["status"], recent["section"]) == ("INFO", "service-down")
        # the journal's kernel messages count too (journald reads /dev/kmsg): ours are the last two
        count = re.fullmatch(r"(\d+) line\(s\)", recent["value"])
        assert count is not None, recent
        errors = [ln["value"] for ln in lines if ln["check"] == "  error"]
        assert len(errors) == min(int(count.group(1)), 20) >= 2, (recent, errors)
        assert [bool(re.search(p, e)) for p, e in zip(ours, errors[-2:], strict=True)] == [True, True], errors
