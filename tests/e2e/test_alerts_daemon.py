"""The alert engine inside a real ``mevwatch run``: kill -9 with a pending notification, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.daemon import RunningDaemon, sample_value
from tests.support.webhook import WebhookReceiver

CONFIG = """collectors:
  - process: {{interval: 500ms}}
alerts:
  default_rules: false
  startup_grace: 5s
  group_wait: 0s
  outbox: {{retry_initial: 200ms, retry_max: 500ms}}
  receivers:
    - name: hook
      webhook_configs: [{{url: "{url}", timeout: 1s}}]
  receiver: hook
  rules:
    - name: MevwatchThreads
      metric: mevwatch_process_threads
      op: ">"
      threshold: 0
      summary: "mevwatch runs {{{{ $value }}}} threads on {{{{ $labels.host }}}}"
      runbook: collector-failing
"""


def _wait_metric(d: RunningDaemon, name: str, pred: object, timeout: float = 15.0, **labels: str) -> float:
    deadline = time.monotonic() + timeout
    v = None
    while time.monotonic() < deadline:
        v = sample_value(d.get(), name, **labels)
        if v is not None and callable(pred) and pred(v):
            return v
        time.sleep(0.1)
    raise AssertionError(f"{name}{labels} = {v} after {timeout}s")


def test_kill_9_with_a_pending_notification_then_restart_delivers_exactly_once(tmp_path: Path) -> None:
    receiver = WebhookReceiver()  # not started yet: the webhook is down
    text = CONFIG.format(url=receiver.url)
    with RunningDaemon(tmp_path, text) as d:
        _wait_metric(d, "mevwatch_alert_outbox_depth", lambda v: v == 1, sink="hook/webhook/0")
        _wait_metric(d, "mevwatch_notifications_failed_total", lambda v: v >= 1, sink="hook/webhook/0")
        assert d.proc is not None
        os.killpg(d.proc.pid, signal.SIGKILL)
        d.proc.wait(10)
    receiver.start()
    try:
        with RunningDaemon(tmp_path, text) as d:
            [got] = receiver.wait_delivered(1, timeout=15)
            _wait_metric(d, "mevwatch_alert_outbox_depth", lambda v: v == 0, sink="hook/webhook/0")
            time.sleep(3)  # the restored alert keeps firing: no second page
            assert len(receiver.delivered()) == 1
            assert got.json()["alerts"][0]["labels"]["alertname"] == "MevwatchThreads"
            assert sample_value(d.get(), "mevwatch_alerts", state="firing", severity="warning") == 1
    finally:
        receiver.stop()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mevwatch", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**os.environ, "STATE_DIRECTORY": str(cwd / "state")})


def test_alerts_test_reports_each_sink(tmp_path: Path) -> None:
    receiver = WebhookReceiver().start()
    try:
        cfg = tmp_path / "m.yaml"
        cfg.write_text(f"""collectors: []
alerts:
  receivers:
    - name: good
      webhook_configs: [{{url: "{receiver.url}"}}]
      log_configs: [{{}}]
    - name: bad
      webhook_configs: [{{url: "http://127.0.0.1:1/hook", timeout: 1s}}]
  receiver: good
