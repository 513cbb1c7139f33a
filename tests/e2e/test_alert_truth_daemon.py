"""What is firing, told the same way everywhere: a dead RPC endpoint (a refused port) seen by a real daemon,
then read from /api/v1/alerts, the landing page in headless chromium (JavaScript off), `mevwatch diagnose`
asking the daemon, and `mevwatch alerts list|history` reading the state DB."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.daemon import RunningDaemon
from tests.support.peers import REPO, free_port

CONFIG = """collectors:
  - rpc: {{interval: 500ms, endpoints: [{{name: dead, url: "http://127.0.0.1:{port}"}}]}}
  - process: {{interval: 1s}}
alerts:
  startup_grace: 0s
  group_wait: 0s
  external_url: "http://mev-host-1:9717"
  rule_overrides:
    RpcEndpointDown: {{for: 0s}}     # the default rule, without its 30s `for`
"""


def _cli(daemon: RunningDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mevwatch", *args, "--config", str(daemon.config)],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=daemon.env)


def _firing(daemon: RunningDaemon, name: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = json.loads(daemon.get("/api/v1/alerts"))
        hits = [a for a in doc["data"]["alerts"] if a["labels"]["alertname"] == name and a["state"] == "firing"]
        if hits:
            return dict(hits[0])
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} not firing: {doc}")
        time.sleep(0.2)


def test_a_dead_endpoint_is_firing_on_every_screen(tmp_path: Path) -> None:
    with RunningDaemon(tmp_path, CONFIG.format(port=free_port())) as d:
        alert = _firing(d, "RpcEndpointDown")
        assert alert["labels"]["endpoint"] == "dead"
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"].endswith("#rpc-down")
        assert alert["status"] == {"state": "active", "silencedBy": [], "inhibitedBy": []}
        assert alert["startsAt"].endswith("Z")
        assert alert["generatorURL"] == f"http://mev-host-1:9717/#alert-{alert['fingerprint']}"
        assert alert["silence"].startswith("mevwatch silence add -d 2h ")
        assert "-m 'alertname=\"RpcEndpointDown\"'" in alert["silence"]

        page = d.get("/")
        assert "<script" not in page
        assert page.index('id="verdict">CRIT<') < page.index("RpcEndpointDown") < page.index("<h2>Collectors")
        assert "#rpc-down" in page
        assert f'id="alert-{alert["fingerprint"]}"' in page  # where generatorURL points

        rules = json.loads(d.get("/api/v1/rules"))["data"]["rules"]
        [rule] = [r for r in rules if r["name"] == "RpcEndpointDown"]
        assert rule["state"] == "firing"
        [nodata] = [r for r in rules if r["name"] == "HeadStale"]
        assert nodata["state"] == "nodata"
        assert "mevwatch_chain_head_age_blocks" in nodata["reason"]

        diag = _cli(d, "diagnose", "--json", "--url", d.url)
        assert diag.returncode == 2, diag.stdout + diag.stderr
        lines = json.loads(diag.stdout)["lines"]
        assert any(ln["value"] == f"the running daemon at {d.url}" for ln in lines)
        [line] = [ln for ln in lines if ln["check"].startswith("RpcEndpointDown")]
        assert line["status"] == "CRIT"
        assert line["value"] == "firing: !endpoint=dead=0"
        assert any(ln["check"].startswith("recent errors") for ln in lines)
        assert any(ln["check"] == "top memory #1" for ln in lines)

        listed = _cli(d, "alerts", "list")
        assert listed.returncode == 0, listed.stderr
        assert any(ln.startswith("firing") and "RpcEndpointDown" in ln and "endpoint=dead" in ln
                   for ln in listed.stdout.splitlines()), listed.stdout
        history = json.loads(_cli(d, "alerts", "history", "--since", "1h", "--json").stdout)
        assert [(h["alertname"], h["state"]) for h in history if h["alertname"] == "RpcEndpointDown"] == [
            ("RpcEndpointDown", "firing")]

        chromium = shutil.which("chromium")  # installed by .ci/install-deps
        if chromium is not None:
            shot = tmp_path / "landing.png"
            # JavaScript off through the profile's content setting (--blink-settings=scriptEnabled=false also
            # stops --dump-dom and --screenshot from producing anything)
            profile = tmp_path / "chromium"
            (profile / "Default").mkdir(parents=True)
            (profile / "Default" / "Preferences").write_text(
                json.dumps({"profile": {"default_content_setting_values": {"javascript": 2}}}))
            argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                    f"--user-data-dir={profile}"]
            dom = subprocess.run([*argv, "--dump-dom", d.url + "/"], capture_output=True, text=True, timeout=60)
            assert 'id="verdict">CRIT<' in dom.stdout, dom.stderr[-2000:]
            assert "RPC endpoint dead does not answer" in dom.stdout
            subprocess.run([*argv, f"--screenshot={shot}", d.url + "/"], capture_output=True, timeout=60, check=True)
            assert shot.stat().st_size > 5000

        # the page's silence command works as printed
        argv = shlex.split(alert["silence"])
        assert argv[:3] == ["mevwatch", "silence", "add"]
        added = _cli(d, *argv[1:])
        assert added.returncode == 0, added.stderr
        deadline = time.monotonic() + 10
        while True:
            [now] = [a for a in json.loads(d.get("/api/v1/alerts"))["data"]["alerts"]
                     if a["fingerprint"] == alert["fingerprint"]]
            if now["status"]["silencedBy"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert now["status"]["state"] == "suppressed"


DEAD_LETTER = """collectors:
  - rpc: {{interval: 500ms, endpoints: [{{name: dead, url: "http://127.0.0.1:{port}"}}]}}
alerts:
  startup_grace: 0s
  group_wait: 0s
  group_interval: 1s
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


def test_a_critical_alert_refused_with_400_is_named_to_the_other_receivers(tmp_path: Path) -> None:
    from tests.support.webhook import WebhookReceiver

    pager, backup = WebhookReceiver(), WebhookReceiver()
    pager.statuses.extend([400] * 50)  # the pager refuses everything: the page for the dead endpoint is lost there
    pager.start()
    backup.start()
    try:
        text = DEAD_LETTER.format(port=free_port(), pager=pager.url, backup=backup.url)
        with RunningDaemon(tmp_path, text) as d:
            alert = _firing(d, "NotificationDeadLettered")
            assert alert["labels"]["sink"].startswith("pager")
            assert alert["labels"]["severity"] == "critical"
            assert alert["labels"]["lost"] == 'RpcEndpointDown{endpoint="dead"}', alert["labels"]
            deadline = time.monotonic() + 15
            while True:
                got = [a for r in backup.delivered() for a in r.json()["alerts"]]
                lost = [a for a in got if a["labels"]["alertname"] == "NotificationDeadLettered"]
                if lost or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            # only the pager is routed the endpoint's alert; the backup learns of it through the dead letter
            assert lost, [a["labels"] for a in got]
            assert not [a for a in got if a["labels"]["alertname"] == "RpcEndpointDown"]
            [page] = lost[:1]
            assert 'RpcEndpointDown{endpoint="dead"}' in page["annotations"]["summary"]
            assert page["labels"]["sink"] == alert["labels"]["sink"]
            # the pager really refused it (it was sent there, not skipped)
            refused = [a["labels"]["alertname"] for r in pager.requests for a in r.json()["alerts"]]
            assert "RpcEndpointDown" in refused
    finally:
        pager.stop()
        backup.stop()
