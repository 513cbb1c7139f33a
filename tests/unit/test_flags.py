"""node_exporter-style flags of ``mevwatch run``: collectors, web, logging; flags over the file; sources."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mevwatch.collectors.registry import all_kinds, kind_names
from mevwatch.daemon.buildinfo import BuildInfo, build_info, version_text
from mevwatch.daemon.cli import build_parser
from mevwatch.daemon.config import Config, load_config_text
from mevwatch.daemon.flags import Overrides, overrides_from_args, settings
from tests.support.daemon import RunningDaemon, parse_metrics
from tests.support.peers import free_port

CONFIG = """\
web:
  telemetry_path: /from-file
log:
  level: warning
collectors:
  - memory: {}
  - cpu: {enabled: false}
  - process: {}
"""


def _run(argv: list[str], text: str = CONFIG) -> tuple[Overrides, Config]:
    args = build_parser(commands=False).parse_args(["run", *argv])
    overrides = overrides_from_args(args)
    return overrides, overrides.apply(load_config_text(text, "f.yaml"))


def _enabled(cfg: Config) -> dict[str, bool]:
    return {s.kind: s.options.enabled for s in cfg.collectors}


def test_collector_flags_list_every_registered_kind() -> None:
    # (other tests register kinds of their own; the flags are for the shipped modules)
    shipped = [k for k, cls in all_kinds().items() if cls.__module__ == f"mevwatch.collectors.{k}"]
    assert kind_names() == shipped


def test_no_collector_disables_a_configured_collector_and_collector_enables_one() -> None:
    _, cfg = _run(["--no-collector.memory", "--collector.cpu"])
    assert _enabled(cfg) == {"memory": False, "cpu": True, "process": True}


def test_collector_flag_adds_a_kind_the_file_does_not_list_with_its_default_options() -> None:
    _, cfg = _run(["--collector.gas"])
    gas = [s for s in cfg.collectors if s.kind == "gas"]
    assert len(gas) == 1
    assert gas[0].options.enabled
    assert gas[0].options == all_kinds()["gas"].Options()


def test_disable_defaults_runs_only_the_collectors_named_by_flag() -> None:
    _, cfg = _run(["--collector.disable-defaults", "--collector.process", "--collector.cpu"])
    assert _enabled(cfg) == {"memory": False, "cpu": True, "process": True}


def test_the_last_switch_of_a_kind_wins_and_dashes_spell_underscores() -> None:
    _, cfg = _run(["--collector.memory", "--no-collector.memory"])
    assert _enabled(cfg)["memory"] is False
    ov, _ = _run(["--collector.mempool-stream"])
    assert ov.enable == ("mempool_stream",)


def test_flags_override_the_file_and_each_setting_names_its_source() -> None:
    ov, cfg = _run(["--web.listen-address", "127.0.0.1:1", "--web.listen-address", "[::1]:2",
                    "--log.format", "json"])
    rows = {s.name: s for s in settings(cfg, ov, "f.yaml")}
    assert rows["web.listen_address"].value == "127.0.0.1:1, [::1]:2"
    assert rows["web.listen_address"].source == "flag --web.listen-address"
    assert rows["log.format"].value == "json"
    assert rows["log.format"].source == "flag --log.format"
    assert rows["log.level"].value == "warning"
    assert rows["log.level"].source == "config file f.yaml"
    assert rows["web.telemetry_path"].value == "/from-file"
    assert rows["web.enable_lifecycle"].source == "default"
    assert rows["collectors.cpu"].value == "disabled"
    assert rows["collectors.cpu"].source == "config file f.yaml"
    ov, cfg = _run(["--log.level", "debug", "--collector.cpu"])
    rows = {s.name: s for s in settings(cfg, ov, "f.yaml")}
    assert (rows["log.level"].value, rows["log.level"].source) == ("debug", "flag --log.level")
    assert (rows["collectors.cpu"].value, rows["collectors.cpu"].source) == ("enabled", "flag --collector.cpu")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--web.listen-address", "localhost"], "port 1-65535"),
        (["--web.telemetry-path", "metrics"], "absolute URL path"),
        (["--log.level", "loud"], "invalid choice"),
        (["--collector.nosuch"], "unrecognized arguments"),
    ],
)
def test_a_bad_flag_exits_2_with_its_reason(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser(commands=False).parse_args(["run", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_version_is_printed_in_prometheus_layout() -> None:
    out = subprocess.run([sys.executable, "-m", "mevwatch", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"mevwatch, version \S+ \(branch: \S+, revision: \S+\)", lines[0]), lines[0]
    assert [ln.split(":")[0].strip() for ln in lines[1:]] == [
        "build user", "build date", "python version", "platform"]
    text = version_text(BuildInfo("1.2.3", "main", "abc", "u@h", "20260101-00:00:00"))
    assert text.startswith("mevwatch, version 1.2.3 (branch: main, revision: abc)\n  build user:       u@h\n")


def _wait_body(url: str, needle: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = str(resp.read().decode())
        if needle in body:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{needle} not served at {url}:\n{body[-2000:]}")


def test_a_daemon_serves_every_listen_address_on_the_telemetry_path_and_shows_sources(tmp_path: Path) -> None:
    second = free_port()
    cfg = "collectors:\n  - process: {}\n  - memory: {}\n"
    with RunningDaemon(tmp_path, cfg, ["--web.listen-address", f"127.0.0.1:{second}",
                                       "--web.telemetry-path", "/m", "--no-collector.memory"]) as d:
        for port in (d.port, second):
            body = _wait_body(f"http://127.0.0.1:{port}/m", "mevwatch_process_threads")
            assert "mevwatch_memory_" not in body
        # the build information --version prints is exported too, as node_exporter_build_info is
        [labels] = [dict(lbl) for (name, lbl) in parse_metrics(body) if name == "mevwatch_build_info"]
        assert (labels["revision"], labels["branch"]) == (build_info().revision, build_info().branch)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{d.url}/metrics", timeout=5)
        assert err.value.code == 404
        page = d.get("/")
        assert "<td>web.telemetry_path</td><td>/m</td><td>flag --web.telemetry-path</td>" in page
        assert "<td>collectors.memory</td><td>disabled</td><td>flag --no-collector.memory</td>" in page
        assert f"<td>config</td><td>{d.config}</td><td>flag --config</td>" in page


def test_a_reload_lays_the_flags_over_the_new_file(tmp_path: Path) -> None:
    with RunningDaemon(tmp_path, "collectors:\n  - process: {}\n", ["--no-collector.memory"]) as d:
        d.wait_for("mevwatch_process_threads", timeout=20)
        d.config.write_text("collectors:\n  - process: {}\n  - memory: {}\n  - cpu: {}\n")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("mevwatch_collector_success", timeout=20, collector="cpu")
        body = d.get()
        assert 'collector="memory"' not in body  # the file now lists memory; the flag still wins
        assert "<td>collectors.memory</td><td>disabled</td><td>flag --no-collector.memory</td>" in d.get("/")
