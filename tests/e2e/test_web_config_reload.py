"""A running mevwatch re-reads its web config on SIGHUP and POST /-/reload: a revoked password stops
working at once; a bad file keeps the running one and says so in /metrics."""

from __future__ import annotations

import base64
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import bcrypt

from tests.support.daemon import RunningDaemon, sample_value

CONFIG = """\
collectors:
  - process:
      interval: 1s
"""


def users(password: str) -> str:
    return f"basic_auth_users:\n  prom: '{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}'\n"


def status(d: RunningDaemon, password: str, path: str = "/metrics", method: str = "GET") -> tuple[int, str]:
    auth = "Basic " + base64.b64encode(f"prom:{password}".encode()).decode()
    req = urllib.request.Request(d.url + path, headers={"Authorization": auth}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("not reached in time")


def test_sighup_and_reload_endpoint_reread_the_web_config(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(users("old"))
    with RunningDaemon(tmp_path, CONFIG, extra_args=["--web.config.file", str(web), "--web.enable-lifecycle"]) as d:
        assert d.proc is not None
        assert status(d, "old")[0] == 200
        web.write_text(users("new"))
        d.proc.send_signal(signal.SIGHUP)
        until(lambda: status(d, "old")[0] == 401)  # revoked
        assert status(d, "new")[0] == 200
        web.write_text("basic_auth_users:\n  prom: plaintext\n")
        code, body = status(d, "new", "/-/reload", "POST")
        assert code == 500
        assert f"{web}:2: basic_auth_users.prom: not a bcrypt hash" in body
        code, text = status(d, "new")  # the running web config stays
        assert code == 200
        assert sample_value(text, "mevwatch_web_config_last_reload_successful") == 0.0
        web.write_text(users("newer"))
        assert status(d, "new", "/-/reload", "POST")[0] == 200
        code, text = status(d, "newer")
        assert code == 200
        assert sample_value(text, "mevwatch_web_config_last_reload_successful") == 1.0
