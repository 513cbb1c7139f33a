"""Chat webhook URLs are credentials: their tokens never reach the log, the state DB or check-config.

The receivers are real HTTP servers on loopback that refuse every notification and quote the
request path back (as proxies and some chat APIs do), so the tokens reach mevwatch's error paths.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.daemon import RunningDaemon, sample_value

TELEGRAM_TOKEN = "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
SLACK_SECRET = "XXXXXXXXXXXXXXXXXXXXXXXX"
DISCORD_TOKEN = "abcDEF-ghi_jkl-0123456789"
AM_SECRET = "am-path-secret-77"
SECRETS = (TELEGRAM_TOKEN, SLACK_SECRET, DISCORD_TOKEN, AM_SECRET, "123456789:")


class _Echo(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = f"no route for POST {self.path} (url http://{self.headers['Host']}{self.path})".encode()
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _config(tmp: Path, port: int) -> str:
    base = f"http://127.0.0.1:{port}"
    slack = tmp / "slack.url"
    slack.write_text(f"{base}/services/T00000000/B00000000/{SLACK_SECRET}\n")
    am = tmp / "am.url"
    am.write_text(f"http://127.0.0.1:1/{AM_SECRET}\n")
    return f"""collectors:
  - process: {{interval: 500ms}}
alerts:
  default_rules: false
  startup_grace: 1s
  group_wait: 0s
  outbox: {{retry_initial: 200ms, retry_max: 500ms}}
  receivers:
    - name: chat
      webhook_configs:
        - {{url: "{base}/bot123456789:{TELEGRAM_TOKEN}/sendMessage", timeout: 1s}}
        - {{url_file: "{slack}", timeout: 1s}}
        - {{url: "{base}/api/webhooks/123456789012345678/{DISCORD_TOKEN}?wait=true", timeout: 1s}}
      alertmanager_configs:
        - {{url_files: ["{am}"], timeout: 1s}}
  receiver: chat
  rules:
    - name: MevwatchThreads
      metric: mevwatch_process_threads
      op: ">"
      threshold: 0
      summary: "threads"
      runbook: collector-failing
"""


def _cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mevwatch", *args], capture_output=True, text=True, timeout=60,
                          cwd=tmp, env={**os.environ, "STATE_DIRECTORY": str(tmp / "state")}, check=False)


def _assert_clean(where: str, data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    for secret in SECRETS:
        assert secret.encode() not in raw, f"{secret!r} leaked into {where}"


def test_webhook_tokens_never_reach_logs_state_db_or_cli_output(tmp_path: Path, echo_port: int) -> None:
    text = _config(tmp_path, echo_port)
    with RunningDaemon(tmp_path, text) as d:
        deadline = time.monotonic() + 20
        sinks = [f"chat/webhook/{i}" for i in range(3)] + ["chat/alertmanager/0"]
        while time.monotonic() < deadline:
            scrape = d.get()
            failed = [sample_value(scrape, "mevwatch_notifications_failed_total", sink=s) or 0 for s in sinks]
            if all(n >= 2 for n in failed):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"not every sink failed twice: {failed}")
        _assert_clean("/metrics", scrape)
    log = d.log.read_text()
    assert log.count('"notification_retry"') >= 8
    assert f"http://127.0.0.1:{echo_port}/***" in log  # the host stays visible: an operator can act on it
    # the receiver's answer is kept, its quotes of the token are not; a quoted URL keeps its host
    assert f"no route for POST /*** (url http://127.0.0.1:{echo_port}/***)" in log
    _assert_clean("the log", log)
    state = tmp_path / "state"
    files = [p for p in state.iterdir() if p.name.startswith("state.db")]
    assert files
    for f in files:
        _assert_clean(f.name, f.read_bytes())

    tested = _cli(tmp_path, "alerts", "test", "--config", str(d.config))
    assert tested.returncode == 1
    assert f"chat/webhook/0: FAILED: http://127.0.0.1:{echo_port}/*** answered HTTP 500" in tested.stdout
    _assert_clean("alerts test", tested.stdout + tested.stderr)

    checked = _cli(tmp_path, "check-config", str(d.config))
    assert checked.returncode == 0, checked.stderr
    _assert_clean("check-config", checked.stdout + checked.stderr)


def test_bad_sink_urls_are_config_errors_that_do_not_quote_the_token(tmp_path: Path) -> None:
    bad_file = tmp_path / "bad.url"
    bad_file.write_text(f"hooks.slack.com/services/T0/B0/{SLACK_SECRET}\n")
    good_file = tmp_path / "good.url"
    good_file.write_text(f"https://hooks.slack.com/services/T0/B0/{SLACK_SECRET}\n")
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"""collectors: []
alerts:
  receivers:
    - name: chat
      webhook_configs:
        - {{url: "htps://api.telegram.org/bot123456789:{TELEGRAM_TOKEN}/sendMessage"}}
        - {{url_file: "{bad_file}"}}
        - {{url_file: "{tmp_path / 'missing.url'}"}}
        - {{url: "https://discord.com/api/webhooks/1/{DISCORD_TOKEN}", url_file: "{good_file}"}}
  receiver: chat
""")
    out = _cli(tmp_path, "check-config", str(cfg))
    assert out.returncode == 2
    errors = out.stderr.splitlines()
    assert any(".webhook_configs[0].url: url must be http(s)" in e for e in errors), errors
    assert any(".webhook_configs[1].url_file: url_file" in e and "must be http(s)" in e for e in errors), errors
    assert any(".webhook_configs[2].url_file: cannot read secret file" in e for e in errors), errors
    assert any(".webhook_configs[3]" in e and "exactly one of url and url_file" in e for e in errors), errors
    _assert_clean("check-config", out.stdout + out.stderr)
