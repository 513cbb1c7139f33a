"""The alertmanager sink against a real Alertmanager routing to a real webhook receiver."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mevwatch.alerts.engine import AlertEngine
from mevwatch.daemon.config import load_config_text
from mevwatch.daemon.state import StateDB
from mevwatch.daemon.store import SampleStore
from tests.support.peers import free_port, need_binary, start_process, stop_process
from tests.support.webhook import WebhookReceiver
from tests.unit.alerts._helpers import gauge

AM_CONFIG = """route:
  receiver: hook
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {url}
        send_resolved: true
"""


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver().start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def alertmanager(tmp_path: Path, receiver: WebhookReceiver) -> Iterator[str]:
    binary = need_binary("prometheus-alertmanager")
    port = free_port()
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(AM_CONFIG.format(url=receiver.url))
    proc = start_process(
        [binary, f"--config.file={cfg}", f"--storage.path={tmp_path / 'am-data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        port=port, log=tmp_path / "alertmanager.log",
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def amtool_alerts(url: str) -> str:
    amtool = need_binary("amtool")
    return subprocess.run([amtool, "alert", "query", f"--alertmanager.url={url}", "-o", "extended"],
                          capture_output=True, text=True, timeout=30, check=True).stdout


async def test_alert_reaches_alertmanager_and_its_receiver_and_resolve_propagates(
    tmp_path: Path, alertmanager: str, receiver: WebhookReceiver
) -> None:
    cfg = load_config_text(f"""collectors: []
alerts:
  default_rules: false
  host: mev-host-1
  receivers:
    - name: am
      alertmanager_configs: [{{urls: ["{alertmanager}/"], timeout: 5s}}]
  receiver: am
  rules:
    - {{name: HeadLag, metric: test_head_lag_blocks, op: ">", threshold: 3, severity: warning,
       summary: "{{{{ $labels.endpoint }}}} is {{{{ $value }}}} blocks behind", runbook: peer-loss}}
""", str(tmp_path / "m.yaml"))
    store = SampleStore()
    db = StateDB.open_dir(tmp_path / "state")
    engine = AlertEngine(cfg.daemon.alerts, store, db)
    await engine.start()
    try:
        store.put(("chain", "default"), [gauge("test_head_lag_blocks", 7, endpoint="erigon")], 60)
        [got] = await receiver.wait_delivered_async(1, timeout=15)
        body = got.json()
        assert body["status"] == "firing"
        [alert] = body["alerts"]
        assert alert["labels"]["alertname"] == "HeadLag"
        assert alert["labels"]["endpoint"] == "erigon"
        assert alert["labels"]["host"] == "mev-host-1"
        assert alert["annotations"]["summary"] == "erigon is 7 blocks behind"
        assert alert["annotations"]["runbook_url"] == "docs/runbooks.md#peer-loss"
        listed = await asyncio.to_thread(amtool_alerts, alertmanager)
        assert "HeadLag" in listed
        assert "endpoint=\"erigon\"" in listed

        store.put(("chain", "default"), [gauge("test_head_lag_blocks", 0, endpoint="erigon")], 60)
        got = (await receiver.wait_delivered_async(2, timeout=15))[1]
        assert got.json()["status"] == "resolved"
        listed = await asyncio.to_thread(amtool_alerts, alertmanager)
        assert "HeadLag" not in listed
    finally:
        await engine.stop()
        db.close()
