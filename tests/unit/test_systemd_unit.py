"""deploy/systemd/mevwatch.service: systemd accepts it, and its hardening scores 2.0 or lower."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.peers import REPO, need_binary

UNIT = REPO / "deploy" / "systemd" / "mevwatch.service"


def test_unit_verifies_clean(tmp_path: Path) -> None:
    analyze = need_binary("systemd-analyze")
    # ExecStart must exist for verify: point it at this checkout's console script
    exe = Path(sys.executable).parent / "mevwatch"
    unit = tmp_path / "mevwatch.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/mevwatch", str(exe)))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


def test_unit_security_exposure_at_most_2() -> None:
    analyze = need_binary("systemd-analyze")
    proc = subprocess.run([analyze, "security", "--offline=true", str(UNIT)], capture_output=True, text=True,
                          timeout=60)
    m = re.search(r"Overall exposure level for mevwatch.service: ([\d.]+)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 2.0


def test_unit_is_notify_with_watchdog_and_own_user() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "User=mevwatch", "StateDirectory=mevwatch", "ExecReload="):
        assert re.search(rf"^{re.escape(line)}", text, re.M), line
