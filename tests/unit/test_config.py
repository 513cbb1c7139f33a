"""Config loading: interpolation, secrets, and exact error positions for bad files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mevwatch.daemon.cli import main
from mevwatch.daemon.config import ConfigError, default_config_text, load_config, load_config_text
from mevwatch.fields import parse_bytes, parse_duration, read_secret_file
from tests.support.peers import REPO

GOOD = """\
state_dir: /tmp/x
web:
  listen_address: 127.0.0.1:19717
collectors:
  - process:
      interval: 2s
  - process:
      instance: second
      timeout: 500ms
"""


def issues_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "cfg.yaml", env or {})
    return [str(i) for i in exc.value.issues]


def test_good_config_parses_with_durations_and_instances() -> None:
    cfg = load_config_text(GOOD, "cfg.yaml", {})
    assert [s.key for s in cfg.collectors] == [("process", "default"), ("process", "second")]
    assert cfg.collectors[0].options.interval == 2.0
    assert cfg.collectors[1].options.timeout == 0.5
    assert cfg.state_dir == Path("/tmp/x")


def test_env_interpolation_with_default_and_escape() -> None:
    text = 'web:\n  listen_address: "${HOST:-127.0.0.1}:${PORT}"\nstate_dir: "/a/$${NOT}"\ncollectors: []\n'
    cfg = load_config_text(text, "cfg.yaml", {"PORT": "9999"})
    assert cfg.daemon.web.listen_address == "127.0.0.1:9999"
    assert str(cfg.daemon.state_dir) == "/a/${NOT}"


def test_state_dir_defaults_to_systemd_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/mevwatch:/other")
    assert load_config_text("collectors: []\n", "c", {}).state_dir == Path("/var/lib/mevwatch")
    monkeypatch.delenv("STATE_DIRECTORY")
    assert load_config_text("collectors: []\n", "c", {}).state_dir == Path(".mevwatch")


P = "collectors:\n  - process:\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # 1 syntax error: line of the problem
        ("collectors:\n  - process: {interval: 2s\n", "cfg.yaml:3: YAML syntax error"),
        # 2 unknown top-level key
        ("collectors: []\nbogus: 1\n", "cfg.yaml:2: bogus: unknown key"),
        # 3 unknown key inside a collector, with the field path
        (P + "      intervall: 2s\n", "cfg.yaml:3: collectors[0].process.intervall: unknown key"),
        # 4 wrong type
        ("blocking_threads: many\ncollectors: []\n", "cfg.yaml:1: blocking_threads: Input should be a valid integer"),
        # 5 bad listen address
        ("web:\n  listen_address: localhost\ncollectors: []\n", "cfg.yaml:2: web.listen_address: listen_address"),
        # 6 negative interval
        (P + "      interval: -5s\n", "cfg.yaml:3: collectors[0].process.interval: invalid duration"),
        # 7 missing env var
        ("state_dir: ${NOPE_NOT_SET}\ncollectors: []\n", "cfg.yaml:1: state_dir: environment variable NOPE_NOT_SET"),
        # 8 empty file
        ("", "cfg.yaml:1: the file is empty"),
        # 9 unknown collector kind
        ("collectors:\n  - telepathy: {}\n", "cfg.yaml:2: collectors[0].telepathy: unknown collector kind"),
        # 10 top level is a list
        ("- a\n- b\n", "cfg.yaml:1: the top level must be a mapping"),
        # 11 entry that is not a one-key mapping
        ("collectors:\n  - process: {}\n    memory: {}\n", "cfg.yaml:2: collectors[0]: each collector entry"),
        # 12 duplicate instance
        ("collectors:\n  - process: {}\n  - process: {}\n", "cfg.yaml:3: collectors[1].process.instance: duplicate"),
        # 13 bad log level
        ("log:\n  level: loud\ncollectors: []\n", "cfg.yaml:2: log.level: Input should be"),
        # 14 bad instance name
        ("collectors:\n  - process: {instance: 'a b'}\n", "cfg.yaml:2: collectors[0].process.instance: instance must"),
        # 15 duplicate key
        ("collectors: []\ncollectors: []\n", "cfg.yaml:2: collectors: duplicate key"),
        # 16 bad duration text
        (P + "      interval: soon\n", "cfg.yaml:3: collectors[0].process.interval: invalid duration"),
    ],
)
def test_bad_config_names_file_line_and_field(text: str, expected: str) -> None:
    issues = issues_of(text)
    assert any(i.startswith(expected) for i in issues), issues


def test_all_errors_are_listed_at_once() -> None:
    text = "bogus: 1\nlog:\n  level: loud\ncollectors:\n  - process:\n      intervall: 1s\n  - nope: {}\n"
    issues = issues_of(text)
    assert len(issues) == 4, issues
    assert [i.split(":")[1] for i in issues] == ["1", "3", "6", "7"]


def test_a_removed_key_is_named_as_removed_by_check_config_and_run(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "old.yaml"
    cfg.write_text("collectors:\n  - process: {}\nalign_to_scrapes: true\nbogus: 1\n")
    for command in (["check-config", str(cfg)], ["run", "--config", str(cfg)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{cfg}:3: align_to_scrapes: removed: collectors run on their own schedule only" in err, err
        assert "align_to_scrapes: unknown key" not in err
        assert f"{cfg}:4: bogus: unknown key" in err  # the other errors of the file still listed


def test_unreadable_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "dir.yaml")
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"collectors: []\nstate_dir: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bin.yaml:2: the file is not valid UTF-8"):
        load_config(bad)


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text("collectors:\n  - process:\n      interval: -1\n")
    assert main(["check-config", str(good)]) == 0
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: collectors[0].process.interval" in err


def test_check_config_as_a_process_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("collectors:\n  - process: {unknown_key: 1}\n")
    proc = subprocess.run([sys.executable, "-m", "mevwatch", "check-config", str(bad)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2
    assert f"{bad}:2: collectors[0].process.unknown_key: unknown key" in proc.stderr


def test_example_config_validates_and_names_every_collector_kind() -> None:
    from mevwatch.collectors.registry import all_kinds

    cfg = load_config(REPO / "config.example.yaml", env=dict(os.environ))
    kinds = {s.kind for s in cfg.collectors}
    shipped = {k for k, cls in all_kinds().items() if cls.__module__.startswith("mevwatch.collectors.")}
    assert shipped <= kinds, f"config.example.yaml lacks {shipped - kinds}"


def test_embedded_default_config_is_valid() -> None:
    cfg = load_config_text(default_config_text(), "<embedded default>", {})
    assert ("process", "default") in [s.key for s in cfg.collectors]


def test_duration_and_size_parsing() -> None:
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration(3) == 3.0
    for bad in ("", "1x", "s", True, -1, "1s2"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    assert parse_bytes("64MiB") == 64 * 1024**2
    assert parse_bytes("1GB") == 10**9
    assert parse_bytes(512) == 512
    with pytest.raises(ValueError, match="size"):
        parse_bytes("lots")


def test_secret_files(tmp_path: Path) -> None:
    p = tmp_path / "pw"
    p.write_text("hunter2\n")
    assert read_secret_file(p) == "hunter2"
    with pytest.raises(ValueError, match="cannot read secret file"):
        read_secret_file(tmp_path / "missing")


def test_a_timeout_of_twice_the_interval_or_more_is_rejected_where_it_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # samples older than 2x the interval are stale: a run that may last that long would resolve alerts falsely
    cfg = tmp_path / "slow.yaml"
    cfg.write_text("collectors:\n  - process: {interval: 1s, timeout: 1900ms}\n  - memory:\n"
                   "      interval: 1s\n      timeout: 2s\n  - cpu: {timeout: 30s}\n")
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}:5: collectors[1].memory.timeout: timeout 2s must be less than twice the interval (1s)" in err, err
    # the kind's default interval counts when none is written (cpu: 15s)
    assert f"{cfg}:6: collectors[2].cpu.timeout: timeout 30s must be less than twice the interval (15s)" in err, err
    assert "collectors[0]" not in err  # under twice the interval: accepted
