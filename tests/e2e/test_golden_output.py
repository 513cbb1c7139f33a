"""The whole exposition of the host collectors over the fixture trees, against a golden file.

As node_exporter's end-to-end test: the real daemon runs on tests/fixtures (proc, sys, and the
disk fixture's mountinfo) with an empty root filesystem, /metrics is fetched once every collector
ran, the lines that change between runs are dropped with one regex, and the rest must equal
tests/e2e/fixtures/e2e-output.txt. Any change to a metric's name, labels, help, type or value
shows here at once. Regenerate after a deliberate change with ``MEVWATCH_UPDATE_GOLDEN=1``.
promtool checks the golden file.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from tests.support.daemon import RunningDaemon, sample_value
from tests.support.peers import need_binary

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
GOLDEN = Path(__file__).parent / "fixtures" / "e2e-output.txt"
HOST_COLLECTORS = ("memory", "cpu", "filesystems", "directories", "backups")
# samples whose value is a time, a duration or the interpreter's version: they change between runs
VOLATILE = re.compile(r"^mevwatch_(\w+_(duration|timestamp)_seconds|build_info)[{ ].*\n", re.M)


def _procfs(tmp: Path) -> Path:
    """tests/fixtures/proc with the disk fixture's self/mountinfo: one procfs for every host collector."""
    proc = tmp / "proc"
    (proc / "self").mkdir(parents=True)
    for entry in (FIXTURES / "proc").iterdir():
        (proc / entry.name).symlink_to(entry)
    (proc / "self" / "mountinfo").symlink_to(FIXTURES / "disk" / "proc" / "self" / "mountinfo")
    return proc


def _scrape_after_every_run(d: RunningDaemon, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = d.get()
        if all(sample_value(text, "mevwatch_collector_success", collector=k) is not None for k in HOST_COLLECTORS):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"not every host collector ran within {timeout}s:\n{text}")
        time.sleep(0.1)


def test_the_host_collectors_exposition_matches_the_golden_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    config = (
        f"paths: {{procfs: {_procfs(tmp_path)}, sysfs: {FIXTURES / 'sys'}, rootfs: {root}}}\n"
        "alerts: {enabled: false}\n"
        "collectors:\n" + "".join(f"  - {k}: {{}}\n" for k in HOST_COLLECTORS)
    )
    with RunningDaemon(tmp_path, config) as d:
        text = VOLATILE.sub("", _scrape_after_every_run(d))
    if os.environ.get("MEVWATCH_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "regenerate with MEVWATCH_UPDATE_GOLDEN=1 after a deliberate change"


def test_promtool_accepts_the_golden_file() -> None:
    proc = subprocess.run([need_binary("promtool"), "check", "metrics"], input=GOLDEN.read_text(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
