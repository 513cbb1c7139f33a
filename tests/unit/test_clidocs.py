"""Completion scripts and the man page are generated from the parser, and the committed ones are current."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mevwatch.daemon.clidocs import outputs
from tests.support.peers import REPO

GENERATED = outputs()


@pytest.mark.parametrize("rel", sorted(GENERATED))
def test_the_committed_file_is_what_the_parser_generates(rel: str) -> None:
    committed = (REPO / rel).read_text(encoding="utf-8")
    assert committed == GENERATED[rel], f"{rel} is stale: run python -m mevwatch.daemon.clidocs"


def _bash_complete(line: str) -> list[str]:
    words = line.split(" ")
    script = (f"source {REPO / 'deploy/completion/bash/mevwatch'}\n"
              f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
              f"COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}\n"
              f"_shtab_mevwatch mevwatch {words[-1]!r} {words[-2]!r}\n"
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()


def test_bash_completes_commands_and_node_exporter_style_flags() -> None:
    assert {"run", "check-config", "diagnose"} <= set(_bash_complete("mevwatch "))
    assert _bash_complete("mevwatch run --collector.tex") == ["--collector.textfile"]
    assert "--web.telemetry-path" in _bash_complete("mevwatch run --web.")


def test_the_man_page_documents_every_run_flag_and_renders_cleanly() -> None:
    page = GENERATED["docs/mevwatch.1"]
    for flag in ("web.listen\\-address", "web.telemetry\\-path", "log.level", "log.format",
                 "collector.disable\\-defaults", "no\\-collector.textfile"):
        assert flag in page, flag
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff not installed")
    out = subprocess.run([groff, "-man", "-ww", "-z", str(REPO / "docs/mevwatch.1")], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0
    assert out.stderr == ""


def test_the_zsh_completion_loads_with_the_run_flags() -> None:
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh not installed")
    script = REPO / "deploy/completion/zsh/_mevwatch"
    assert subprocess.run([zsh, "-n", str(script)], capture_output=True, timeout=30).returncode == 0
    out = subprocess.run([zsh, "-fc", f"autoload -Uz compinit && compinit -u -D; source {script} 2>/dev/null; "
                          "whence -w _shtab_mevwatch; print -l -- ${_shtab_mevwatch_run_options[@]}"],
                         capture_output=True, text=True, timeout=30)
    lines = out.stdout.splitlines()
    assert lines[0] == "_shtab_mevwatch: function", out
    assert "*--collector.textfile[enable the textfile collector]" in lines
    assert any(ln.startswith("--web.telemetry-path[") for ln in lines)
