"""`make demo` (bench/demo.py) end to end with its real peers, so it does not rot: one quick incident,
the unprivileged skips, and the cleanup after Ctrl-C in the middle of an incident.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.peers import need_binary
from tests.support.pgcluster import need_local_server

REPO = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, str(REPO / "bench" / "demo.py")]


@pytest.fixture(autouse=True)
def _peers() -> None:
    for binary in ("anvil", "prometheus", "prometheus-alertmanager"):
        need_binary(binary)
    need_local_server()


def run_demo(*args: str, timeout: float = 60.0) -> tuple[int, str]:
    proc = subprocess.run([*DEMO, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return proc.returncode, proc.stdout + proc.stderr


def temp_dir_of(out: str) -> Path:
    m = re.search(r"(/\S*?/mevwatch-stack-\w+)", out)
    assert m, out
    return Path(m.group(1))


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_list_names_every_incident() -> None:
    rc, out = run_demo("--list")
    assert rc == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert names == ["oom", "disk", "config-edit", "node-hang", "slow-query"]


def test_unknown_incident_is_refused() -> None:
    rc, out = run_demo("--incident", "meteor")
    assert rc == 2
    assert "invalid choice: 'meteor'" in out


@pytest.mark.slow
def test_config_edit_reaches_the_webhook_by_both_paths_and_everything_is_removed() -> None:
    rc, out = run_demo("--incident", "config-edit")
    assert rc == 0, out
    firing = r"FIRING +IntegrityViolation \[critical\] .*\bpath=\S+/config-00.yaml$"
    assert re.search(firing, out, re.M), out
    assert re.search(r"\+ *\d+\.\d\ds via mevwatch -> webhook: \S+config-00.yaml changed \(content\)", out), out
    assert re.search(r"\+ *\d+\.\d\ds via mevwatch -> Alertmanager -> webhook: \S+config-00.yaml changed", out), out
    assert "Prometheus sees mevwatch_integrity_violation == 1: 1" in out
    # accepting the edit resolves it, and the resolution arrives too
    assert re.search(r"RESOLVED +IntegrityViolation", out), out
    detect = re.findall(r"config-edit +IntegrityViolation +(mevwatch|alertmanager) +(\d+\.\d+) s", out)
    assert sorted(via for via, _ in detect) == ["alertmanager", "mevwatch"], out
    tmp = temp_dir_of(out)
    assert not tmp.exists()
    assert processes_mentioning(str(tmp)) == []
    assert "STILL THERE" not in out


@pytest.mark.slow
def test_without_root_the_root_incidents_are_skipped_with_a_reason() -> None:
    rc, out = run_demo("--no-root", "--incident", "oom", "--incident", "disk", "--incident", "slow-query")
    assert rc == 0, out
    assert "== incident oom: SKIPPED, needs root" in out
    assert "== incident disk: SKIPPED, needs root" in out
    assert "== incident slow-query: SKIPPED, needs the demo's own cluster with pg_stat_statements" in out
    assert "tmpfs" not in out
    assert "memory cgroup" not in out
    assert not temp_dir_of(out).exists()


@pytest.mark.slow
def test_ctrl_c_during_an_incident_stops_and_removes_everything() -> None:
    root = os.geteuid() == 0
    args = ["--incident", "node-hang"] if not root else ["--incident", "disk", "--incident", "oom"]
    proc = subprocess.Popen([*DEMO, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    out = ""
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 50
        for line in proc.stdout:
            out += line
            if "== incident" in line:
                break
            assert time.monotonic() < deadline, out
        time.sleep(0.5)
        tmp = temp_dir_of(out)
        mount = re.search(r"tmpfs of \S+ at (\S+)", out)
        cgroup = re.search(r"memory cgroup (/sys/fs/cgroup/memory/\S+) limited", out)
        if root:
            assert mount, out
            assert Path(mount.group(1)).is_mount()
            assert cgroup, out
            assert Path(cgroup.group(1)).is_dir()
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        out += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out
    assert "interrupted (KeyboardInterrupt" in out
    assert not tmp.exists(), out
    assert processes_mentioning(str(tmp)) == []
    if root:
        assert mount
        assert not Path(mount.group(1)).is_mount()
        assert cgroup
        assert not Path(cgroup.group(1)).exists()
        assert processes_mentioning("mev-memhog") == []
