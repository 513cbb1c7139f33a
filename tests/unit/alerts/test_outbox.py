"""The outbox: persisted before sending, acked deletes, retries with backoff, 4xx and expiry dead-letter."""

from __future__ import annotations

import asyncio
from typing import Any

from mevwatch.alerts.config import OutboxConfig
from mevwatch.alerts.outbox import Outbox, OutboxEntry, backoff_delay, fallback_id, lost_alerts
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


class ReceiverSink(ScriptedSink):
    """A scripted sink of a named receiver, keeping what it was sent."""

    def __init__(self, receiver: str, script: list[DeliveryError | None]) -> None:
        super().__init__(f"{receiver}/webhook/0", script)
        self.receiver = receiver
        self.payloads: list[dict[str, Any]] = []

    async def send(self, payload: dict[str, Any], notification_id: str) -> None:
        self.payloads.append(payload)
        await super().send(payload, notification_id)


def _notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "receiver": "pager", "status": "firing", "groupKey": "{}:{alertname=\"X\"}",
            "commonAnnotations": {"summary": "s"}, "alerts": list(alerts)}


def _full(name: str, **labels: str) -> dict[str, Any]:
    return {**_alert(name, **labels), "annotations": {"summary": f"{name} fires", "runbook_url": "rb#x"},
            "startsAt": "2026-12-04T10:00:00.000000Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://h:9717/#alert-f1", "fingerprint": "f1", "value": 0.0}


async def test_a_refused_notification_is_resent_in_full_to_every_fallback_sink_once(state_db: StateDB) -> None:
    pager = ReceiverSink("pager", [DeliveryError("HTTP 400: bad", retry=False)])
    backup, chat = ReceiverSink("backup", []), ReceiverSink("chat", [])
    box = Outbox(state_db, [pager, backup, chat], FAST, fallback={"pager": ["backup", "chat"]})
    await box.start()
    try:
        alert = _full("RpcEndpointDown", endpoint="dead")
        box.enqueue([OutboxEntry("n1", pager.name, _notification(alert))])
        await wait_until(lambda: backup.delivered and chat.delivered)
        await asyncio.sleep(0.1)
        assert pager.attempts == 1
        assert box.dead[pager.name] == 1
        for sink in (backup, chat):
            [payload] = sink.payloads
            assert sink.delivered == [fallback_id("n1", sink.name)]
            assert payload["receiver"] == sink.receiver
            [got] = payload["alerts"]
            # everything the pager would have shown, and why it did not
            assert {k: v for k, v in got.items() if k != "annotations"} == {
                k: v for k, v in alert.items() if k != "annotations"}
            assert got["annotations"] == {**alert["annotations"], "undelivered_to": "pager/webhook/0",
                                          "undelivered_reason": "HTTP 400: bad"}
            assert payload["commonAnnotations"]["undelivered_to"] == "pager/webhook/0"
        assert box.depth() == {}
    finally:
        await box.stop()


async def test_each_fallback_copy_is_counted_for_the_sink_it_is_queued_for(state_db: StateDB) -> None:
    pager = ReceiverSink("pager", [DeliveryError("HTTP 400: bad", retry=False)] * 2)
    backup, chat = ReceiverSink("backup", []), ReceiverSink("chat", [])
    box = Outbox(state_db, [pager, backup, chat], FAST, fallback={"pager": ["backup", "chat"]})
    await box.start()
    try:
        box.enqueue([OutboxEntry("n1", pager.name, _notification(_full("RpcEndpointDown")))])
        box.enqueue([OutboxEntry("n2", pager.name, {"alerts": []})])  # nothing in it: nothing to resend
        await wait_until(lambda: len(backup.delivered) == 1 and len(chat.delivered) == 1 and box.dead[pager.name] == 2)
        assert box.counters()["resent"] == {backup.name: 1, chat.name: 1}
    finally:
        await box.stop()


async def test_a_removed_receivers_notifications_go_to_the_default_receiver(state_db: StateDB) -> None:
    """A reload removed the pager while its notification waited: it is resent in full, not dropped."""
    alert = _full("RpcEndpointDown", endpoint="dead")
    Outbox(state_db, [], FAST).enqueue([OutboxEntry("n1", "pager/webhook/0", _notification(alert))])
    backup, chat = ReceiverSink("backup", []), ReceiverSink("chat", [])
    box = Outbox(state_db, [backup, chat], FAST, fallback={"backup": ["chat"], "chat": ["backup"]},
                 orphan_fallback=["backup"])
    await box.start()
    try:
        await wait_until(lambda: backup.delivered)
        await asyncio.sleep(0.1)
        assert backup.delivered == [fallback_id("n1", backup.name)]
        assert chat.delivered == []
        [got] = backup.payloads[0]["alerts"]
        assert got["annotations"] == {**alert["annotations"], "undelivered_to": "pager/webhook/0",
                                      "undelivered_reason": "the sink is no longer configured"}
        assert [d["id"] for d in box.dead_letters()] == ["n1"]
        assert box.counters()["resent"] == {backup.name: 1}
    finally:
        await box.stop()


async def test_a_removed_sink_of_a_kept_receiver_goes_to_that_receivers_fallbacks(state_db: StateDB) -> None:
    Outbox(state_db, [], FAST).enqueue([OutboxEntry("n1", "pager/webhook/1", _notification(_full("DiskFull")))])
    Outbox(state_db, [], FAST).enqueue([OutboxEntry(fallback_id("n0", "pager/webhook/1"), "pager/webhook/1",
                                                    _notification(_full("DiskFull")))])
    pager, backup, chat = ReceiverSink("pager", []), ReceiverSink("backup", []), ReceiverSink("chat", [])
    box = Outbox(state_db, [pager, backup, chat], FAST, fallback={"pager": ["chat"]}, orphan_fallback=["backup"])
    await box.start()
    try:
        await wait_until(lambda: chat.delivered)
        await asyncio.sleep(0.1)
        assert chat.delivered == [fallback_id("n1", chat.name)]
        # a fallback copy whose sink went goes nowhere else, as one refused would
        assert (pager.delivered, backup.delivered) == ([], [])
        assert len(box.dead_letters()) == 2
    finally:
        await box.stop()


