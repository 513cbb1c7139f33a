"""node_exporter's command-line habits for ``mevwatch run``, and where each running setting came from.

``--collector.<kind>`` / ``--no-collector.<kind>`` / ``--collector.disable-defaults`` switch collectors,
``--web.listen-address`` (repeatable), ``--web.telemetry-path``, ``--log.level`` and ``--log.format``
override the config file. The overrides are kept apart from the file, so a reload applies them again,
and :func:`settings` tells the landing page, per setting, whether a flag, the file or a default set it.
"""

from __future__ import annotations

import argparse
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mevwatch.collectors.registry import kind_names
from mevwatch.daemon.config import CollectorSpec, Config, WebConfig, validate_telemetry_path

__all__ = [
    "Overrides",
    "Setting",
    "add_run_flags",
    "overrides_from_args",
    "settings",
    "settings_html",
]

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


@dataclass(frozen=True, slots=True)
class Overrides:
    """What the command line sets; empty fields leave the config file's value."""

    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    disable_defaults: bool = False
    listen_addresses: tuple[str, ...] = ()
    telemetry_path: str | None = None
    web_config_file: str | None = None
    enable_lifecycle: bool = False
    log_level: str | None = None
    log_format: str | None = None
    flags: dict[str, str] = field(default_factory=dict)  # setting -> the flag that set it, for settings()

    def apply(self, config: Config) -> Config:
        """``config`` with the flags laid over it (the file's own values stay where no flag is given)."""
        from mevwatch.collectors.registry import get_kind

        d = config.daemon
        web: dict[str, Any] = {}
        if self.listen_addresses:
            web["listen_address"] = self.listen_addresses[0]
        if self.telemetry_path is not None:
            web["telemetry_path"] = self.telemetry_path
        if self.web_config_file is not None:
            from pathlib import Path

            web["config_file"] = Path(self.web_config_file)
        if self.enable_lifecycle:
            web["enable_lifecycle"] = True
        log: dict[str, Any] = {}
        if self.log_level is not None:
            log["level"] = self.log_level
        if self.log_format is not None:
            log["format"] = self.log_format
        new_web = d.web.model_copy(update=web)
        daemon = d.model_copy(update={
            "web": new_web, "log": d.log.model_copy(update=log),
            "alerts": d.alerts.with_own_links(new_web.listen_address.rsplit(":", 1)[1]),  # links follow the port
        })
        specs: list[CollectorSpec] = []
        for spec in config.collectors:
            on = spec.options.enabled
            if self.disable_defaults:
                on = spec.kind in self.enable
            elif spec.kind in self.enable:
                on = True
            if spec.kind in self.disable:
                on = False
            specs.append(spec if on == spec.options.enabled else
                         CollectorSpec(spec.kind, spec.options.model_copy(update={"enabled": on})))
        present = {s.kind for s in specs}
        for kind in self.enable:
            if kind in present or kind in self.disable:
                continue
            cls = get_kind(kind)
            if cls is None:  # a module that failed to import: the config check reports it
                continue
            specs.append(CollectorSpec(kind, cls.Options()))
        return replace(config, daemon=daemon, collectors=tuple(specs))


def _kinds_argument(kind: str) -> str:
    return kind.replace("_", "-")


def add_run_flags(p: argparse.ArgumentParser, kinds: Sequence[str] | None = None) -> None:
    """The node_exporter-style flags of ``mevwatch run``."""
    web = p.add_argument_group("web")
    web.add_argument("--web.listen-address", dest="listen_address", metavar="HOST:PORT", action="append",
                     type=_listen_address,
                     help="address to serve on; repeat it to listen on several (default from config, 127.0.0.1:9717)")
    web.add_argument("--web.telemetry-path", dest="telemetry_path", metavar="PATH", type=_telemetry_path,
                     help="path under which metrics are served (default from config, /metrics)")
    web.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                     help="exporter-toolkit web config (TLS, basic auth)")
    web.add_argument("--web.enable-lifecycle", dest="enable_lifecycle", action="store_true",
                     help="allow POST /-/reload")
    lg = p.add_argument_group("logging")
    lg.add_argument("--log.level", dest="log_level", choices=LOG_LEVELS,
                    help="only log messages with the given severity or above (default from config, info)")
    lg.add_argument("--log.format", dest="log_format", choices=LOG_FORMATS,
                    help="output format of log messages (default from config, auto: JSON off a TTY)")
    col = p.add_argument_group("collectors", "flags override the config file's `enabled`; a kind the file does "
                               "not list runs with its default options when enabled by flag")
    col.add_argument("--collector.disable-defaults", dest="disable_defaults", action="store_true",
                     help="run only the collectors enabled with --collector.<kind>")
    for kind in kind_names() if kinds is None else kinds:
        # both spellings: node_exporter's kinds have no underscores, ours may (mempool_stream)
        names = sorted({f"--collector.{kind}", f"--collector.{_kinds_argument(kind)}"})
        col.add_argument(*names, dest="collector_switch", action="append_const", const=("+", kind),
                         help=f"enable the {kind} collector")
        no = sorted({f"--no-collector.{kind}", f"--no-collector.{_kinds_argument(kind)}"})
        col.add_argument(*no, dest="collector_switch", action="append_const", const=("-", kind),
                         help=f"disable the {kind} collector")


