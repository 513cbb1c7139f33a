"""The outbox: persisted before sending, acked deletes, retries with backoff, 4xx and expiry dead-letter."""

from __future__ import annotations

import asyncio
from typing import Any

from mevwatch.alerts.config import OutboxConfig
from mevwatch.alerts.outbox import Outbox, OutboxEntry, backoff_delay, lost_alerts
from mevwatch.alerts.sinks.base import DeliveryError
from mevwatch.daemon.state import StateDB


class ScriptedSink:
    kind = "test"
    receiver = "r"

    def __init__(self, name: str, script: list[DeliveryError | None]) -> None:
        self.name = name
        self.script = script
        self.delivered: list[str] = []
        self.attempts = 0

    def wants(self, payload: dict[str, Any]) -> bool:
        return True

    async def send(self, payload: dict[str, Any], notification_id: str) -> None:
        self.attempts += 1
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        self.delivered.append(notification_id)

    async def close(self) -> None:
        return None


FAST = OutboxConfig(retry_initial=0.01, retry_max=0.05, give_up_after=60)


def test_backoff_doubles_is_capped_and_jittered() -> None:
    hi = [backoff_delay(n, 1.0, 60.0, lambda a, b: b) for n in range(1, 10)]
    assert hi == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert backoff_delay(3, 1.0, 60.0, lambda a, b: a) == 2.0  # jitter spans half to full delay


def test_the_same_notification_id_is_stored_once(state_db: StateDB) -> None:
    box = Outbox(state_db, [ScriptedSink("s", [])], FAST)
    e = OutboxEntry("n1", "s", {"status": "firing"})
    assert box.enqueue([e]) == 1
    assert box.enqueue([e]) == 0
    assert box.depth() == {"s": 1}


async def wait_until(cond: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_retryable_failures_then_success_deliver_exactly_once(state_db: StateDB) -> None:
    sink = ScriptedSink("s", [DeliveryError("HTTP 500"), DeliveryError("timeout"), None])
    box = Outbox(state_db, [sink], FAST)
    await box.start()
    try:
        box.enqueue([OutboxEntry("n1", "s", {})])
        await wait_until(lambda: sink.delivered)
        await asyncio.sleep(0.1)
        assert sink.delivered == ["n1"]
        assert sink.attempts == 3
        assert box.sent["s"] == 1
        assert box.failed["s"] == 2
        assert box.depth() == {}
    finally:
        await box.stop()


async def test_refused_notification_is_dead_lettered_without_retry(state_db: StateDB) -> None:
    sink = ScriptedSink("s", [DeliveryError("HTTP 400: bad payload", retry=False)])
    box = Outbox(state_db, [sink], FAST)
    await box.start()
    try:
        box.enqueue([OutboxEntry("n1", "s", {}), OutboxEntry("n2", "s", {})])
        await wait_until(lambda: sink.delivered == ["n2"])
        await asyncio.sleep(0.1)
        assert sink.attempts == 2
        assert box.dead["s"] == 1
        [dead] = box.dead_letters()
        assert dead["id"] == "n1"
        assert dead["error"] == "HTTP 400: bad payload"
    finally:
        await box.stop()


def _alert(name: str, status: str = "firing", **labels: str) -> dict[str, Any]:
    return {"status": status, "labels": {"alertname": name, "severity": "critical", "host": "h", **labels}}


def test_what_a_lost_notification_carried_is_named_and_bounded() -> None:
    one = {"alerts": [_alert("RpcEndpointDown", endpoint="dead"), _alert("DiskFull", "resolved", mountpoint="/")]}
    assert lost_alerts(one) == 'RpcEndpointDown{endpoint="dead"}'  # the firing ones; host/severity say nothing
    many = {"alerts": [_alert(f"A{i}", path="x" * 500) for i in range(50)]}
    text = lost_alerts(many)
    assert text.startswith('A0{path="' + "x" * 40 + '"}, A1{')
    assert text.endswith(" +47 more")
    assert len(text) < 200
    only_resolved = {"alerts": [_alert("DiskFull", "resolved", mountpoint="/")]}
    assert lost_alerts(only_resolved) == 'resolved: DiskFull{mountpoint="/"}'
    assert lost_alerts({}) == "no alerts"


async def test_a_refused_notification_says_what_it_lost_but_not_about_its_own_sink(state_db: StateDB) -> None:
    refuse = DeliveryError("HTTP 400", retry=False)
    sink = ScriptedSink("s", [refuse, refuse])
    box = Outbox(state_db, [sink], FAST)
    await box.start()
    try:
        box.enqueue([OutboxEntry("n1", "s", {"alerts": [_alert("RpcEndpointDown", endpoint="dead")]})])
        # the page about the dead letter itself, refused by the same sink, is not raised again (no loop)
        box.enqueue([OutboxEntry("n2", "s", {"alerts": [_alert("NotificationDeadLettered", sink="s")]})])
        await wait_until(lambda: box.dead["s"] == 2)
        [(sink_name, lost, at)] = box.lost(0.0)
        assert (sink_name, lost) == ("s", 'RpcEndpointDown{endpoint="dead"}')
        assert box.lost(at) == []  # only what was given up on after `since`
    finally:
        await box.stop()


async def test_undeliverable_for_too_long_is_dead_lettered(state_db: StateDB) -> None:
    now = [1000.0]
    sink = ScriptedSink("s", [DeliveryError("refused")] * 100)
    box = Outbox(state_db, [sink], OutboxConfig(retry_initial=0.01, retry_max=0.01, give_up_after=5),
                 clock=lambda: now[0])
    await box.start()
    try:
        box.enqueue([OutboxEntry("n1", "s", {})])
        await wait_until(lambda: sink.attempts >= 1)
        now[0] += 10
        await wait_until(lambda: box.dead["s"] == 1)
        assert "undeliverable for 5s" in box.dead_letters()[0]["error"]
    finally:
        await box.stop()


async def test_entries_of_a_removed_sink_are_dead_lettered_at_start(state_db: StateDB) -> None:
    Outbox(state_db, [], FAST).enqueue([OutboxEntry("n1", "gone/webhook/0", {})])
    box = Outbox(state_db, [ScriptedSink("s", [])], FAST)
    await box.start()
    await box.stop()
    assert box.dead_letters()[0]["error"] == "the sink is no longer configured"
    assert box.oldest_age() == 0.0


async def test_a_receivers_retry_after_is_waited_out_before_the_next_try(state_db: StateDB) -> None:
    now = [1000.0]
    sink = ScriptedSink("s", [DeliveryError("HTTP 429", retry_after=30.0)])
    box = Outbox(state_db, [sink], FAST, clock=lambda: now[0])
    await box.start()
    try:
        box.enqueue([OutboxEntry("n1", "s", {})])
        await wait_until(lambda: box.failed["s"] == 1)
        # the backoff alone (at most 0.05 s here) would retry at once; the receiver asked for 30 s
        [(next_at,)] = state_db.query("SELECT next_attempt_at FROM alert_outbox WHERE id = 'n1'")
        assert next_at == 1030.0
    finally:
        await box.stop()
