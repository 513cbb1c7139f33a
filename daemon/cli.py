"""The ``mevwatch`` command: run, check-config, and the subcommands other packages add.

Exit codes: 0 ok, 1 a check found a problem (verify, diagnose), 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from mevwatch.daemon.config import Config, ConfigError, default_config_text, load_config, load_config_text
from mevwatch.daemon.logging import configure_logging

__all__ = ["add_config_argument", "load_or_default", "main"]

log = structlog.get_logger("mevwatch")

# Modules that add subcommands: each has ``register(subparsers)``; a module not present yet is skipped.
COMMAND_MODULES = (
    "mevwatch.daemon.diagnose",
    "mevwatch.daemon.integrity_cli",
    "mevwatch.alerts.cli",
    "mevwatch.alerts.promrules",
)
#: the module of COMMAND_MODULES that adds each command: a command named on the command line imports its
#: own module only (every module is ~40 ms of a 0.5 s `integrity verify --quick`, bench/integrity.py)
COMMAND_MODULE_OF = {
    "diagnose": "mevwatch.daemon.diagnose",
    "integrity": "mevwatch.daemon.integrity_cli",
    "alerts": "mevwatch.alerts.cli",
    "silence": "mevwatch.alerts.cli",
    "rules": "mevwatch.alerts.promrules",
}

STOP_TIMEOUT_S = 5.0


def add_config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="config file (default: the embedded default config)")


def load_or_default(path: str | None) -> Config:
    if path:
        return load_config(path)
    return load_config_text(default_config_text(), "<embedded default>")


def load_or_report(path: str | None) -> Config | None:
    """What a tool command loads: the config, or None after printing each problem to stderr (exit 2)."""
    try:
        return load_or_default(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        return None


def _print_config_error(exc: ConfigError) -> None:
    for issue in exc.issues:
        print(f"error: {issue}", file=sys.stderr)
    print(f"{len(exc.issues)} error(s) in the configuration", file=sys.stderr)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        _print_config_error(exc)
        return 2
    print(f"{args.file}: OK ({len(cfg.collectors)} collector(s))")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    # Start-up builds long-lived objects only (modules, validators, collectors): the cyclic collector's
    # passes over them cost CPU and free nothing (bench/startup.py). It runs again once the daemon is
    # ready (Daemon._announce_ready), with what start-up built frozen out of its later passes.
    gc.disable()
    try:
        return _run(args)
    finally:
        gc.enable()


def _run(args: argparse.Namespace) -> int:
    try:
        cfg = load_or_default(args.config)
    except ConfigError as exc:
        _print_config_error(exc)
        return 2
    from mevwatch.daemon.flags import overrides_from_args

    overrides = overrides_from_args(args)
    cfg = overrides.apply(cfg)
    configure_logging(cfg.daemon.log.level, cfg.daemon.log.format)
    from mevwatch.daemon.runtime import Daemon, StartupError

    daemon = Daemon(cfg, config_path=args.config, overrides=overrides)
    try:
        code = asyncio.run(daemon.main())
    except StartupError as exc:
        log.error("startup_failed", error=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 0
    if daemon.pool_has_hung_threads():
        # A thread stuck in a hung syscall (dead NFS) would block interpreter exit forever.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


BUILTIN_COMMANDS = ("run", "check-config")


class _VersionAction(argparse.Action):
    """``--version`` as Prometheus and its exporters print it (build details read only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from mevwatch.daemon.buildinfo import version_text

        sys.stdout.write(version_text())
        parser.exit()


def requested_command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first argument that is not an option), if any."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(commands: bool | str = True) -> argparse.ArgumentParser:
    """The command-line parser; ``commands=False`` leaves out the commands of COMMAND_MODULES, a command
    name of COMMAND_MODULE_OF keeps that command alone.

    ``mevwatch run`` builds it without them: the daemon then never imports the diagnose, integrity,
    alert and rule tools it does not run (they cost memory for the daemon's whole life). A tool command
    imports neither the other tools nor the daemon's flags (they cost start-up time of every run of it).
    """
    parser = argparse.ArgumentParser(
        prog="mevwatch", description="Monitoring daemon for Ethereum MEV hosts (metrics and alerts)."
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and build information, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    if not isinstance(commands, str):
        run = sub.add_parser("run", help="run the daemon in the foreground (systemd Type=notify)")
        add_config_argument(run)
        from mevwatch.daemon.flags import add_run_flags

        add_run_flags(run)
        run.set_defaults(func=cmd_run)

        check = sub.add_parser("check-config", help="validate a config file; exit 0 if valid, 2 if not")
        check.add_argument("file")
        check.set_defaults(func=cmd_check_config)

    if isinstance(commands, str):
        modules: Sequence[str] = (COMMAND_MODULE_OF[commands],)
    else:
        modules = COMMAND_MODULES if commands else ()
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        register: Callable[[Any], None] = mod.register
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = requested_command(args_list)
    # a tool command gets a parser of its own; anything else (help, a typo) the whole list of commands
    parser = build_parser(commands=command if command in COMMAND_MODULE_OF else command not in BUILTIN_COMMANDS)
    args = parser.parse_args(args_list)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.func is not cmd_run:
        gc.freeze()  # what start-up built lives to the end: no collection walks it again
        gc.enable()  # off during start-up (mevwatch/__main__.py); only the daemon keeps it off until ready
    result: int = args.func(args)
    return result

