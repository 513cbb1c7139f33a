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
    assert first["groupLabels"] == {"alertname": "DiskFull"}
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
