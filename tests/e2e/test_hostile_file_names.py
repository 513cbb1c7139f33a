"""File names an attacker chooses (bytes that are not UTF-8, a newline, a quote) in a watched tree.

Before, one such name turned the whole /metrics into a 500 and crashed ``integrity baseline``. Now:
/metrics stays 200 with every collector's series, the path label is valid UTF-8 with the byte
shown (``x\\xff``), the baseline keeps the exact name, and tampering with that file is detected.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import RunningDaemon, sample_value
from tests.support.peers import need_binary

BAD = b"x\xff"  # not UTF-8
NAMES = [BAD, b"nl\nx", b'q"x', b"plain"]


def _shown(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


def _cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mevwatch", *args], capture_output=True, text=True, timeout=60,
                          cwd=tmp, env={**os.environ, "STATE_DIRECTORY": str(tmp / "state")}, check=False)


def _get(url: str) -> tuple[int, bytes]:
    """GET returning (status, body) for any status: a 500 must fail the test's assert, not raise."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _violations(text: str) -> set[tuple[str, str]]:
    out = set()
    for fam in text_string_to_metric_families(text):
        if fam.name == "mevwatch_integrity_violation":
            out |= {(s.labels["path"], s.labels["kind"]) for s in fam.samples}
    return out


def test_hostile_file_names_neither_blind_metrics_nor_hide_tampering(tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    wdir = os.fsencode(watch)
    for name in NAMES:
        with open(wdir + b"/" + name, "wb") as f:
            f.write(b"original " + name)
    os.symlink(b"target\xfe", wdir + b"/link\xfd")  # a link whose target is not UTF-8 either
    key = tmp_path / "hmac.key"
    key.write_text("k" * 32)
    config = f"""collectors:
  - process: {{interval: 500ms}}
  - integrity:
      files: []
      globs: []
      directories: [{{path: "{watch}"}}]
      hmac_key_file: "{key}"
      debounce: 0s
"""
    cfg = tmp_path / "m.yaml"
    cfg.write_text(config)
    base = _cli(tmp_path, "integrity", "baseline", "-c", str(cfg))
    assert base.returncode == 0, base.stderr
    assert "baseline of 6 path(s)"  # the directory and its five entries in base.stdout
    assert _cli(tmp_path, "integrity", "verify", "-c", str(cfg)).returncode == 0
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    stored = {p for (p,) in db.execute("SELECT path FROM integrity_baseline")}
    db.close()
    assert os.fsencode(watch / os.fsdecode(BAD)) in stored  # the exact bytes, kept as a BLOB

    with RunningDaemon(tmp_path, config) as d:
        assert d.wait_for("mevwatch_integrity_files_watched") == 6
        with open(wdir + b"/" + BAD, "ab") as f:  # tamper with the file whose name is not UTF-8
            f.write(b" tampered")
        with open(wdir + b"/new\xfe\"\n", "wb") as f:
            f.write(b"dropped")
        bad_label = f"{watch}/{_shown(BAD)}"
        want = {(bad_label, "content"), (f'{watch}/new\\xfe"\n', "new")}
        deadline = time.monotonic() + 15
        while True:
            status, body = _get(d.url + "/metrics")
            assert status == 200
            text = body.decode("utf-8")  # strict: valid UTF-8
            if _violations(text) >= want or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert _violations(text) == want
        assert sample_value(text, "mevwatch_collector_success", collector="process") == 1.0
        assert sample_value(text, "mevwatch_collector_success", collector="integrity") == 1.0
        assert sample_value(text, "mevwatch_process_resident_memory_bytes")
        check = subprocess.run([need_binary("promtool"), "check", "metrics"], input=text.encode(), capture_output=True,
                               timeout=30, check=False)
        assert b"error" not in check.stdout + check.stderr.lower(), check.stdout + check.stderr

    verify = _cli(tmp_path, "integrity", "verify", "-c", str(cfg))
    assert verify.returncode == 1
    assert f"{bad_label}\tcontent" in verify.stdout
    accepted = _cli(tmp_path, "integrity", "accept", "-c", str(cfg), bad_label, f"{watch}/new\\xfe\"\n")
    assert accepted.returncode == 0, accepted.stderr
    assert f"accepted {bad_label} (content)" in accepted.stdout
    clean = _cli(tmp_path, "integrity", "verify", "-c", str(cfg))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"{bad_label}" in _cli(tmp_path, "integrity", "log", "-c", str(cfg)).stdout
