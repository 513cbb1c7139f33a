"""The alertmanager sink against a real Alertmanager routing to a real webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mevwatch.alerts.api import alerts_json
from mevwatch.alerts.engine import AlertEngine
from mevwatch.alerts.identity import group_key, incident_id, route_key
from mevwatch.daemon.config import load_config_text
from mevwatch.daemon.state import StateDB
from mevwatch.daemon.store import SampleStore
from tests.support.peers import free_port, need_binary, start_alertmanager, stop_process
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


@contextlib.contextmanager
def running_alertmanager(tmp_path: Path, config: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(config)
    proc = start_alertmanager(tmp_path, "am", cfg, port)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop_process(proc)


@pytest.fixture
def alertmanager(tmp_path: Path, receiver: WebhookReceiver) -> Iterator[str]:
    with running_alertmanager(tmp_path, AM_CONFIG.format(url=receiver.url)) as (url, _):
        yield url


@contextlib.asynccontextmanager
async def engine_on(text: str, tmp_path: Path) -> AsyncIterator[tuple[AlertEngine, SampleStore, StateDB]]:
    """A started alert engine on the config ``text``, over a fresh store and state DB."""
    cfg = load_config_text(text, str(tmp_path / "m.yaml"))
    store = SampleStore()
    db = StateDB.open_dir(tmp_path / "state")
    engine = AlertEngine(cfg.daemon.alerts, store, db)
    await engine.start()
    try:
        yield engine, store, db
    finally:
        await engine.stop()
        db.close()


def amtool_alerts(url: str) -> str:
    amtool = need_binary("amtool")
    return subprocess.run([amtool, "alert", "query", f"--alertmanager.url={url}", "-o", "extended"],
                          capture_output=True, text=True, timeout=30, check=True).stdout


async def test_alert_reaches_alertmanager_and_its_receiver_and_resolve_propagates(
    tmp_path: Path, alertmanager: str, receiver: WebhookReceiver
) -> None:
    text = f"""collectors: []
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
"""
    async with engine_on(text, tmp_path) as (_, store, _db):
        store.put(("chain", "default"), [gauge("test_head_lag_blocks", 7, endpoint="erigon")], 60)
        [got] = await receiver.wait_delivered_async(1, timeout=15)
        body = got.json()
        assert body["status"] == "firing"
        [alert] = body["alerts"]
        assert alert["labels"]["alertname"] == "HeadLag"
        assert alert["labels"]["endpoint"] == "erigon"
        assert alert["labels"]["host"] == "mev-host-1"
        assert alert["annotations"]["summary"] == "erigon is 7 blocks behind"
        assert alert["annotations"]["runbook_url"] == "http://mev-host-1:9717/runbooks#peer-loss"
        listed = await asyncio.to_thread(amtool_alerts, alertmanager)
        assert "HeadLag" in listed
        assert "endpoint=\"erigon\"" in listed

        store.put(("chain", "default"), [gauge("test_head_lag_blocks", 0, endpoint="erigon")], 60)
        got = (await receiver.wait_delivered_async(2, timeout=15))[1]
        assert got.json()["status"] == "resolved"
        listed = await asyncio.to_thread(amtool_alerts, alertmanager)
        assert "HeadLag" not in listed


AM_GROUPED = AM_CONFIG.replace("group_by: [alertname]", "group_by: [alertname, host]")


async def test_group_key_and_incident_id_are_the_ones_alertmanager_sends(tmp_path: Path,
                                                                          receiver: WebhookReceiver) -> None:
    with running_alertmanager(tmp_path, AM_GROUPED.format(url=receiver.url)) as (url, _):
        text = f"""collectors: []
alerts:
  mode: fleet
  default_rules: false
  host: mev-host-2
  receivers:
    - name: am
      alertmanager_configs: [{{urls: ["{url}"], timeout: 5s}}]
  receiver: am
  rules:
    - {{name: HeadLag, metric: test_head_lag_blocks, op: ">", threshold: 3, summary: s, runbook: peer-loss}}
"""
        async with engine_on(text, tmp_path) as (_, store, db):
            store.put(("chain", "default"), [gauge("test_head_lag_blocks", 7, endpoint="erigon")], 60)
            [got] = await receiver.wait_delivered_async(1, timeout=15)
            ours = db.query("SELECT payload FROM alert_outbox")  # delivered: gone from the outbox
            assert ours == []
            key = group_key(route_key(None), {"alertname": "HeadLag", "host": "mev-host-2"})
            assert got.json()["groupKey"] == key
            assert incident_id(key) == hashlib.sha256(got.json()["groupKey"].encode()).hexdigest()


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mevwatch", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "STATE_DIRECTORY": str(tmp_path / "state-cli")})


async def test_direct_sinks_honour_alertmanager_silences_and_page_when_it_is_unreachable(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    with running_alertmanager(tmp_path, AM_CONFIG.format(url=receiver.url)) as (alertmanager, proc):
        await _silenced_then_unreachable(tmp_path, alertmanager, proc, receiver)


async def _silenced_then_unreachable(tmp_path: Path, alertmanager: str, proc: subprocess.Popen[bytes],
                                     receiver: WebhookReceiver) -> None:
    text = f"""collectors: []
