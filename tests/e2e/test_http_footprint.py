"""The daemon serves HTTP without aiohttp: a process-only daemon never maps aiohttp's extension modules."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.daemon import RunningDaemon

CONFIG = """\
collectors:
  - process:
      interval: 0.5s
"""

AIOHTTP_EXTENSIONS = ("_http_parser", "_http_writer", "_websocket", "_multidict", "/aiohttp/", "/multidict/",
                      "/yarl/", "/frozenlist/")


def wait_ready(d: RunningDaemon, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(d.url + "/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code != 503:  # not ready yet is the only other answer
                raise
        time.sleep(0.1)
    raise AssertionError("/-/ready not 200")


def test_a_process_only_daemon_maps_no_aiohttp_extension(tmp_path: Path) -> None:
    with RunningDaemon(tmp_path, CONFIG) as d:
        wait_ready(d)
        assert "mevwatch_process_resident_memory_bytes" in d.get()
        assert d.proc is not None
        maps = Path(f"/proc/{d.proc.pid}/maps").read_text()
    assert "python" in maps  # the right process, alive while read
    mapped = {line.split()[-1] for line in maps.splitlines() if len(line.split()) >= 6}
    assert [p for p in mapped if any(ext in p for ext in AIOHTTP_EXTENSIONS)] == []


def test_the_daemon_modules_import_without_aiohttp() -> None:
    code = (
        "import sys\n"
        "import mevwatch.daemon.cli, mevwatch.daemon.runtime, mevwatch.daemon.http, mevwatch.daemon.supervisor\n"
        "import mevwatch.alerts.engine\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'multidict', 'yarl')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
