"""Who silences an alert, as mevwatch's screens say it: Alertmanager's silences as the watch last read them
(fleet mode: shown only), UNKNOWN when no Alertmanager answers or the read is old, never "not silenced"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mevwatch.alerts.amsilences import AlertmanagerError, AlertmanagerWatch, parse_silences
from mevwatch.alerts.api import CollectorsRead, engine_view
from mevwatch.alerts.config import AlertmanagerSilencesConfig
from mevwatch.alerts.engine import MIGRATIONS
from mevwatch.alerts.listing import add_silencing, state_rows
from mevwatch.alerts.matchers import parse_matcher
from mevwatch.alerts.router import Silence, rfc3339
from mevwatch.alerts.silencing import (
    SilenceRead,
    alert_silencing,
    clear_read,
    concerning,
    load_read,
    save_read,
    source_json,
)
from mevwatch.daemon.config import ConfigError, load_config_text
from mevwatch.daemon.landing import landing_html
from mevwatch.daemon.state import StateDB
from tests.support.peers import free_port
from tests.support.threadedapp import ThreadedApp
from tests.unit.alerts._helpers import FLEET as BASE
from tests.unit.alerts._helpers import Clock, Harness, gauge

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20Z
LABELS = {"alertname": "EngineHealthDown", "host": "mev-1", "severity": "critical", "target": "engine"}
FLEET = BASE.replace('["http://127.0.0.1:1"]', '["http://127.0.0.1:1", "http://127.0.0.1:2"]')  # a two-peer cluster


def _silence(sid: str, *matchers: str, ends: float = NOW + 3600, by: str = "alice",
             comment: str = "maintenance") -> Silence:
    return Silence(sid, tuple(parse_matcher(m) for m in matchers), NOW - 60, ends, by, comment)


def _read(*silences: Silence, read_at: float | None = NOW - 3, mutes: bool = False) -> SilenceRead:
    return SilenceRead("http://127.0.0.1:9093", silences, read_at, read_at, None, "", 40.0, mutes)


def test_fleet_mode_reads_the_receivers_alertmanagers_by_default_and_only_shows_their_silences() -> None:
    fleet = load_config_text(FLEET, "m.yaml").daemon.alerts
    assert fleet.alertmanager_silences is None
    source = fleet.silence_source
    assert source is not None
    assert (source.urls, source.refresh_interval, source.timeout) == (
        ["http://127.0.0.1:1", "http://127.0.0.1:2"], 15.0, 5.0)
    assert fleet.silences_mute is False
    # set in fleet mode: accepted (no longer refused), its URLs and pace used, still only shown
    given = load_config_text(FLEET + "  alertmanager_silences: {urls: ['http://127.0.0.1:3/'], refresh_interval: 2s}\n",
                             "m.yaml").daemon.alerts
    assert given.silence_source is not None
    assert (given.silence_source.urls, given.silence_source.refresh_interval) == (["http://127.0.0.1:3"], 2.0)
    assert given.silences_mute is False
    # standalone: read only when configured, and then they also hold the direct sinks' pages
    standalone = load_config_text("collectors: []\n", "m.yaml").daemon.alerts
    assert (standalone.silence_source, standalone.silences_mute) == (None, False)
    muting = load_config_text("collectors: []\nalerts:\n  alertmanager_silences: {urls: ['http://127.0.0.1:3']}\n",
                              "m.yaml").daemon.alerts
    assert muting.silence_source == AlertmanagerSilencesConfig(urls=["http://127.0.0.1:3"])
    assert muting.silences_mute is True
    # without urls: the alertmanager receivers' (the pace set, e.g. for a test)
    paced = load_config_text(FLEET + "  alertmanager_silences: {refresh_interval: 500ms}\n", "m.yaml").daemon.alerts
    assert paced.silence_source is not None
    assert (paced.silence_source.urls, paced.silence_source.refresh_interval) == (
        ["http://127.0.0.1:1", "http://127.0.0.1:2"], 0.5)
    with pytest.raises(ConfigError) as exc:
        load_config_text("collectors: []\nalerts:\n  alertmanager_silences: {}\n", "m.yaml")
    assert [str(i) for i in exc.value.issues] == [
        "m.yaml:3: alerts: alertmanager_silences.urls: none given, and no receiver has alertmanager_configs whose "
        "URLs it could default to"]


def test_an_alert_held_by_an_alertmanager_silence_names_it_its_author_comment_and_end() -> None:
    read = _read(_silence("4f1c", 'alertname="EngineHealthDown"', 'host="mev-1"'))
    got = alert_silencing(LABELS, [], read, NOW)
    assert got["state"] == "silenced"
    assert got["text"] == ('silenced in Alertmanager by 4f1c (alice: "maintenance", ends at 2023-11-14 23:13:20Z)')
    [by] = got["by"]
    assert (by["id"], by["source"], by["createdBy"], by["comment"], by["endsAt"]) == (
        "4f1c", "alertmanager", "alice", "maintenance", rfc3339(NOW + 3600))
    assert by["matchers"] == ['alertname="EngineHealthDown"', 'host="mev-1"']
    # another alert, or the silence over: not silenced, and the read's age says how current that is
    other = alert_silencing({**LABELS, "alertname": "Other"}, [], read, NOW)
    assert other == {"state": "not silenced", "by": [], "text": "not silenced (Alertmanager's silences read 3s ago)"}
    later = replace(read, read_at=NOW + 3601, checked_at=NOW + 3601)
    assert alert_silencing(LABELS, [], later, NOW + 3601)["state"] == "not silenced"
    # no Alertmanager read (standalone without a source): local silences alone tell
    assert alert_silencing(LABELS, [], None, NOW) == {"state": "not silenced", "by": [], "text": "not silenced"}
    local = alert_silencing(LABELS, [_silence("9a", 'target="engine"', by="bob", comment="")], None, NOW)
    assert local["text"] == 'silenced locally by 9a (bob: "", ends at 2023-11-14 23:13:20Z)'


def test_when_no_alertmanager_answers_the_silence_state_is_unknown_never_not_silenced() -> None:
    held = _silence("4f1c", 'alertname="EngineHealthDown"')
    down = _read(held).failed(NOW - 1, "http://127.0.0.1:9093: Connection refused")
    got = alert_silencing(LABELS, [], down, NOW)
    assert got["state"] == "unknown"
    assert got["by"] == []
    assert got["text"] == (
        "silence state UNKNOWN: no Alertmanager answered since 2023-11-14 22:13:19Z; last read 2023-11-14 22:13:17Z "
        "(3s ago), when 4f1c silenced it")
    # a later failed poll keeps the first moment it stopped answering
    assert down.failed(NOW + 5, "again").unreachable_since == NOW - 1
    # an alert no silence held at the last read is unknown too: it may have been silenced since
    assert alert_silencing({**LABELS, "alertname": "Other"}, [], down, NOW)["state"] == "unknown"
    # never read since the start
    fresh = replace(_read(), read_at=None, checked_at=None)
    assert alert_silencing(LABELS, [], fresh, NOW)["text"] == (
        "silence state UNKNOWN: Alertmanager's silences are not read yet")
    # a read older than the watch's pace (the daemon stopped): unknown, however it ended
    old = _read(held, read_at=NOW - 300)
    assert alert_silencing(LABELS, [], old, NOW)["text"].startswith(
        "silence state UNKNOWN: mevwatch has not asked Alertmanager since 2023-11-14 22:08:20Z (5m ago; "
        "is it running?)")
    # standalone: while unknown its silences mute nothing, and the screen says the page goes out
    assert alert_silencing(LABELS, [], replace(down, mutes=True), NOW)["text"].endswith(
        "; meanwhile they mute nothing: the direct sinks page")
    # a local silence still holds it whatever Alertmanager's state
    assert alert_silencing(LABELS, [_silence("9a", 'target="engine"')], down, NOW)["state"] == "silenced"


def test_the_silences_section_shows_those_that_can_hold_this_hosts_alerts_and_the_reads_state() -> None:
    mine, other, every = (_silence("a", 'host="mev-1"'), _silence("b", 'host="mev-2"', 'alertname="X"'),
                          _silence("c", 'alertname="Watchdog"'))
    assert concerning([mine, other, every], "mev-1") == [mine, every]
    doc = source_json(_read(mine, other, every), "mev-1", NOW)
    assert doc["state"] == "read"
    assert doc["effect"] == "display"
    assert [s["id"] for s in doc["silences"]] == ["a", "c"]
    assert doc["text"] == ("read from http://127.0.0.1:9093 3s ago: 3 active, 2 that can hold this host's alerts "
                           "(shown here; Alertmanager applies them to what mevwatch sends it)")
    down = source_json(_read(mine).failed(NOW, "refused"), "mev-1", NOW)
    assert (down["state"], down["silences"], down["unreachableSince"]) == ("unknown", [], rfc3339(NOW))
    assert down["text"].startswith("UNKNOWN: no Alertmanager answered since 2023-11-14 22:13:20Z (refused)")


def test_parse_silences_keeps_active_ones_and_refuses_a_regex_it_cannot_read() -> None:
    def doc(value: str, state: str = "active") -> dict[str, Any]:
        return {"id": "s1", "status": {"state": state}, "createdBy": "alice", "comment": "c",
                "startsAt": "2023-11-14T22:00:00Z", "endsAt": "2023-11-14T23:00:00.5Z",
                "matchers": [{"name": "alertname", "value": value, "isRegex": True, "isEqual": True}]}

    [s] = parse_silences([doc("Engine.*"), doc("x", "expired")])
    assert (s.id, str(s.matchers[0]), s.ends_at) == ("s1", 'alertname=~"Engine.*"', NOW + 2800.5)
    with pytest.raises(AlertmanagerError, match="unreadable silence"):
        parse_silences([doc("Engine(")])


def test_the_read_kept_in_the_state_db_is_the_one_the_engine_had(tmp_path: Path) -> None:
    db = StateDB.open_dir(tmp_path / "state")
    try:
        db.migrate("alerts_engine", MIGRATIONS)
        assert load_read(db) is None
        read = _read(_silence("a", 'host=~"mev-.*"', 'target!="x"'), _silence("b", 'alertname!~"W.*"')).failed(
            NOW, "refused")
        save_read(db, read)
        assert load_read(db) == read
        clear_read(db)
        assert load_read(db) is None
    finally:
        db.close()


@contextmanager
def _alertmanager(answer: dict[str, Any]) -> Iterator[str]:
    """A stand-in for GET /api/v2/silences answering ``answer["status"]`` with ``answer["silences"]``."""
    async def silences(_: web.Request) -> web.Response:
        return web.json_response(answer["silences"], status=answer["status"])

    def build() -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v2/silences", silences)
        return app

    server = ThreadedApp("alertmanager", free_port(), build)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def _last(watch: AlertmanagerWatch) -> SilenceRead:
    assert watch.last_read is not None
    return watch.last_read


async def test_the_watch_keeps_its_last_read_and_since_when_alertmanager_stopped_answering() -> None:
    answer: dict[str, Any] = {"status": 200, "silences": [{
        "id": "s1", "status": {"state": "active"}, "createdBy": "alice", "comment": "c",
        "startsAt": "2023-11-14T22:00:00Z", "endsAt": "2023-11-14T23:00:00Z",
        "matchers": [{"name": "host", "value": "mev-1", "isRegex": False}]}]}
    clock = Clock(NOW)
    with _alertmanager(answer) as url:
        watch = AlertmanagerWatch(AlertmanagerSilencesConfig(urls=[url], timeout=2.0), [], clock, mutes=False)
        try:
            assert _last(watch).unknown_reason(NOW) == "Alertmanager's silences are not read yet"
            await watch.poll()
            read = _last(watch)
            assert (read.read_at, read.unreachable_since, [s.id for s in read.silences]) == (NOW, None, ["s1"])
            assert read.stale_after == 2 * (15.0 + 2.0)
            answer["status"] = 503
            clock.t += 1
            await watch.poll()
            clock.t += 1
            await watch.poll()
            read = _last(watch)
            assert (read.read_at, read.checked_at, read.unreachable_since) == (NOW, NOW + 2, NOW + 1)
            assert "HTTP 503" in read.error
            assert [s.id for s in read.silences] == ["s1"]  # what the last read said, shown as such
            assert watch.silences == []  # and muting nothing
            answer["status"] = 200
            clock.t += 1
            await watch.poll()
            read = _last(watch)
            assert (read.read_at, read.unreachable_since, read.error) == (NOW + 3, None, "")
        finally:
            await watch.stop()


def test_fleet_mode_sends_a_silenced_alert_and_every_screen_names_the_silence_or_says_unknown(
        tmp_path: Path) -> None:
    alerts = FLEET.split("alerts:\n", 1)[1] + """  host: mev-1
  group_wait: 0s
  rules:
    - {name: EngineHealthDown, metric: test_up, op: "==", threshold: 0, severity: critical, summary: s,
       runbook: engine-down}
