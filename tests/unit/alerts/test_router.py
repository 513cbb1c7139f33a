"""Routing: grouping and its timers, routes, inhibition, silences, escalation levels."""

from __future__ import annotations

from pathlib import Path

from mevwatch.alerts.router import Silences, is_inhibited, matching_routes, route_specs
from mevwatch.alerts.rules import Alert
from mevwatch.daemon.config import load_config_text
from mevwatch.daemon.state import StateDB
from tests.unit.alerts._helpers import Harness, gauge

RULES = """
  rules:
    - {name: NodeDown, metric: node_up, op: "==", threshold: 0, severity: critical,
       summary: "{{ $labels.endpoint }} down", runbook: peer-loss}
    - {name: PeersLow, metric: node_peers, op: "<", threshold: 10, summary: "peers low", runbook: peer-loss}
    - {name: DiskFull, metric: disk_ratio, op: ">", threshold: 0.85, summary: "disk", runbook: disk-full}
"""
RECEIVERS = """
  receivers:
    - {name: oncall, log_configs: [{}]}
    - {name: lead, log_configs: [{}]}
    - {name: director, log_configs: [{}]}
    - {name: db, log_configs: [{}]}
    - {name: log, log_configs: [{}]}
"""


def make(tmp_path: Path, extra: str) -> Harness:
    return Harness(tmp_path, "  default_rules: false\n  startup_grace: 0s\n" + RULES + RECEIVERS + extra)


def test_group_wait_batches_then_group_interval_then_repeat(tmp_path: Path) -> None:
    h = make(tmp_path, "  receiver: oncall\n  group_by: [alertname]\n  group_wait: 30s\n"
                       "  group_interval: 5m\n  repeat_interval: 4h\n")
    h.put(gauge("disk_ratio", 0.9, mountpoint="/"))
    h.advance(10)
    h.put(gauge("disk_ratio", 0.9, mountpoint="/"), gauge("disk_ratio", 0.95, mountpoint="/data"))
    h.advance(19)
    assert h.notifications() == []  # still in group_wait
    h.advance(1)
    [first] = h.notifications()
    assert sorted(a["labels"]["mountpoint"] for a in first["alerts"]) == ["/", "/data"]
    assert first["groupLabels"] == {"alertname": "DiskFull", "host": "vm"}
    assert first["commonLabels"]["alertname"] == "DiskFull"
    assert "mountpoint" not in first["commonLabels"]
    h.put(gauge("disk_ratio", 0.9, mountpoint="/"), gauge("disk_ratio", 0.95, mountpoint="/data"),
          gauge("disk_ratio", 0.99, mountpoint="/var"))
    h.advance(60)
    assert len(h.notifications()) == 1  # a change waits for group_interval
    h.advance(240)
    assert len(h.notifications()) == 2
    assert len(h.notifications()[1]["alerts"]) == 3
    h.advance(3600)
    assert len(h.notifications()) == 2  # unchanged: nothing until repeat_interval
    h.advance(4 * 3600)
    assert len(h.notifications()) == 3
    h.close()


def test_routes_match_labels_first_match_wins_unless_continue(tmp_path: Path) -> None:
    cfg = load_config_text(
        "collectors: []\nalerts:\n  default_rules: false\n" + RECEIVERS + """
  receiver: oncall
  routes:
    - {receiver: db, matchers: ['alertname="DiskFull"'], continue: true}
    - {receiver: lead, matchers: ['severity="critical"']}
    - {receiver: director, matchers: ['severity=~"crit.*"']}
""")
    specs = route_specs(cfg.daemon.alerts)
    rx = [s.receiver for s in matching_routes(specs, {"alertname": "DiskFull", "severity": "critical"})]
    assert rx == ["db", "lead"]
    assert [s.receiver for s in matching_routes(specs, {"alertname": "X", "severity": "warning"})] == ["oncall"]


def test_node_down_inhibits_peers_low_for_the_same_endpoint_only(tmp_path: Path) -> None:
    h = make(tmp_path, "  group_wait: 0s\n  group_by: [alertname, endpoint]\n"
                       "  inhibit_rules:\n    - source_matchers: ['alertname=\"NodeDown\"']\n"
                       "      target_matchers: ['alertname=\"PeersLow\"']\n      equal: [endpoint]\n")
    h.put(gauge("node_up", 0, endpoint="erigon"))
    h.put(gauge("node_up", 0, endpoint="erigon"), gauge("node_peers", 0, endpoint="erigon"),
          gauge("node_peers", 2, endpoint="geth"))
    names = sorted((a["labels"]["alertname"], a["labels"]["endpoint"]) for n in h.notifications() for a in n["alerts"])
    assert names == [("NodeDown", "erigon"), ("PeersLow", "geth")]
    h.close()


def test_default_inhibition_rule_is_node_down_over_peer_alerts() -> None:
    cfg = load_config_text("collectors: []\n").daemon.alerts
    src = Alert("NodeDown", "a", {"alertname": "NodeDown", "endpoint": "e1"}, {}, "firing", 0, 0)
    tgt = Alert("HeadLag", "b", {"alertname": "HeadLag", "endpoint": "e1"}, {}, "firing", 5, 0)
    other = Alert("HeadLag", "c", {"alertname": "HeadLag", "endpoint": "e2"}, {}, "firing", 5, 0)
    assert is_inhibited(tgt, [src, tgt], cfg.inhibit_rules)
    assert not is_inhibited(other, [src, other], cfg.inhibit_rules)
    assert not is_inhibited(src, [src, tgt], cfg.inhibit_rules)


