"""The webhook sink against a real aiohttp receiver: retries on 500, dead letter on 400, HMAC, payload."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mevwatch.alerts.engine import AlertEngine
from mevwatch.daemon.config import load_config_text
from mevwatch.daemon.state import StateDB
from mevwatch.daemon.store import SampleStore
from tests.support.webhook import WebhookReceiver
from tests.unit.alerts._helpers import gauge


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver().start()
    try:
        yield r
    finally:
        r.stop()


CONFIG = """collectors: []
alerts:
  default_rules: false
  host: mev-host-1
  group_wait: 0s
  runbook_url: https://runbooks.example/mevwatch
  outbox: {{retry_initial: 50ms, retry_max: 200ms}}
  receivers:
    - name: hook
      webhook_configs:
        - url: {url}
          hmac_secret_file: {secret}
          headers: {{X-Team: mev}}
          timeout: 2s
  receiver: hook
  rules:
    - name: MemoryHigh
      metric: test_memory_used_ratio
      threshold: 0.9
      severity: critical
      summary: "Memory {{{{ $value | humanizePercentage }}}} used on {{{{ $labels.host }}}}"
      runbook: memory-high
"""


class Running:
    def __init__(self, tmp: Path, receiver: WebhookReceiver) -> None:
        secret = tmp / "hmac.secret"
        secret.write_text("s3cret\n")
        cfg = load_config_text(CONFIG.format(url=receiver.url, secret=secret), str(tmp / "m.yaml"))
        self.store = SampleStore()
        self.db = StateDB.open_dir(tmp / "state")
        self.engine = AlertEngine(cfg.daemon.alerts, self.store, self.db)


@pytest.fixture
async def running(tmp_path: Path, receiver: WebhookReceiver) -> AsyncIterator[Running]:
    r = Running(tmp_path, receiver)
    await r.engine.start()
    try:
        yield r
    finally:
        await r.engine.stop()
        r.db.close()


async def test_500s_then_200_deliver_exactly_once_with_a_signed_v4_payload(
    running: Running, receiver: WebhookReceiver
) -> None:
    receiver.statuses.extend([500, 503, 500])
    running.store.put(("memory", "default"), [gauge("test_memory_used_ratio", 0.93)], 60)
    [got] = await receiver.wait_delivered_async(1)
    await asyncio.sleep(0.5)
    assert len(receiver.delivered()) == 1
    assert [r.status for r in receiver.requests] == [500, 503, 500, 200]
    ids = {r.headers["X-Mevwatch-Notification-Id"] for r in receiver.requests}
    assert len(ids) == 1  # every retry carries the same stable id
    expected = "sha256=" + hmac.new(b"s3cret", got.body, hashlib.sha256).hexdigest()
    assert got.headers["X-Mevwatch-Signature"] == expected
    assert got.headers["X-Team"] == "mev"
    body = got.json()
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["receiver"] == "hook"
    [alert] = body["alerts"]
    assert alert["labels"]["alertname"] == "MemoryHigh"
    assert alert["labels"]["host"] == "mev-host-1"
    assert alert["annotations"]["summary"] == "Memory 93% used on mev-host-1"
    assert alert["annotations"]["runbook_url"] == "https://runbooks.example/mevwatch#memory-high"
    assert running.engine.outbox.sent["hook/webhook/0"] == 1
    assert running.engine.outbox.failed["hook/webhook/0"] == 3
    assert running.engine.outbox.depth() == {}


async def test_400_is_dead_lettered_and_not_retried(running: Running, receiver: WebhookReceiver) -> None:
    receiver.statuses.append(400)
    running.store.put(("memory", "default"), [gauge("test_memory_used_ratio", 0.95)], 60)
    loop = asyncio.get_running_loop()
    end = loop.time() + 5
    while running.engine.outbox.dead["hook/webhook/0"] == 0:
        assert loop.time() < end
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    assert [r.status for r in receiver.requests] == [400]
    [dead] = running.engine.outbox.dead_letters()
    assert "answered HTTP 400: refused with 400" in dead["error"]
    fams = {f.name: f for f in running.engine.families()}
    dead_samples = {s.labels["sink"]: s.value for s in fams["mevwatch_notifications_dead_lettered"].samples}
    assert dead_samples == {"hook/webhook/0": 1.0}
    assert fams["mevwatch_alert_outbox_oldest_pending_age_seconds"].samples[0].value == 0.0


async def test_receiver_down_keeps_the_notification_pending_and_counted(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    receiver.stop()  # nothing listens on the port now
    r = Running(tmp_path, receiver)
    await r.engine.start()
    try:
        r.store.put(("memory", "default"), [gauge("test_memory_used_ratio", 0.95)], 60)
        await asyncio.sleep(0.5)
        fams = {f.name: f for f in r.engine.families()}
        assert fams["mevwatch_alert_outbox_depth"].samples[0].value == 1.0
        assert fams["mevwatch_alert_outbox_oldest_pending_age_seconds"].samples[0].value > 0.3
        assert r.engine.outbox.failed["hook/webhook/0"] >= 2
        receiver.start()
        await receiver.wait_delivered_async(1, timeout=5)
        await asyncio.sleep(0.3)
        assert len(receiver.delivered()) == 1
        assert r.engine.outbox.depth() == {}
    finally:
        await r.engine.stop()
        r.db.close()
