"""The whole daemon as a subprocess: scrape, promtool, a real Prometheus, sd_notify, signals, TLS, auth."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import RunningDaemon, sample_value
from tests.support.peers import free_port, need_binary, start_process, stop_process

CONFIG = """\
collectors:
  - process:
      interval: 0.5s
"""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    with RunningDaemon(tmp_path, CONFIG) as d:
        d.wait_for("mevwatch_process_resident_memory_bytes")
        yield d


def test_scrape_parses_and_carries_meta_metrics(daemon: RunningDaemon) -> None:
    text = daemon.get()
    names = {f.name for f in text_string_to_metric_families(text)}
    for name in ("mevwatch_collector_success", "mevwatch_collector_duration_seconds",
                 "mevwatch_collector_last_success_timestamp_seconds", "mevwatch_build_info",
                 "mevwatch_process_resident_memory_bytes", "mevwatch_config_last_reload_successful"):
        assert name in names
    assert sample_value(text, "mevwatch_collector_success", collector="process", instance="default") == 1.0
    assert sample_value(text, "mevwatch_process_resident_memory_bytes")


def test_openmetrics_gzip_landing_health_ready(daemon: RunningDaemon) -> None:
    req = urllib.request.Request(daemon.url + "/metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        body = gzip.decompress(resp.read()).decode()
    assert body.rstrip().endswith("# EOF")
    assert "process" in daemon.get("/")
    health = json.loads(daemon.get("/health"))
    assert health["ready"] is True
    assert health["collectors"][0]["collector"] == "process"
    assert health["collectors"][0]["last_success"] > 0
    assert "Healthy" in daemon.get("/-/healthy")
    assert "Ready" in daemon.get("/-/ready")


def test_reload_endpoint_needs_lifecycle_flag(daemon: RunningDaemon) -> None:
    req = urllib.request.Request(daemon.url + "/-/reload", method="POST")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=5)
    assert exc.value.code == 403


def test_promtool_check_metrics_is_clean(daemon: RunningDaemon) -> None:
    promtool = need_binary("promtool")
    proc = subprocess.run([promtool, "check", "metrics"], input=daemon.get(), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    problems = (proc.stdout + proc.stderr).strip()
    assert problems == "", problems


def test_real_prometheus_scrapes_it(daemon: RunningDaemon, tmp_path: Path) -> None:
    prometheus = need_binary("prometheus")
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: mevwatch\n    static_configs: [{{targets: ['127.0.0.1:{daemon.port}']}}]\n"
    )
    proc = start_process([prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{port}"], port=port, log=tmp_path / "prom.log")
    try:
        def query(q: str) -> list[dict[str, Any]]:
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            with urllib.request.urlopen(url, timeout=5) as resp:
                result: list[dict[str, Any]] = json.load(resp)["data"]["result"]
                return result

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                up = query('up{job="mevwatch"}')
            except urllib.error.HTTPError as exc:
                if exc.code != 503:  # 503 only until the TSDB is open
                    raise
                time.sleep(0.2)
                continue
            if up and up[0]["value"][1] == "1":
                break
            time.sleep(0.3)
        else:
            pytest.fail("Prometheus never saw up == 1:\n" + (tmp_path / "prom.log").read_text()[-2000:])
        ok = query('mevwatch_collector_success{collector="process"}')
        assert ok
        assert ok[0]["value"][1] == "1"
        assert query("mevwatch_build_info")
    finally:
        stop_process(proc)


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def drain(self, seconds: float) -> None:
        """Read every queued message, then keep reading for ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except (TimeoutError, BlockingIOError):
                if time.monotonic() >= deadline:
                    return

    def first(self, prefix: str) -> int:
        return next(i for i, (_, m) in enumerate(self.messages) if any(x.startswith(prefix) for x in m.split("\n")))


def test_sd_notify_and_signals(tmp_path: Path) -> None:
    ns = NotifySocket(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "400000"}
    with RunningDaemon(tmp_path, CONFIG, env=env, extra_args=[]) as d:
        assert d.proc is not None
        ns.drain(1.5)
        ready = ns.first("READY=1")
        assert "STATUS=1/1 collectors ok" in ns.messages[ready][1]
        watchdogs = [t for t, m in ns.messages if m == "WATCHDOG=1"]
        assert len(watchdogs) >= 4, ns.messages  # every 0.2 s

        # SIGHUP with a good file: RELOADING=1 + MONOTONIC_USEC, then READY=1; reload metric 1.
        d.config.write_text(CONFIG.replace("0.5s", "0.25s"))
        d.proc.send_signal(signal.SIGHUP)
        ns.drain(1.0)
        reloading = ns.first("RELOADING=1")
        assert "MONOTONIC_USEC=" in ns.messages[reloading][1]
        assert any("READY=1" in m for _, m in ns.messages[reloading + 1:])
        assert d.wait_for("mevwatch_collector_interval_seconds", collector="process") == 0.25
        assert sample_value(d.get(), "mevwatch_config_last_reload_successful") == 1.0

        # SIGHUP with a bad file: rejected, the running config stays, metric 0, errors logged.
        d.config.write_text("collectors:\n  - process: {interval: -1}\n")
        d.proc.send_signal(signal.SIGHUP)
        ns.drain(0.7)
        text = d.get()
        assert sample_value(text, "mevwatch_config_last_reload_successful") == 0.0
        assert sample_value(text, "mevwatch_collector_interval_seconds", collector="process") == 0.25
        assert sample_value(text, "mevwatch_collector_success", collector="process") == 1.0
        assert "collectors[0].process.interval" in d.log.read_text()

        # SIGTERM: STOPPING=1 and exit well within 5 s.
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        code = d.proc.wait(10)
        elapsed = time.monotonic() - t0
        ns.drain(0.3)
        assert code == 0
        assert elapsed < 5.0, elapsed
        assert ns.first("STOPPING=1") > reloading


