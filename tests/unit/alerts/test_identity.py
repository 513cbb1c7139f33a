"""Notification identity: Alertmanager's group key format, host in every key, ids stable across restarts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mevwatch.alerts.identity import group_key, group_labels, incident_id, route_key
from mevwatch.alerts.matchers import parse_matcher
from tests.unit.alerts._helpers import Harness, gauge

ALERTS = """  host: {host}
  default_rules: false
  group_wait: 0s
  receivers: [{{name: hook, log_configs: [{{}}]}}]
  receiver: hook
  routes:
    - {{receiver: hook, matchers: ['severity="critical"', 'alertname=~"Disk.*"']}}
  rules:
    - {{name: DiskFull, metric: disk_ratio, op: ">", threshold: 0.85, severity: critical,
       summary: "disk", runbook: disk-full}}
    - {{name: RatioHigh, metric: test_ratio, op: ">", threshold: 0.9, summary: s, runbook: memory-high}}
"""


def test_route_and_group_keys_are_written_as_alertmanager_writes_them() -> None:
    assert route_key(None) == "{}"
    # pkg/labels Matchers are sorted by name, then value; values escaped as in OpenMetrics
    matchers = [parse_matcher('severity="critical"'), parse_matcher('alertname=~"Disk.*"'),
                parse_matcher('note="a \\"b\\""')]
    assert route_key(matchers) == '{}/{alertname=~"Disk.*",note="a \\"b\\"",severity="critical"}'
    key = group_key("{}", {"host": "mev-1", "alertname": "DiskFull"})
    # model.LabelSet.String(): sorted, ", "-joined, Go-quoted values
    assert key == '{}:{alertname="DiskFull", host="mev-1"}'
    assert group_key("{}", {"x": 'tab\there "q" \\'}) == '{}:{x="tab\\there \\"q\\" \\\\"}'
    assert incident_id(key) == hashlib.sha256(key.encode()).hexdigest()


def test_group_labels_always_carry_the_host() -> None:
    labels = {"alertname": "A", "host": "h1", "mountpoint": "/"}
    assert group_labels(labels, ["alertname"]) == {"alertname": "A", "host": "h1"}
    assert group_labels(labels, ["alertname", "missing"]) == {"alertname": "A", "host": "h1"}


def _outbox(h: Harness) -> list[tuple[str, str]]:
    rows = h.db.query("SELECT id, payload FROM alert_outbox ORDER BY created_at, rowid")
    return [(str(i), json.loads(p)["groupKey"]) for i, p in rows]


def test_two_hosts_with_the_same_alert_have_distinct_group_keys_and_ids(tmp_path: Path) -> None:
    seen = []
    for host in ("mev-1", "mev-2"):
        h = Harness(tmp_path / host, ALERTS.format(host=host))
        try:
            h.put(gauge("disk_ratio", 0.9, mountpoint="/"))
            h.advance(1)
            [(nid, key)] = _outbox(h)
            seen.append((nid, key))
        finally:
            h.close()
    (id1, key1), (id2, key2) = seen
    assert key1 == '{}/{alertname=~"Disk.*",severity="critical"}:{alertname="DiskFull", host="mev-1"}'
    assert key2 == '{}/{alertname=~"Disk.*",severity="critical"}:{alertname="DiskFull", host="mev-2"}'
    assert id1 != id2


def test_a_restart_keeps_the_group_key_and_never_reuses_a_notification_id(tmp_path: Path) -> None:
    h = Harness(tmp_path, ALERTS.format(host="mev-1"))
    try:
        h.put(gauge("test_ratio", 0.95))
        h.advance(1)
        [(_, first_key)] = _outbox(h)
        h.restart()
        h.put(gauge("test_ratio", 0.5))  # resolves after the restart: same group, next notification
        h.advance(301)  # group_interval
        rows = _outbox(h)
        assert [k for _, k in rows] == [first_key, first_key]
        assert first_key == '{}:{alertname="RatioHigh", host="mev-1"}'
        assert len({i for i, _ in rows}) == 2
    finally:
        h.close()
