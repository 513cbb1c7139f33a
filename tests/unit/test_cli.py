"""The command line: which modules each command loads, and that every command stays reachable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mevwatch.daemon.cli import requested_command

REPO = Path(__file__).resolve().parents[2]

# What only the tools need: a daemon that loads them carries them for its whole life.
TOOL_MODULES = (
    "mevwatch.daemon.diagnose",
    "mevwatch.daemon.integrity_cli",
    "mevwatch.collectors.integrity",
    "mevwatch.alerts.cli",
    "mevwatch.alerts.promrules",
    "mevwatch.alerts.sinks.mail",
    "mevwatch.alerts.sinks.webhook",
    "mevwatch.alerts.sinks.alertmanager",
    "aiosmtplib",
)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["run", "--config", "x.yaml"], "run"),
        (["--version"], None),
        ([], None),
        (["check-config", "f.yaml"], "check-config"),
        (["diagnose", "--json"], "diagnose"),
    ],
)
def test_requested_command_is_the_first_argument_that_is_not_an_option(argv: list[str], command: str | None) -> None:
    assert requested_command(argv) == command


def _modules_after(argv: list[str], tmp_path: Path) -> set[str]:
    script = (
        "import json, sys\n"
        "from mevwatch.daemon.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write('MODULES=' + json.dumps(sorted(sys.modules)) + '\\n')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    line = next(x for x in out.stderr.splitlines() if x.startswith("MODULES="))
    return set(json.loads(line[len("MODULES="):]))


def test_check_config_loads_none_of_the_tools(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("collectors:\n  - process: {}\n")
    loaded = _modules_after(["check-config", str(cfg)], tmp_path)
    assert "mevwatch.daemon.config" in loaded  # it did run
    assert loaded.isdisjoint(TOOL_MODULES), sorted(loaded & set(TOOL_MODULES))


def test_help_still_lists_every_command(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "mevwatch", "--help"], capture_output=True, text=True, timeout=60,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    for command in ("run", "check-config", "diagnose", "integrity", "alerts", "silence", "rules"):
        assert f"    {command}" in out.stdout, command


def test_a_tool_command_still_runs(tmp_path: Path) -> None:
    loaded = _modules_after(["rules", "export", "--help"], tmp_path)
    assert "mevwatch.alerts.promrules" in loaded


def test_each_tool_command_is_mapped_to_the_module_that_adds_it() -> None:
    from mevwatch.daemon.cli import COMMAND_MODULE_OF, COMMAND_MODULES, build_parser

    assert set(COMMAND_MODULE_OF.values()) == set(COMMAND_MODULES)
    whole = build_parser(commands=True)
    added = {name for action in whole._subparsers._group_actions for name in action.choices}  # type: ignore[union-attr]
    assert added - {"run", "check-config"} == set(COMMAND_MODULE_OF)
    for command in COMMAND_MODULE_OF:
        alone = build_parser(commands=command)
        names = {name for action in alone._subparsers._group_actions for name in action.choices}  # type: ignore[union-attr]
        assert command in names, command


def test_a_tool_command_loads_no_other_tool(tmp_path: Path) -> None:
    loaded = _modules_after(["integrity", "verify", "--help"], tmp_path)
    assert "mevwatch.daemon.integrity_cli" in loaded
    assert loaded.isdisjoint({"mevwatch.daemon.diagnose", "mevwatch.alerts.cli", "mevwatch.alerts.promrules",
                              "mevwatch.daemon.flags"}), sorted(loaded)


def test_a_tool_command_runs_with_what_start_up_built_frozen(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    """A tool command turns the cyclic collector on again with start-up's objects frozen, so that its
    first collections do not walk every module and model built while it was off (timed against the
    tree before, runs alternated: `check-config` 0.28 -> 0.22 s, `integrity verify --quick` of 20,201
    paths 0.50 -> 0.435 s; docs/benchmarks.md)."""
    import gc

    from mevwatch.daemon import cli

    seen: dict[str, int] = {}

    def command(args: object) -> int:
        seen["enabled"], seen["frozen"] = int(gc.isenabled()), gc.get_freeze_count()
        return 0

    monkeypatch.setattr(cli, "cmd_check_config", command)
    was_enabled, was_frozen = gc.isenabled(), gc.get_freeze_count()
    gc.unfreeze()
    gc.disable()  # as mevwatch/__main__.py leaves it for the command line
    try:
        assert cli.main(["check-config", str(tmp_path / "mevwatch.yaml")]) == 0
    finally:
        gc.unfreeze()
        if was_frozen:
            gc.freeze()
        if was_enabled:
            gc.enable()
        else:
            gc.disable()
    assert seen["enabled"] == 1
    assert seen["frozen"] > 0
