"""What is firing, told the same way everywhere: a dead RPC endpoint (a refused port) seen by a real daemon,
then read from the page a webhook receiver gets, /api/v1/alerts, the landing page (also in headless chromium,
JavaScript off), `mevwatch diagnose` asking the daemon, and `mevwatch alerts list|history` reading the state DB."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

from tests.support.peers import free_port
from tests.support.screens import headless_chromium, mevwatch_cli, paged_daemon, screens_agree

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
        assert any(ln["check"].startswith("recent errors") for ln in lines)
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
