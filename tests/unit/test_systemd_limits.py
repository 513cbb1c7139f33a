"""The unit's MemoryMax=/TasksMax= hold mevwatch's measured footprint with the documented worst case on top,
and its private /dev still lets the OOM collector read /dev/kmsg (played in a real mount namespace)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mevwatch.collectors.integrity import IntegrityOptions
from mevwatch.daemon.config import load_config
from tests.support.daemon import RunningDaemon
from tests.support.peers import REPO

UNIT = REPO / "deploy" / "systemd" / "mevwatch.service"
MiB = 1 << 20
# What the documented worst case adds to a running daemon's peak (docs/security.md, "Unit limits"):
# a connection flood (the HTTP server's bound), 1 MiB answers in flight on six node endpoints parsed,
# hash buffers, and the integrity records of 100,000 files.
WORST_CASE_EXTRA = (20 + 60 + 4 + 100) * MiB


def _setting(name: str) -> str:
    m = re.search(rf"^{name}=(.+)$", UNIT.read_text(), re.M)
    assert m, f"{name}= is not set in {UNIT.name}"
    return m.group(1).strip()


def _bytes(value: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", value)
    assert m, value
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]


def test_limits_hold_the_measured_footprint_and_the_worst_case(tmp_path: Path) -> None:
    """The example config (every collector) run for real: its peak RSS plus the worst case fits under
    MemoryMax= with room to spare; its threads at their configured maximum fit under TasksMax=."""
    example = (REPO / "config.example.yaml").read_text()
    # the state in this test's dir, whatever the example says
    example = re.sub(r"^state_dir:.*$", f"state_dir: {tmp_path / 'state'}", example, flags=re.M)
    with RunningDaemon(tmp_path, example) as d:
        d.wait_for("mevwatch_collector_success", timeout=20)
        for _ in range(20):  # scrapes, so the render caches are in the peak
            d.get()
        time.sleep(1.0)
        assert d.proc is not None
        status = Path(f"/proc/{d.proc.pid}/status").read_text()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    memory_max = _bytes(_setting("MemoryMax"))
    assert peak + WORST_CASE_EXTRA <= memory_max / 1.5, (peak / MiB, memory_max / MiB)

    cfg = load_config(REPO / "config.example.yaml", env=dict(os.environ))
    hash_threads = max((s.options.hash_threads for s in cfg.collectors if isinstance(s.options, IntegrityOptions)),
                       default=0)
    default_executor = min(32, (os.cpu_count() or 1) + 4)
    children = 8  # systemctl show and journalctl followers
    most = 1 + cfg.daemon.blocking_threads + hash_threads + default_executor + children
    tasks_max = int(_setting("TasksMax"))
    assert threads <= most
    assert most * 2 <= tasks_max, (threads, most, tasks_max)


def test_private_dev_binds_kmsg_and_allows_reading_it() -> None:
    assert _setting("PrivateDevices") == "yes"
    assert "/dev/kmsg" in _setting("BindReadOnlyPaths").split()  # the private /dev has no kmsg of its own
    assert re.search(r"^DeviceAllow=/dev/kmsg r$", UNIT.read_text(), re.M)


_READ_KMSG = """
import subprocess, sys
from pathlib import Path
from mevwatch.collectors.base import CollectorError
from mevwatch.collectors.oomkill import _kmsg_read, _open_kmsg, drain_kmsg
dev = Path(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", str(dev)], check=True)  # a private /dev
if sys.argv[2] == "bind":  # what BindReadOnlyPaths=/dev/kmsg does
    (dev / "kmsg").touch()
    subprocess.run(["mount", "--bind", "/dev/kmsg", str(dev / "kmsg")], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(dev / "kmsg")], check=True)
try:
    fd = _open_kmsg(dev / "kmsg")
except CollectorError as exc:
    print("error", exc.reason)
    raise SystemExit(0)
drained = drain_kmsg(lambda: _kmsg_read(fd), bytearray())
print("records", len(drained.lines))
"""


@pytest.mark.root
@pytest.mark.parametrize(("mode", "expected"), [("bind", "records"), ("none", "error kmsg_missing")])
def test_oom_collector_reads_kmsg_bound_read_only_into_a_private_dev(tmp_path: Path, mode: str,
                                                                     expected: str) -> None:
    if os.geteuid() != 0 or not Path("/dev/kmsg").exists():
        pytest.skip("needs root and /dev/kmsg")
    dev = tmp_path / "dev"
    dev.mkdir()
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _READ_KMSG,
                           str(dev), mode], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(expected), proc.stdout
    if mode == "bind":
        assert int(proc.stdout.split()[1]) > 0  # real kernel log records, through the read-only bind
