"""``mevwatch diagnose``: collectors run once, judged by the rules, exit code by the worst line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.peers import REPO, free_port

BASE = """\
state_dir: {state}
alerts:
  default_rules: true
  rules:
    - name: TooManyFds
      metric: mevwatch_process_open_fds
      op: ">"
      threshold: {fds}
      severity: warning
      summary: "fds"
      runbook: collector-failing
collectors:
  - process: {{}}
"""


def run(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    return subprocess.run([sys.executable, "-m", "mevwatch", "diagnose", "--config", str(cfg), "--no-daemon", *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def test_all_ok_exits_0(tmp_path: Path) -> None:
    proc = run(tmp_path, BASE.format(state=tmp_path / "s", fds=100000))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK       TooManyFds (mevwatch_process_open_fds > 100000)" in proc.stdout
    assert "-> OK" in proc.stdout


def test_a_warning_exits_1_and_names_the_value(tmp_path: Path) -> None:
    proc = run(tmp_path, BASE.format(state=tmp_path / "s", fds=0), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "WARN"
    line = next(ln for ln in report["lines"] if ln["check"].startswith("TooManyFds"))
    assert line["status"] == "WARN"
    assert line["value"].startswith("!")
    assert line["runbook"] == "collector-failing"


def test_engine_down_is_critical_exit_2(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    text = BASE.format(state=tmp_path / "s", fds=100000) + (
        f"  - http:\n      targets:\n        - {{name: health, url: 'http://127.0.0.1:{port}/health'}}\n"
    )
    proc = run(tmp_path, text)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "[Engine health endpoint down]" in proc.stdout
    assert "CRIT     EngineHealthDown" in proc.stdout


def test_section_runs_only_that_section(tmp_path: Path) -> None:
    port = free_port()
    text = BASE.format(state=tmp_path / "s", fds=0) + (
        f"  - http:\n      targets:\n        - {{name: health, url: 'http://127.0.0.1:{port}/health'}}\n"
    )
    proc = run(tmp_path, text, "--section", "engine-down", "--json")
    lines = json.loads(proc.stdout)["lines"]
    assert {ln["section"] for ln in lines} == {"engine-down"}
    assert not any(ln["check"].startswith("TooManyFds") for ln in lines)
    bad = run(tmp_path, text, "--section", "nonsense")
    assert bad.returncode == 2
    assert "unknown section 'nonsense'" in bad.stderr


def test_bad_config_exits_2_with_position(tmp_path: Path) -> None:
    proc = run(tmp_path, "collectors:\n  - process: {bogus: 1}\n")
    assert proc.returncode == 2
    assert "c.yaml:2: collectors[0].process.bogus: unknown key" in proc.stderr


def test_largest_files_are_named_in_diagnose_not_in_metrics(tmp_path: Path) -> None:
    watched = tmp_path / "logs"
    watched.mkdir()
    (watched / "runaway.log").write_bytes(b"x" * 5000)
    text = f"state_dir: {tmp_path / 's'}\ncollectors:\n  - directories:\n      paths: ['{watched}']\n"
    proc = run(tmp_path, text, "--section", "directories", "--json")
    lines = json.loads(proc.stdout)["lines"]
    named = [ln for ln in lines if ln["check"] == f"largest file 1 under {watched}"]
    assert named, lines
    assert named[0]["value"].endswith(str(watched / "runaway.log"))
    assert named[0]["section"] == "disk-full"


def test_nothing_to_watch_is_a_warning_not_a_green_board(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    text = f"""state_dir: {tmp_path / 's'}
collectors:
  - logwatch:
      sources: [{{name: mev, paths: ["{empty}/mev/*.log"]}}]
      journal: {{enabled: false}}
  - backups:
      patterns: ["{empty}/backup/mev-full-*"]
  - integrity:
      files: ["{empty}/etc/mev/config.yaml"]