""")
        ok = _cli("alerts", "test", "--config", str(cfg), "--receiver", "good", cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
        assert "good/log/0: ok" in ok.stdout
        assert "good/webhook/0: ok" in ok.stdout
        [got] = receiver.wait_delivered(1)
        assert got.json()["alerts"][0]["labels"]["alertname"] == "MevwatchTestNotification"
        bad = _cli("alerts", "test", "--config", str(cfg), cwd=tmp_path)
        assert bad.returncode == 1
        assert "bad/webhook/0: FAILED: http://127.0.0.1:1/***: Cannot connect to host 127.0.0.1:1" in bad.stdout
        unknown = _cli("alerts", "test", "--config", str(cfg), "--receiver", "nope", cwd=tmp_path)
        assert unknown.returncode == 2
        assert "unknown receiver 'nope'; known: good, bad" in unknown.stderr
    finally:
        receiver.stop()


def test_silence_add_list_expire(tmp_path: Path) -> None:
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\ncollectors: []\n")
    add = _cli("silence", "add", "-c", str(cfg), "--matcher", 'alertname="DiskSpaceHigh"', "--matcher",
               'mountpoint=~"/data.*"', "--duration", "2h", "--comment", "resizing", "--author", "ops", cwd=tmp_path)
    assert add.returncode == 0, add.stderr
    sid = add.stdout.split()[0]
    assert 'alertname="DiskSpaceHigh", mountpoint=~"/data.*"' in add.stdout
    listed = _cli("silence", "list", "-c", str(cfg), cwd=tmp_path)
    assert f"{sid}  active" in listed.stdout
    assert "resizing" in listed.stdout
    assert _cli("silence", "expire", "-c", str(cfg), sid, cwd=tmp_path).returncode == 0
    assert _cli("silence", "list", "-c", str(cfg), cwd=tmp_path).stdout.strip() == "no silences"
    assert f"{sid}  expired" in _cli("silence", "list", "--all", "-c", str(cfg), cwd=tmp_path).stdout
    again = _cli("silence", "expire", "-c", str(cfg), sid, cwd=tmp_path)
    assert again.returncode == 1
    assert f"no active silence {sid!r}" in again.stderr
    bad = _cli("silence", "add", "-c", str(cfg), "--matcher", "x=~(", "--duration", "1h", cwd=tmp_path)
    assert bad.returncode == 2
    assert "bad regex in matcher" in bad.stderr
    bad = _cli("silence", "add", "-c", str(cfg), "--matcher", "x=1", "--duration", "soon", cwd=tmp_path)
    assert bad.returncode == 2
    assert "--duration: invalid duration 'soon'" in bad.stderr


def test_sighup_reload_applies_new_rules_and_keeps_the_outbox(tmp_path: Path) -> None:
    receiver = WebhookReceiver().start()
    try:
        quiet = CONFIG.format(url=receiver.url).replace('op: ">"', 'op: "<"')  # never true: no alert
        with RunningDaemon(tmp_path, quiet) as d:
            d.wait_for("mevwatch_alert_rules")
            time.sleep(1.5)
            assert receiver.requests == []
            d.config.write_text(CONFIG.format(url=receiver.url))
            assert d.proc is not None
            d.proc.send_signal(signal.SIGHUP)
            [got] = receiver.wait_delivered(1, timeout=15)
            assert got.json()["alerts"][0]["labels"]["alertname"] == "MevwatchThreads"
            d.config.write_text("alerts: {rules: [{name: X}]}\ncollectors: []\n")
            d.proc.send_signal(signal.SIGHUP)  # a bad file is rejected; the engine keeps running
            _wait_metric(d, "mevwatch_config_last_reload_successful", lambda v: v == 0)
            _wait_metric(d, "mevwatch_alerts", lambda v: v == 1, state="firing", severity="warning")
            assert len(receiver.delivered()) == 1
    finally:
        receiver.stop()


def test_log_sink_writes_a_structured_event(tmp_path: Path) -> None:
    text = CONFIG.format(url="http://127.0.0.1:1/unused").replace(
        "  receiver: hook\n", "    - {name: log, log_configs: [{level: error}]}\n  receiver: log\n")
    with RunningDaemon(tmp_path, text, env={"NO_COLOR": "1"}) as d:
        d.wait_for("mevwatch_notifications_sent_total", sink="log/log/0")
        deadline = time.monotonic() + 10
        while '"event": "alert_notification"' not in d.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    line = next(ln for ln in d.log.read_text().splitlines() if '"event": "alert_notification"' in ln)
    event = json.loads(line)
    assert event["level"] == "error"
    assert event["alertname"] == "MevwatchThreads"
    assert event["status"] == "firing"
    assert event["runbook_url"] == f"http://{socket.gethostname()}:{d.port}/runbooks#collector-failing"
    assert event["summary"].startswith("mevwatch runs ")