"""
    h = Harness(tmp_path, alerts, Clock(NOW))
    try:
        watch = h.engine.am_watch
        assert watch is not None
        assert watch.last_read is not None
        watch.last_read = replace(watch.last_read, silences=(_silence("4f1c", 'alertname="EngineHealthDown"'),),
                                  read_at=NOW, checked_at=NOW)
        h.put(gauge("test_up", 0, target="engine"))
        h.advance(1)
        # fleet mode: Alertmanager gets it unfiltered, and applies its silence itself
        sent = [a["labels"]["alertname"] for n in h.notifications("fleet/alertmanager/0") for a in n["alerts"]]
        assert sent == ["EngineHealthDown"]

        view = engine_view(h.engine, CollectorsRead())
        [alert] = view["alerts"]
        assert alert["status"] == {"state": "suppressed", "silencedBy": ["4f1c"], "inhibitedBy": []}
        assert alert["silencing"]["text"].startswith('silenced in Alertmanager by 4f1c (alice: "maintenance", ')
        # the silence mutes the page, not the fault: WARN, not CRIT, and never a green OK
        assert alert["verdict"] == {"status": "WARN", "reason": "silenced: counts as WARN, not CRIT"}
        assert view["verdict"] == "WARN"
        assert [(s["id"], s["source"]) for s in view["silences"]] == [("4f1c", "alertmanager")]
        page = landing_html([], view, "")
        assert "silenced in Alertmanager by 4f1c (alice: &quot;maintenance&quot;, ends at" in page
        assert "<td>4f1c</td><td>Alertmanager http://127.0.0.1:1</td>" in page
        assert "Alertmanager&#39;s silences: read from http://127.0.0.1:1 1s ago" in page
        assert "1 firing (1 silenced)" in page
        assert '<span class="WARN counts">silenced: counts as WARN, not CRIT</span>' in page

        # the state DB holds what `mevwatch alerts list` shows, the same words
        h.engine._polled()
        rows = state_rows(h.db)
        add_silencing(h.db, rows, "fleet", NOW + 1)
        assert [r["silencing"] for r in rows] == [alert["silencing"]]

        # Alertmanager stops answering: unknown everywhere, the alert counts again
        h.clock.t += 1
        watch.last_read = watch.last_read.failed(h.clock(), "http://127.0.0.1:9093: Connection refused")
        view = engine_view(h.engine, CollectorsRead())
        [alert] = view["alerts"]
        assert alert["status"] == {"state": "active", "silencedBy": [], "inhibitedBy": []}
        assert alert["silencing"]["state"] == "unknown"
        assert alert["verdict"] == {"status": "CRIT", "reason": ""}
        assert view["verdict"] == "CRIT"
        assert view["silences"] == []
        page = landing_html([], view, "")
        assert ('<span class="UNKNOWN silencing">silence state UNKNOWN: no Alertmanager answered since '
                '2023-11-14 22:13:22Z') in page
        assert "1 firing (1 whose silence state is UNKNOWN)" in page
        assert "not silenced" not in page
        assert '<p id="alertmanager-silences" class="UNKNOWN">Alertmanager&#39;s silences: UNKNOWN: ' in page
        h.engine._polled()
        rows = state_rows(h.db)
        add_silencing(h.db, rows, "fleet", h.clock())
        assert rows[0]["silencing"]["state"] == "unknown"
        # a daemon that stopped leaves a read that ages into unknown for `mevwatch alerts list` too
        watch.last_read = replace(watch.last_read, unreachable_since=None, read_at=h.clock(), error="")
        h.engine._polled()
        add_silencing(h.db, rows, "fleet", h.clock() + 3600)
        assert "mevwatch has not asked Alertmanager since" in rows[0]["silencing"]["text"]
        assert json.loads(json.dumps(view))  # the view is JSON as served
    finally:
        h.close()


def test_without_a_silence_source_the_engine_drops_a_read_kept_from_an_earlier_config(tmp_path: Path) -> None:
    h = Harness(tmp_path, FLEET.split("alerts:\n", 1)[1])
    try:
        h.engine._polled()
        assert load_read(h.db) is not None
        standalone = Harness(tmp_path, "  default_rules: false\n")
        assert standalone.engine.am_watch is None
        assert load_read(h.db) is None
        standalone.close()
    finally:
        h.close()