def _listen_address(value: str) -> str:
    try:
        return WebConfig.check_listen_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _telemetry_path(value: str) -> str:
    try:
        return validate_telemetry_path(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def overrides_from_args(args: argparse.Namespace) -> Overrides:
    """The overrides ``mevwatch run``'s parsed arguments ask for; the last switch of a kind wins."""
    state: dict[str, str] = {}
    for sign, kind in getattr(args, "collector_switch", None) or ():
        state[kind] = sign
    flags: dict[str, str] = {}
    listen = tuple(getattr(args, "listen_address", None) or ())
    if listen:
        flags["web.listen_address"] = "--web.listen-address"
    for key, attr, flag in (
        ("web.telemetry_path", "telemetry_path", "--web.telemetry-path"),
        ("web.config_file", "web_config_file", "--web.config.file"),
        ("log.level", "log_level", "--log.level"),
        ("log.format", "log_format", "--log.format"),
    ):
        if getattr(args, attr, None) is not None:
            flags[key] = flag
    if getattr(args, "enable_lifecycle", False):
        flags["web.enable_lifecycle"] = "--web.enable-lifecycle"
    return Overrides(
        enable=tuple(k for k, s in state.items() if s == "+"),
        disable=tuple(k for k, s in state.items() if s == "-"),
        disable_defaults=bool(getattr(args, "disable_defaults", False)),
        listen_addresses=listen,
        telemetry_path=getattr(args, "telemetry_path", None),
        web_config_file=getattr(args, "web_config_file", None),
        enable_lifecycle=bool(getattr(args, "enable_lifecycle", False)),
        log_level=getattr(args, "log_level", None),
        log_format=getattr(args, "log_format", None),
        flags=flags,
    )


@dataclass(frozen=True, slots=True)
class Setting:
    """One running setting and where its value came from (``flag --x``, ``config file F``, ``default``)."""

    name: str
    value: str
    source: str


def settings(config: Config, overrides: Overrides, config_path: str | None) -> list[Setting]:
    """The running settings with their sources, for the landing page.

    ``config`` is the config as running (overrides applied); ``config_path`` the file it was read from,
    None for the embedded default.
    """
    file_source = f"config file {config_path}" if config_path else "embedded default config"
    out = [Setting("config", config_path or "<embedded default>", "flag --config" if config_path else "default")]
    d = config.daemon
    sections: dict[str, Any] = {"web": d.web, "log": d.log}
    for section, model in sections.items():
        for name in type(model).model_fields:
            key = f"{section}.{name}"
            value = getattr(model, name)
            if key in overrides.flags:
                source = f"flag {overrides.flags[key]}"
            elif name in model.model_fields_set:
                source = file_source
            else:
                source = "default"
            shown = ", ".join(overrides.listen_addresses) if key == "web.listen_address" and \
                overrides.listen_addresses else ("" if value is None else str(value))
            out.append(Setting(key, shown, source))
    state_source = (file_source if d.state_dir is not None
                    else "environment STATE_DIRECTORY" if os.environ.get("STATE_DIRECTORY") else "default")
    out.append(Setting("state_dir", str(config.state_dir), state_source))
    for spec in config.collectors:
        name = f"collectors.{spec.kind}" + (f"/{spec.options.instance}" if spec.options.instance != "default" else "")
        value = "enabled" if spec.options.enabled else "disabled"
        if spec.kind in overrides.disable:
            source = f"flag --no-collector.{spec.kind}"
        elif spec.kind in overrides.enable:
            source = f"flag --collector.{spec.kind}"
        elif overrides.disable_defaults:
            source = "flag --collector.disable-defaults"
        else:
            source = file_source
        out.append(Setting(name, value, source))
    return out


def settings_html(rows: Sequence[Setting]) -> str:
    """A "Settings" section for the landing page: setting, value, source."""
    body = "".join(
        f"<tr><td>{html.escape(s.name)}</td><td>{html.escape(s.value)}</td><td>{html.escape(s.source)}</td></tr>"
        for s in rows
    )
    return ("<h2>Settings</h2><table border=1 cellpadding=4><tr><th>setting</th><th>value</th><th>source</th></tr>"
            f"{body}</table>")