async def test_a_fallback_that_is_refused_too_does_not_bounce_back(state_db: StateDB) -> None:
    refuse = DeliveryError("HTTP 400", retry=False)
    pager, backup = ReceiverSink("pager", [refuse] * 5), ReceiverSink("backup", [refuse] * 5)
    box = Outbox(state_db, [pager, backup], FAST, fallback={"pager": ["backup"], "backup": ["pager"]})
    await box.start()
    try:
        box.enqueue([OutboxEntry("n1", pager.name, _notification(_full("RpcEndpointDown")))])
        await wait_until(lambda: box.dead[backup.name] == 1)
        await asyncio.sleep(0.2)
        assert (pager.attempts, backup.attempts) == (1, 1)
        assert sorted(d["id"] for d in box.dead_letters()) == ["n1", fallback_id("n1", backup.name)]
        assert box.depth() == {}
    finally:
        await box.stop()


async def test_a_notification_undeliverable_for_too_long_falls_back_too(state_db: StateDB) -> None:
    now = [1000.0]
    pager, backup = ReceiverSink("pager", [DeliveryError("HTTP 503")] * 100), ReceiverSink("backup", [])
    box = Outbox(state_db, [pager, backup], OutboxConfig(retry_initial=0.01, retry_max=0.01, give_up_after=5),
                 clock=lambda: now[0], fallback={"pager": ["backup"]})
    await box.start()
    try:
        box.enqueue([OutboxEntry("n1", pager.name, _notification(_full("DiskFull")))])
        await wait_until(lambda: pager.attempts >= 1)
        now[0] += 10
        await wait_until(lambda: backup.delivered)
        reason = backup.payloads[0]["alerts"][0]["annotations"]["undelivered_reason"]
        assert reason == "undeliverable for 5s: HTTP 503"
    finally:
        await box.stop()


async def test_a_fallback_queued_before_a_restart_is_sent_once_after_it(state_db: StateDB) -> None:
    pager = ReceiverSink("pager", [DeliveryError("HTTP 400", retry=False)])
    down = ReceiverSink("backup", [DeliveryError("HTTP 500")] * 1000)
    box = Outbox(state_db, [pager, down], FAST, fallback={"pager": ["backup"]})
    await box.start()
    box.enqueue([OutboxEntry("n1", pager.name, _notification(_full("RpcEndpointDown")))])
    await wait_until(lambda: box.dead[pager.name] == 1 and down.attempts >= 1)
    await box.stop()
    assert box.depth() == {down.name: 1}  # the fallback is in the state DB, not only in memory
    backup = ReceiverSink("backup", [])
    again = Outbox(state_db, [ReceiverSink("pager", []), backup], FAST, fallback={"pager": ["backup"]})
    await again.start()
    try:
        await wait_until(lambda: backup.delivered)
        await asyncio.sleep(0.1)
        assert backup.delivered == [fallback_id("n1", backup.name)]
        assert again.depth() == {}
    finally:
        await again.stop()


async def test_a_lost_page_about_lost_notifications_is_not_paged_again(state_db: StateDB) -> None:
    refuse = DeliveryError("HTTP 400", retry=False)
    sink = ScriptedSink("s", [refuse] * 3)
    box = Outbox(state_db, [sink], FAST)
    await box.start()
    try:
        about = {"sink": "other/webhook/0", "lost": 'RpcEndpointDown{endpoint="dead"}'}
        # a page about another sink's loss, refused: paging about it again would loop while both refuse
        box.enqueue([OutboxEntry("n1", "s", {"alerts": [_alert("NotificationDeadLettered", **about)]})])
        # in a group with a real alert, only the real one is named, so the name stays the same as the pages grow
        box.enqueue([OutboxEntry("n2", "s", {"alerts": [_alert("NotificationDeadLettered", **about),
                                                        _alert("DiskFull", mountpoint="/")]})])
        await wait_until(lambda: box.dead["s"] == 2)
        assert [lost for _, lost, _ in box.lost(0.0)] == ['DiskFull{mountpoint="/"}']
    finally:
        await box.stop()


async def test_what_alertmanager_keeps_refusing_is_resent_to_the_fallback_when_it_changes(state_db: StateDB) -> None:
    refuse = DeliveryError("HTTP 400", retry=False)
    am = ReceiverSink("am", [refuse] * 3)
    am.name, am.kind = "am/alertmanager/0", "alertmanager"
    backup = ReceiverSink("backup", [])
    box = Outbox(state_db, [am, backup], FAST, fallback={"am": ["backup"]})
    await box.start()
    try:
        one = _full("DiskFull")
        # resent every resend_delay, refused every time: the backup hears of it once, then of the change
        box.enqueue([OutboxEntry("n1", am.name, _notification(one)), OutboxEntry("n2", am.name, _notification(one))])
        box.enqueue([OutboxEntry("n3", am.name, _notification(one, {**_full("HeadStale"), "fingerprint": "f2"}))])
        await wait_until(lambda: box.dead[am.name] == 3 and len(backup.delivered) == 2)
        await asyncio.sleep(0.1)
        assert backup.delivered == [fallback_id("n1", backup.name), fallback_id("n3", backup.name)]
    finally:
        await box.stop()