alerts:
  default_rules: false
  host: mev-host-1
  group_wait: 0s
  group_interval: 1s
  receivers:
    - name: hook
      webhook_configs: [{{url: "{receiver.url}", timeout: 2s}}]
  receiver: hook
  alertmanager_silences: {{urls: ["{alertmanager}"], refresh_interval: 500ms, timeout: 1s}}
  rules:
    - {{name: HeadLag, metric: test_head_lag_blocks, op: ">", threshold: 3, summary: s, runbook: peer-loss}}
"""
    path = tmp_path / "m.yaml"
    path.write_text(text)
    # `mevwatch silence add --alertmanager` (URL from alerts.alertmanager_silences) writes it to Alertmanager
    done = await asyncio.to_thread(_cli, tmp_path, "silence", "add", "--config", str(path), "--alertmanager",
                                   "-m", 'alertname="HeadLag"', "-m", 'host="mev-host-1"', "-d", "1h",
                                   "--comment", "maintenance")
    assert done.returncode == 0, done.stderr
    assert f"in Alertmanager {alertmanager}" in done.stdout
    silences = await asyncio.to_thread(
        lambda: subprocess.run([need_binary("amtool"), "silence", "query", f"--alertmanager.url={alertmanager}"],
                               capture_output=True, text=True, timeout=30, check=True).stdout)
    assert 'alertname="HeadLag"' in silences
    assert "maintenance" in silences

    async with engine_on(text, tmp_path) as (engine, store, _):
        assert engine.am_watch is not None
        for _ in range(100):
            if engine.am_watch.source_ok:
                break
            await asyncio.sleep(0.05)
        store.put(("chain", "default"), [gauge("test_head_lag_blocks", 7, endpoint="erigon")], 60)
        await asyncio.sleep(2.0)  # several evaluation ticks and silence refreshes
        assert receiver.delivered() == []  # muted by Alertmanager's silence
        [shown] = alerts_json(engine)  # and the screens say which silence holds it
        assert shown["status"]["state"] == "suppressed"
        [sid] = shown["status"]["silencedBy"]
        assert shown["silencing"]["text"].startswith(f"silenced in Alertmanager by {sid} (")
        assert '"maintenance", ends at ' in shown["silencing"]["text"]
        assert next(f for f in engine.families() if f.name == "mevwatch_alertmanager_up").samples[0].value == 1.0
        assert next(f for f in engine.families() if f.name == "mevwatch_silences_active").samples[0].value == 1.0

        stop_process(proc)  # Alertmanager gone: fail-safe, the page goes out
        [got] = await receiver.wait_delivered_async(1, timeout=10)
        assert got.json()["alerts"][0]["labels"]["alertname"] == "HeadLag"
        [up] = [f for f in engine.families() if f.name == "mevwatch_alertmanager_up"]
        assert [(s.labels["url"], s.value) for s in up.samples] == [(alertmanager, 0.0)]
        [shown] = alerts_json(engine)
        assert shown["status"]["state"] == "active"
        assert shown["silencing"]["state"] == "unknown"
        assert shown["silencing"]["text"].endswith("; meanwhile they mute nothing: the direct sinks page")


async def test_an_unreachable_alertmanager_is_a_metric_and_an_alert_through_the_sink_that_works(
    tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    text = f"""collectors: []
alerts:
  mode: fleet
  default_rules: false
  host: mev-host-1
  startup_grace: 0s
  outbox: {{retry_initial: 200ms, retry_max: 500ms}}
  receivers:
    - name: fleet
      alertmanager_configs: [{{urls: ["{dead}"], timeout: 1s}}]
      log_configs: [{{}}]
  receiver: fleet
  rules:
    - {{name: AlertmanagerUnreachable, metric: mevwatch_alertmanager_up, op: "==", threshold: 0,
       summary: "{{{{ $labels.url }}}} down", runbook: alertmanager-unreachable}}
"""
    async with engine_on(text, tmp_path) as (engine, _, _db):
        def counters() -> tuple[float, float, float]:
            fams = {f.name: f for f in engine.families()}
            if "mevwatch_alertmanager_up" not in fams:  # not asked yet
                return -1.0, 0.0, 0.0
            sent = {s.labels["sink"]: s.value for s in fams["mevwatch_notifications_sent"].samples}
            failed = {s.labels["sink"]: s.value for s in fams["mevwatch_notifications_failed"].samples}
            [up] = fams["mevwatch_alertmanager_up"].samples
            return up.value, sent["fleet/log/0"], failed["fleet/alertmanager/0"]

        for _ in range(100):
            up, logged, failed = counters()
            if logged >= 1 and failed >= 1:
                break
            await asyncio.sleep(0.1)
        assert (up, logged >= 1, failed >= 1) == (0.0, True, True)
        [alert] = [a for a in engine.all_alerts() if a.state == "firing"]
        assert alert.labels["alertname"] == "AlertmanagerUnreachable"
        assert alert.labels["url"] == dead
        assert engine.outbox.depth()["fleet/alertmanager/0"] >= 1  # kept for when it answers again
