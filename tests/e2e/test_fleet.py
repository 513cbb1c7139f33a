"""A fleet, all real processes on loopback: three mevwatch hosts, an HA pair of Prometheus servers built from
deploy/prometheus/prometheus.yml, a two-peer Alertmanager cluster built from deploy/alertmanager/alertmanager.yml,
a webhook receiver, and a central Prometheus taking remote_write.

mev-1 and mev-2 run in fleet mode (alerts to both Alertmanager peers), mev-3 standalone with a direct webhook
and the cluster as its silence source. Each host probes its own path on one engine stub, whose status the
test flips to make an incident (EngineHealthDown) on the host it chooses.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from mevwatch.alerts.identity import group_key, route_key
from mevwatch.alerts.matchers import parse_matcher
from tests.support.daemon import RunningDaemon, sample_value
from tests.support.engine import Behaviour, EngineStub
from tests.support.fullstack import Prometheus, wait_until
from tests.support.peers import REPO, free_port, need_binary, start_alertmanager, start_process, stop_process
from tests.support.webhook import Received, WebhookReceiver

pytestmark = [pytest.mark.slow, pytest.mark.peer("prometheus"), pytest.mark.peer("alertmanager")]

HOSTS = ("mev-1", "mev-2", "mev-3")
RULE = "EngineHealthDown"
HOST_DOWN_FOR = 2.0  # MevwatchHostDown's `for` in this test (1m shipped)
# Documented time to page (docs/fleet.md): for + scrape interval + evaluation interval + group_wait, here
# 0 + 1 + 1 + 1 s (mevwatch: its 1 s probe + 1 s tick + Alertmanager's group_wait), with room for 2 cores.
PAGE_WITHIN = 10.0
# one runbook location for the fleet, so the alert carries the same link whichever path raised it
RUNBOOKS = "https://runbooks.example.org/mevwatch.md"

HOST_CONFIG = """collectors:
  - http:
      interval: 1s
      targets: [{{name: engine, url: '{engine}', timeout: 1s}}]
alerts:
  mode: {mode}
  host: {host}
  runbook_url: {runbooks}
  default_rules: false
  evaluation_interval: 1s
  startup_grace: 0s
  group_wait: 0s
  group_interval: 1s
  outbox: {{retry_initial: 200ms, retry_max: 1s}}
  receivers:
{receivers}
  receiver: main
  rules:
    - name: {rule}
      metric: mevwatch_http_up
      matchers: ['target="engine"']
      op: "=="
      threshold: 0
      severity: critical
      summary: "Engine probe {{{{ $labels.target }}}} fails on {{{{ $labels.host }}}}"
      runbook: engine-down
