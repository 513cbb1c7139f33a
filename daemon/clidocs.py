"""Shell completion (bash, zsh) and the man page, generated from the command-line parser.

Build-time only (shtab and argparse-manpage are development tools, not daemon dependencies):
``python -m mevwatch.daemon.clidocs`` writes the files; a test checks the committed ones are current.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mevwatch import __version__

__all__ = ["OUTPUTS", "bash_completion", "man_page", "outputs", "write_all", "zsh_completion"]

REPO = Path(__file__).resolve().parents[1]
#: generated file -> where the Debian package installs it (debian/mevwatch.install, .manpages)
OUTPUTS = {
    "deploy/completion/bash/mevwatch": "/usr/share/bash-completion/completions/mevwatch",
    "deploy/completion/zsh/_mevwatch": "/usr/share/zsh/vendor-completions/_mevwatch",
    "docs/mevwatch.1": "/usr/share/man/man1/mevwatch.1.gz",
}

_FILES = {"bash": "_shtab_compgen_files", "zsh": "_files"}  # shtab.FILE
_DIRS = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/"}  # shtab.DIRECTORY

_EXTRA_SECTIONS = r""".SH FILES
.TP
.I /etc/mevwatch/mevwatch.yaml
the configuration (\fBmevwatch check\-config\fR validates it); every option is shown in
.I /usr/share/doc/mevwatch/config.example.yaml
.TP
.I /var/lib/mevwatch
state: alert outbox, integrity baseline, history (\fIstate_dir\fR, or $STATE_DIRECTORY under systemd)
.TP
.I /var/lib/mevwatch/textfile
*.prom files of other programs, served by the textfile collector
.SH EXIT STATUS
0 success; 1 a check found a problem (verify, diagnose); 2 a bad configuration or usage, with the file,
line and field path of each error.
.SH SIGNALS
SIGHUP reloads the configuration; a bad file is rejected and the running configuration stays.
SIGTERM and SIGINT stop the daemon.
.SH SEE ALSO
.BR systemctl (1),
.BR prometheus (1),
.BR prometheus\-node\-exporter (1)
"""


def _parser() -> argparse.ArgumentParser:
    os.environ["COLUMNS"] = "100"  # argparse wraps usage to the terminal: the same text on every machine
    from mevwatch.daemon.cli import build_parser

    parser = build_parser(commands=True)
    _mark_paths(parser)
    return parser


def _mark_paths(parser: argparse.ArgumentParser) -> None:
    """Complete FILE arguments with file names and DIR ones with directories (shtab's ``complete``)."""
    for action in parser._actions:
        metavar = str(action.metavar or "")
        if "FILE" in metavar or action.dest in ("file", "config"):
            action.complete = _FILES  # type: ignore[attr-defined]
        elif "DIR" in metavar:
            action.complete = _DIRS  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _mark_paths(sub)


def bash_completion() -> str:
    import shtab

    return str(shtab.complete(_parser(), "bash"))


def zsh_completion() -> str:
    import shtab

    return str(shtab.complete(_parser(), "zsh"))


def man_page() -> str:
    from argparse_manpage.manpage import Manpage

    page = Manpage(_parser())
    page.date = ""  # reproducible: the version says which release it documents
    page.source = f"mevwatch {__version__}"
    page.manual = "mevwatch manual"
    page.description = "monitoring daemon for Ethereum MEV hosts: runbook checks as metrics and routed alerts"
    text = str(page)
    return text.rstrip("\n") + "\n" + _EXTRA_SECTIONS


def outputs() -> dict[str, str]:
    return {
        "deploy/completion/bash/mevwatch": bash_completion(),
        "deploy/completion/zsh/_mevwatch": zsh_completion(),
        "docs/mevwatch.1": man_page(),
    }


def write_all(root: Path = REPO) -> list[Path]:
    written = []
    for rel, text in outputs().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main() -> int:
    for path in write_all():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