"""
    proc = run(tmp_path, text, "--json")
    lines = {ln["check"].split(" ")[0]: ln for ln in json.loads(proc.stdout)["lines"]}
    for gap in ("MonitoringGapLogSource", "MonitoringGapBackupMissing", "MonitoringGapIntegrityBaseline",
                "MonitoringGapIntegrityNothingWatched"):
        assert lines[gap]["status"] == "WARN", (gap, lines.get(gap))
    assert lines["MonitoringGapLogSource"]["value"].startswith("!")
    assert proc.returncode == 1, proc.stdout + proc.stderr


def test_the_daemons_lines_say_who_silences_a_firing_alert_or_that_nobody_can_tell() -> None:
    from mevwatch.daemon.diagnose import daemon_lines

    def alert(endpoint: str, state: str = "firing") -> dict[str, Any]:
        return {"labels": {"alertname": "RpcEndpointDown", "host": "h", "severity": "critical", "endpoint": endpoint},
                "state": state, "value": 0, "summary": f"RPC endpoint {endpoint} is down (refused)"}

    rule = {"name": "RpcEndpointDown", "condition": "mevwatch_rpc_up == 0", "state": "firing", "severity": "critical",
            "runbook": "rpc-down", "alerts": [alert("a"), alert("b"), alert("c"), alert("d", "pending")],
            "series": [], "reason": ""}
    held = {"state": "silenced", "by": [], "text": "silenced in Alertmanager by s1 (alice: \"x\", ends at T)"}
    unknown = {"state": "unknown", "by": [], "text": "silence state UNKNOWN: no Alertmanager answered since T"}
    plain = {"state": "not silenced", "by": [], "text": "not silenced (Alertmanager's silences read 1s ago)"}
    doc = {"health": {"collectors": []}, "rules": [rule],
           "alerts": [{**alert("a"), "silencing": held}, {**alert("b"), "silencing": unknown},
                      {**alert("c"), "silencing": plain}, {**alert("d", "pending"), "silencing": unknown}],
           "silence_source": {"state": "read", "text": "read from http://am:9093 1s ago: 1 active"}}
    lines = {ln.check: ln for ln in daemon_lines(doc, "http://x", {"rpc"})}
    assert (lines["Alertmanager silences"].status, lines["Alertmanager silences"].value) == (
        "OK", "read from http://am:9093 1s ago: 1 active")
    assert (lines["RpcEndpointDown a silence"].status, lines["RpcEndpointDown a silence"].value) == (
        "INFO", held["text"])
    assert (lines["RpcEndpointDown b silence"].status, lines["RpcEndpointDown b silence"].value) == (
        "UNKNOWN", unknown["text"])
    assert "RpcEndpointDown c silence" not in lines  # not silenced, as the rule's firing line says
    assert "RpcEndpointDown d silence" not in lines  # pending: nothing pages yet
    assert lines["RpcEndpointDown (mevwatch_rpc_up == 0)"].status == "CRIT"  # silenced or not, the host is down
    for endpoint in "abcd":  # each alert's own facts, as its page carries them
        assert lines[f"RpcEndpointDown {endpoint}"].value == f"RPC endpoint {endpoint} is down (refused)"
    doc["silence_source"] = {"state": "unknown", "text": "UNKNOWN: no Alertmanager answered since T"}
    assert {ln.check: ln.status for ln in daemon_lines(doc, "http://x", {"rpc"})}["Alertmanager silences"] == "UNKNOWN"


def test_without_a_daemon_what_needs_its_history_or_state_is_unknown_with_why_never_ok(tmp_path: Path) -> None:
    from mevwatch.daemon.config import load_config

    log = tmp_path / "mev.log"
    log.write_text("2026-01-01T00:00:00Z ERROR strategy: bundle rejected\n")
    port = free_port()  # where the config's daemon would listen: nobody does
    text = f"""state_dir: {tmp_path / 's'}
web: {{listen_address: "127.0.0.1:{port}"}}
collectors:
  - rpc: {{endpoints: [{{name: dead, url: "http://127.0.0.1:{free_port()}"}}]}}
  - logwatch: {{journal: {{enabled: false}}, sources: [{{name: mev, paths: ["{log}"], patterns: [error]}}]}}
"""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "mevwatch", "diagnose", "--config", str(cfg), "--json"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    lines = {ln["check"].split(" ")[0]: ln for ln in json.loads(proc.stdout)["lines"]}
    nobody = f"no daemon answered at http://127.0.0.1:{port} ("
    windowed = {r.name: r.window for r in load_config(cfg).daemon.alerts.all_rules if r.window}
    for name in ("RpcLatencyHigh", "ServiceLogErrors", "NoSpaceLeftLogged"):  # over a window: one run has no history
        assert lines[name]["status"] == "UNKNOWN", lines[name]
        assert lines[name]["value"].startswith(f"needs {windowed[name]:g}s of history; {nobody}"), lines[name]
    assert not [ln for name, ln in lines.items() if name in windowed and ln["status"] != "UNKNOWN"]
    # the breaker's state is the daemon's memory of its runs: a fresh one here would say a closed breaker
    breaker = lines["RpcCircuitBreakerOpen"]
    assert breaker["status"] == "UNKNOWN", breaker
    assert breaker["value"].startswith("the circuit breaker's state lives in the daemon"), breaker
    assert nobody in breaker["value"]
    # what one run can judge it judges: the refused port is down
    assert lines["RpcEndpointDown"]["status"] == "CRIT"
    assert proc.returncode == 2, proc.stdout + proc.stderr
    local = run(tmp_path, text, "--json")  # --no-daemon: the same, and says so
    breaker = next(ln for ln in json.loads(local.stdout)["lines"] if ln["check"].startswith("RpcCircuitBreakerOpen"))
    assert (breaker["status"], breaker["value"].rsplit("; ", 1)[1]) == ("UNKNOWN", "--no-daemon given")