def test_silence_mutes_until_expired(tmp_path: Path) -> None:
    h = make(tmp_path, "  group_wait: 0s\n  group_by: [alertname, mountpoint]\n")
    sil = h.engine.router.silences.add(['alertname="DiskFull"', 'mountpoint=~"/data.*"'], 3600, "ops", "resize")
    h.put(gauge("disk_ratio", 0.9, mountpoint="/data"), gauge("disk_ratio", 0.9, mountpoint="/"))
    assert [a["labels"]["mountpoint"] for n in h.notifications() for a in n["alerts"]] == ["/"]
    assert h.engine.router.silences.expire(sil.id)
    assert not h.engine.router.silences.expire(sil.id)  # already expired
    h.advance(1)
    assert sorted(a["labels"]["mountpoint"] for n in h.notifications() for a in n["alerts"]) == ["/", "/data"]
    h.close()


def test_silences_are_shared_through_the_state_db(state_db: StateDB) -> None:
    a = Silences(state_db)
    s = a.add(['alertname="X"'], 60, "me", "why")
    b = Silences(state_db)
    assert [x.id for x in b.list()] == [s.id]
    assert b.mutes({"alertname": "X"}, s.starts_at + 1)
    assert not b.mutes({"alertname": "Y"}, s.starts_at + 1)
    assert not b.mutes({"alertname": "X"}, s.ends_at + 1)


def test_escalation_routes_a_still_firing_alert_to_the_next_levels(tmp_path: Path) -> None:
    h = make(tmp_path, """  receiver: oncall
  group_wait: 0s
  escalation:
    - {after: 15m, receiver: lead}
    - {after: 1h, receiver: director}
""")
    h.put(gauge("node_up", 0, endpoint="erigon"))
    assert [n["receiver"] for n in h.notifications()] == ["oncall"]
    h.advance(14 * 60)
    assert len(h.notifications()) == 1
    h.advance(60)
    assert [n["receiver"] for n in h.notifications()] == ["oncall", "lead"]
    h.advance(45 * 60)
    assert [n["receiver"] for n in h.notifications()] == ["oncall", "lead", "director"]
    h.put(gauge("node_up", 1, endpoint="erigon"))
    h.advance(300)
    resolved = sorted(n["receiver"] for n in h.notifications() if n["status"] == "resolved")
    assert resolved == ["director", "lead", "oncall"]  # everyone paged hears it is over
    h.close()


def test_an_alert_resolved_before_escalation_never_reaches_the_next_level(tmp_path: Path) -> None:
    h = make(tmp_path, "  receiver: oncall\n  group_wait: 0s\n  escalation: [{after: 15m, receiver: lead}]\n")
    h.put(gauge("node_up", 0, endpoint="erigon"))
    h.advance(60)
    h.put(gauge("node_up", 1, endpoint="erigon"))
    h.advance(3600)
    assert {n["receiver"] for n in h.notifications()} == {"oncall"}
    h.close()


def test_alertmanager_receiver_resends_firing_and_recently_resolved_alerts(tmp_path: Path) -> None:
    h = Harness(tmp_path, "  default_rules: false\n" + RULES + """  receivers:
    - name: am
      alertmanager_configs: [{urls: ["http://127.0.0.1:9093"], resend_delay: 1m}]
  receiver: am
""")
    h.put(gauge("node_up", 0, endpoint="erigon"))
    assert len(h.notifications()) == 1  # no group_wait for an Alertmanager
    h.advance(30)
    assert len(h.notifications()) == 1
    h.advance(31)
    assert len(h.notifications()) == 2  # re-sent every resend_delay while firing
    h.put(gauge("node_up", 1, endpoint="erigon"))
    notes = h.notifications()
    assert len(notes) == 3  # the resolve goes out at once
    assert notes[-1]["alerts"][0]["status"] == "resolved"
    for _ in range(15):
        h.advance(60)
    statuses = [n["alerts"][0]["status"] for n in h.notifications()]
    assert statuses.count("resolved") >= 14  # the resolved alert is re-sent for 15 minutes
    n = len(statuses)
    h.advance(600)
    assert len(h.notifications()) == n  # and then no more


def test_alertmanager_alerts_get_ends_at_four_resend_delays_ahead() -> None:
    from mevwatch.alerts.router import rfc3339
    from mevwatch.alerts.sinks.alertmanager import alertmanager_alerts

    firing = {"status": "firing", "labels": {"alertname": "A"}, "annotations": {"summary": "s", "description": ""},
              "startsAt": rfc3339(100), "endsAt": "0001-01-01T00:00:00Z"}
    resolved = {**firing, "status": "resolved", "endsAt": rfc3339(150)}
    out = alertmanager_alerts({"alerts": [firing, resolved]}, now=1000, ends_in=4 * max(1, 60))
    assert out[0]["endsAt"] == rfc3339(1240)
    assert out[0]["annotations"] == {"summary": "s"}
    assert out[1]["endsAt"] == rfc3339(150)