async def test_watchdog_is_withheld_while_the_loop_is_blocked(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from mevwatch.daemon.systemd import Notifier

    ns = NotifySocket(tmp_path / "wd.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(ns.path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    frozen: list[float] = []
    n = Notifier()
    n.start_watchdog(lambda: frozen[0] if frozen else time.monotonic())
    try:
        await asyncio.sleep(0.55)
        ns.drain(0.01)
        healthy = len([m for _, m in ns.messages if m == "WATCHDOG=1"])
        assert healthy >= 3, ns.messages  # every 0.1 s while healthy
        time.sleep(1.0)  # noqa: ASYNC251 - blocks the event loop on purpose, for 10 watchdog periods
        t_unblocked = time.monotonic()
        await asyncio.sleep(0.05)  # the tick that overslept sees the lag and withholds
        ns.drain(0.01)
        assert not [t for t, m in ns.messages if m == "WATCHDOG=1" and t >= t_unblocked - 0.01]
        # a supervisor whose scheduler stopped advancing gets no keep-alive either
        frozen.append(time.monotonic())
        await asyncio.sleep(0.25)
        ns.drain(0.01)
        count = len(ns.messages)
        await asyncio.sleep(0.6)
        ns.drain(0.01)
        assert len(ns.messages) == count, ns.messages[count:]
    finally:
        n.stop_watchdog()



def test_tls_and_basic_auth(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    import base64

    import bcrypt

    cert, key = tls_files
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=6)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                   f"basic_auth_users:\n  prom: '{hashed}'\n")
    with RunningDaemon(tmp_path, CONFIG, extra_args=["--web.config.file", str(web)]) as d:
        ctx = ssl.create_default_context(cafile=str(cert))

        def get(user: str, password: str) -> int:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            req = urllib.request.Request(f"https://127.0.0.1:{d.port}/metrics",
                                         headers={"Authorization": f"Basic {token}"})
            try:
                with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as exc:
                return int(exc.code)

        assert get("prom", "s3cret") == 200
        assert get("prom", "wrong") == 401
        assert get("nobody", "s3cret") == 401
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
            # plain HTTP on a TLS port is refused
            urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=5)


def test_bad_web_config_and_unwritable_state_dir_exit_2(tmp_path: Path) -> None:
    import sys

    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prom: plaintext\n")
    proc = subprocess.run([sys.executable, "-m", "mevwatch", "run", "--config", str(cfg),
                           "--web.listen-address", f"127.0.0.1:{free_port()}", "--web.config.file", str(web)],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "STATE_DIRECTORY": str(tmp_path / "s")})
    assert proc.returncode == 2
    assert "basic_auth_users.prom: not a bcrypt hash" in proc.stderr
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "mevwatch", "run", "--config", str(cfg),
                           "--web.listen-address", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "STATE_DIRECTORY": str(blocker / "state")})
    assert proc.returncode == 2
    assert "state DB" in proc.stderr
    assert "not usable" in proc.stderr


def test_reload_endpoint_with_lifecycle_swaps_or_rejects(tmp_path: Path) -> None:
    with RunningDaemon(tmp_path, CONFIG, extra_args=["--web.enable-lifecycle"]) as d:
        d.wait_for("mevwatch_collector_success", collector="process")

        def post() -> tuple[int, str]:
            req = urllib.request.Request(d.url + "/-/reload", method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return int(resp.status), str(resp.read().decode())
            except urllib.error.HTTPError as exc:
                return int(exc.code), str(exc.read().decode())

        d.config.write_text(CONFIG.replace("0.5s", "0.3s"))
        assert post() == (200, "config reloaded\n")
        assert sample_value(d.get(), "mevwatch_collector_interval_seconds", collector="process") == 0.3
        d.config.write_text("collectors:\n  - process: {interval: soon}\n")
        code, body = post()
        assert code == 500
        assert f"{d.config}:2: collectors[0].process.interval: invalid duration" in body
        text = d.get()
        assert sample_value(text, "mevwatch_config_last_reload_successful") == 0.0
        assert sample_value(text, "mevwatch_collector_interval_seconds", collector="process") == 0.3