"""


@dataclass
class Fleet:
    tmp: Path
    receiver: WebhookReceiver
    engine: EngineStub
    hosts: dict[str, RunningDaemon] = field(default_factory=dict)
    am: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    prom: list[Prometheus] = field(default_factory=list)
    central: Prometheus | None = None
    federator: Prometheus | None = None

    def engine_fails(self, host: str, failing: bool = True) -> None:
        self.engine.behaviours[f"/{host}"] = Behaviour(status=500 if failing else 200, body={"status": "ok"})

    def pages(self, path: str = "/hook") -> list[Received]:
        return [r for r in self.receiver.delivered() if r.path == path]

    def notifications(self, alertname: str, host: str, status: str = "firing") -> list[dict[str, Any]]:
        out = []
        for r in self.pages():
            body = r.json()
            if body["groupLabels"] == {"alertname": alertname, "host": host} and body["status"] == status:
                out.append(body)
        return out

    def am_alerts(self, url: str, *filters: str) -> list[dict[str, Any]]:
        query = "&".join(f"filter={urllib.parse.quote(f)}" for f in filters)
        with urllib.request.urlopen(f"{url}/api/v2/alerts?active=true&silenced=true&inhibited=true&{query}",
                                    timeout=5) as resp:
            result: list[dict[str, Any]] = json.loads(resp.read())
        return result


def _receivers(host: str, mode: str, am_urls: list[str], hook: str) -> str:
    am = f"      alertmanager_configs: [{{urls: {json.dumps(am_urls)}, timeout: 2s, resend_delay: 1s}}]\n"
    if mode == "fleet":
        return "    - name: main\n" + am + "      log_configs: [{}]\n"
    return (f"    - name: main\n      webhook_configs: [{{url: '{hook}/direct', timeout: 2s}}]\n"
            f"  alertmanager_silences: {{urls: {json.dumps(am_urls)}, refresh_interval: 500ms, timeout: 1s}}\n")


def _alertmanager_config(hook: str) -> str:
    doc = yaml.safe_load((REPO / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    route = doc["route"]
    route.update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    heartbeat, oncall = route["routes"]
    heartbeat.update(group_wait="0s", group_interval="1s", repeat_interval="2s")
    oncall["group_wait"] = "1s"
    for rc in doc["receivers"]:
        rc["webhook_configs"][0]["url"] = f"{hook}/{'heartbeat' if rc['name'] == 'heartbeat' else 'hook'}"
    return yaml.safe_dump(doc)


def _prometheus_config(fleet: Fleet, replica: str, rule_files: list[Path], am_urls: list[str], central: str) -> str:
    doc = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    doc["global"].update(scrape_interval="1s", evaluation_interval="1s")
    doc["global"]["external_labels"]["replica"] = replica
    doc["rule_files"] = [str(p) for p in rule_files]
    doc["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [u.split("//")[1] for u in am_urls]}]
    job = doc["scrape_configs"][0]
    job["scrape_timeout"] = "1s"
    job["static_configs"] = [{"targets": [f"127.0.0.1:{d.port}"], "labels": {"host": h}}
                             for h, d in fleet.hosts.items()]
    doc["remote_write"][0]["url"] = f"{central}/api/v1/write"
    doc["remote_write"][0]["queue_config"]["batch_send_deadline"] = "1s"
    return yaml.safe_dump(doc)


def _start_prometheus(tmp: Path, name: str, config: str, *flags: str, port: int | None = None) -> Prometheus:
    port = port or free_port()
    (tmp / f"{name}.yml").write_text(config)
    proc = start_process([need_binary("prometheus"), f"--config.file={tmp / f'{name}.yml'}",
                          f"--storage.tsdb.path={tmp / f'{name}-data'}", f"--web.listen-address=127.0.0.1:{port}",
                          "--log.level=warn", *flags], port=port, log=tmp / f"{name}.log")
    prom = Prometheus(port, proc)
    wait_until(f"{name} ready", lambda: _ok(f"http://127.0.0.1:{port}/-/ready"), 30.0)
    return prom


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def fleet(tmp: Path) -> Iterator[Fleet]:
    receiver = WebhookReceiver().start()
    hook = f"http://127.0.0.1:{receiver.port}"
    with EngineStub() as engine, contextlib.ExitStack() as stack:
        stack.callback(receiver.stop)
        f = Fleet(tmp, receiver, engine)
        ports = [(free_port(), free_port()) for _ in range(2)]  # (web, cluster) per Alertmanager peer
        am_urls = [f"http://127.0.0.1:{web}" for web, _ in ports]
        (tmp / "am.yml").write_text(_alertmanager_config(hook))
        for i, (web, cluster) in enumerate(ports):
            proc = start_alertmanager(tmp, f"am{i}", tmp / "am.yml", web, cluster, [ports[1 - i][1]])
            stack.callback(stop_process, proc)
            f.am.append((am_urls[i], proc))
        for host in HOSTS:
            f.engine_fails(host, False)
            mode = "standalone" if host == "mev-3" else "fleet"
            d = tmp / host
            d.mkdir()
            text = HOST_CONFIG.format(engine=engine.url(f"/{host}"), mode=mode, host=host, rule=RULE, runbooks=RUNBOOKS,
                                      receivers=_receivers(host, mode, am_urls, hook))
            f.hosts[host] = stack.enter_context(RunningDaemon(d, text))
        rules = tmp / "mevwatch-rules.yml"
        export = _cli("rules", "export", "--config", str(f.hosts["mev-1"].config), "-o", str(rules))
        assert export.returncode == 0, export.stderr
        watchers = yaml.safe_load((REPO / "deploy" / "prometheus" / "fleet-rules.yml").read_text())
        for r in watchers["groups"][0]["rules"]:
            if r["alert"] == "MevwatchHostDown":
                r["for"] = f"{HOST_DOWN_FOR:g}s"
        (tmp / "fleet-rules.yml").write_text(yaml.safe_dump(watchers))
        f.central = _start_prometheus(tmp, "central", "global: {evaluation_interval: 1s}\n",
                                      "--web.enable-remote-write-receiver")
        stack.callback(stop_process, f.central.proc)
        central = f"http://127.0.0.1:{f.central.port}"
        site_ports = [free_port(), free_port()]
        # the pull alternative: the shipped central.yml federating both members of the pair
        federate = yaml.safe_load((REPO / "deploy" / "prometheus" / "central.yml").read_text())
        [job] = federate["scrape_configs"]
        job.update(scrape_interval="1s", scrape_timeout="1s")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{p}" for p in site_ports]}]
        f.federator = _start_prometheus(tmp, "federator", yaml.safe_dump(federate))
        stack.callback(stop_process, f.federator.proc)
        for replica, port in zip(("prometheus-a", "prometheus-b"), site_ports, strict=True):
            config = _prometheus_config(f, replica, [rules, tmp / "fleet-rules.yml"], am_urls, central)
            prom = _start_prometheus(tmp, replica, config, "--rules.alert.resend-delay=1s", port=port)
            stack.callback(stop_process, prom.proc)
            f.prom.append(prom)
        for prom in f.prom:
            wait_until("three hosts scraped", lambda p=prom: _up_hosts(p) == set(HOSTS), 20.0)
        yield f


def _up_hosts(prom: Prometheus) -> set[str]:
    return {r["metric"]["host"] for r in prom.query('up{job="mevwatch"} == 1')}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mevwatch", *args], capture_output=True, text=True, timeout=60,
                          env=os.environ.copy())


def _waits(what: str, check: Callable[[], Any], timeout: float) -> float:
    """Wait until ``check()`` is truthy; returns the seconds it took."""
    start = time.monotonic()
    wait_until(what, check, timeout)
    return time.monotonic() - start


def _firing_labels(prom: Prometheus, alertname: str, host: str) -> list[dict[str, str]]:
    return [r["metric"] for r in prom.query(f'ALERTS{{alertname="{alertname}",host="{host}",alertstate="firing"}}')]


def test_fleet_one_page_per_incident_one_place_to_silence_and_the_watchers_watched(tmp_path: Path) -> None:
    with fleet(tmp_path) as f:
        am_a, am_b = (url for url, _ in f.am)
        # each host labels its alerts as Prometheus knows it: the contract's check finds nothing to say
        mismatch = ('mevwatch_alerting_info unless on (host) '
                    'label_replace(mevwatch_alerting_info, "host", "$1", "alerts_host", "(.*)")')
        wait_until("mevwatch_alerting_info of every host", lambda: len(f.prom[0].query("mevwatch_alerting_info")) == 3,
                   10)
        assert f.prom[0].query(mismatch) == []
        # the mode shows on the landing page and in /health
        assert "Alerting: fleet mode on host mev-1" in f.hosts["mev-1"].get("/")
        assert json.loads(f.hosts["mev-3"].get("/health"))["alerting"] == {
            "enabled": True, "mode": "standalone", "host": "mev-3",
            "external_url": f"http://mev-3:{f.hosts['mev-3'].port}"}

        # -- one incident on one host: exactly one notification, naming the host, with the runbook link
        f.engine_fails("mev-1")
        took = _waits("mev-1 paged", lambda: f.notifications(RULE, "mev-1"), PAGE_WITHIN)
        # both paths raised it: mevwatch (fleet mode) and both Prometheus servers from the exported rule
        wait_until("mevwatch sent it to Alertmanager", lambda: (sample_value(
            f.hosts["mev-1"].get(), "mevwatch_notifications_sent_total", sink="main/alertmanager/0") or 0) >= 1, 10)
        for prom in f.prom:
            wait_until("Prometheus fires it", lambda p=prom: _firing_labels(p, RULE, "mev-1"), 10)
        [held] = f.am_alerts(am_a, f'alertname="{RULE}"')  # one alert in Alertmanager for the three sources
        assert held["labels"] == {"alertname": RULE, "host": "mev-1", "severity": "critical", "target": "engine"}
        time.sleep(3)  # several resends from each source and Alertmanager group_intervals: still one page
        [page] = f.notifications(RULE, "mev-1")
        [alert] = page["alerts"]
        assert alert["labels"]["host"] == "mev-1"
        assert alert["annotations"]["runbook_url"] == f"{RUNBOOKS}#engine-down"
        assert alert["annotations"]["summary"] == "Engine probe engine fails on mev-1"
        assert took < PAGE_WITHIN
        print(f"incident to page: {took:.1f}s")

        # -- the same incident on a second host: a second, distinct notification
        f.engine_fails("mev-2")
        wait_until("mev-2 paged", lambda: f.notifications(RULE, "mev-2"), PAGE_WITHIN)
        [page2] = f.notifications(RULE, "mev-2")
        assert page2["groupKey"] != page["groupKey"]
        assert page2["groupKey"].endswith(':{alertname="EngineHealthDown", host="mev-2"}')
        # mevwatch's own key for that group is the one Alertmanager sent (route: severity="critical")
        crit = route_key([parse_matcher('severity="critical"')])
        assert page2["groupKey"] == group_key(crit, {"alertname": RULE, "host": "mev-2"})
        assert len(f.notifications(RULE, "mev-1")) == 1

        # -- the central Prometheus answers a fleet query with all three hosts
        central = f.central
        assert central is not None
        wait_until("central store has every host", lambda: {
            r["metric"]["host"] for r in central.query('sum by (host) (mevwatch_alerts{state="firing"})')
        } == set(HOSTS), 20)
        firing = {r["metric"]["host"]: float(r["value"][1])
                  for r in central.query('max by (host) (sum by (host, replica) (mevwatch_alerts{state="firing"}))')}
        assert firing["mev-1"] >= 1
        assert firing["mev-3"] == 0
        wait_until("alerts remote-written", lambda: {r["metric"]["host"] for r in central.query(
            f'count by (host) (ALERTS{{alertname="{RULE}",alertstate="firing"}})')} == {"mev-1", "mev-2"}, 20)
        # federation, the alternative, answers the same questions from both members of the pair
        federator = f.federator
        assert federator is not None
        wait_until("federated hosts and alerts", lambda: {r["metric"]["host"] for r in federator.query(
            f'count by (host) (ALERTS{{alertname="{RULE}",alertstate="firing"}})')} == {"mev-1", "mev-2"}, 20)
        replicas = {(r["metric"]["host"], r["metric"]["replica"])
                    for r in federator.query("group by (host, replica) (mevwatch_build_info)")}
        assert replicas == {(h, r) for h in HOSTS for r in ("prometheus-a", "prometheus-b")}

        # -- one Alertmanager silence mutes every path, mev-3's direct webhook in standalone mode included
        added = _cli("silence", "add", "--config", str(f.hosts["mev-3"].config), "--alertmanager",
                     "-m", f'alertname="{RULE}"', "-m", 'host="mev-3"', "-d", "10m", "--comment", "e2e")
        assert added.returncode == 0, added.stderr
        silence_id = added.stdout.split()[0]
        wait_until("silence gossiped", lambda: _silences(am_b) >= 1, 10)
        wait_until("mev-3 read the silence", lambda: sample_value(
            f.hosts["mev-3"].get(), "mevwatch_silences_active") == 1, 10)
        f.engine_fails("mev-3")
        wait_until("mev-3 firing in mevwatch", lambda: sample_value(
            f.hosts["mev-3"].get(), "mevwatch_alerts", state="firing", severity="critical") == 1, 10)
        wait_until("mev-3 firing in Prometheus", lambda: _firing_labels(f.prom[0], RULE, "mev-3"), 10)
        time.sleep(3)
        assert f.notifications(RULE, "mev-3") == []
        assert f.pages("/direct") == []
        # the silence was what held it: expired, mev-3's direct sink pages at once
        with urllib.request.urlopen(urllib.request.Request(f"{am_a}/api/v2/silence/{silence_id}",
                                                           method="DELETE"), timeout=5):
            pass
        wait_until("mev-3 direct page after the silence", lambda: f.pages("/direct"), PAGE_WITHIN)
        wait_until("mev-3 Alertmanager page after the silence", lambda: f.notifications(RULE, "mev-3"),
                   PAGE_WITHIN)

        # -- one Prometheus and one Alertmanager peer killed mid-incident: no page lost, none doubled
        stop_process(f.prom[0].proc)
        stop_process(f.am[0][1])
        f.engine_fails("mev-1", False)
        wait_until("mev-1 resolved", lambda: f.notifications(RULE, "mev-1", "resolved"), 15)
        f.engine_fails("mev-1")
        wait_until("mev-1 paged again", lambda: len(f.notifications(RULE, "mev-1")) == 2, 15)
        time.sleep(3)
        assert len(f.notifications(RULE, "mev-1")) == 2
        assert len(f.notifications(RULE, "mev-1", "resolved")) == 1
        assert len(f.notifications(RULE, "mev-2")) == 1

        # -- one mevwatch killed: MevwatchHostDown pages for it within the documented time
        victim = f.hosts["mev-2"].proc
        assert victim is not None
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)
        took = _waits("HostDown paged", lambda: f.notifications("MevwatchHostDown", "mev-2"),
                      HOST_DOWN_FOR + PAGE_WITHIN)
        assert took < HOST_DOWN_FOR + PAGE_WITHIN
        print(f"mevwatch killed to MevwatchHostDown page: {took:.1f}s (for: {HOST_DOWN_FOR:g}s)")
        [down] = f.notifications("MevwatchHostDown", "mev-2")
        assert down["alerts"][0]["annotations"]["runbook_url"] == "docs/runbooks.md#host-down"

        # -- the dead man's switch arrives while the path works, and stops when it is cut
        beats = f.pages("/heartbeat")
        assert len(beats) >= 2
        assert {b.json()["groupLabels"]["alertname"] for b in beats} == {"Watchdog"}
        stop_process(f.prom[1].proc)  # no Prometheus left: nothing evaluates the Watchdog
        # Alertmanager lets it end 4 x resend delay (4 s) after the last send; then no more heartbeats
        time.sleep(6)
        stopped = len(f.pages("/heartbeat"))
        time.sleep(5)
        assert len(f.pages("/heartbeat")) == stopped


def _silences(url: str) -> int:
    with urllib.request.urlopen(f"{url}/api/v2/silences", timeout=5) as resp:
        return sum(1 for s in json.loads(resp.read()) if s["status"]["state"] == "active")
