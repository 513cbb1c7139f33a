"""Configuration: YAML into strict pydantic models, with env interpolation and exact error positions.

Every error names the file, the line and the field path (``collectors[2].rpc.endpoints[0].url``),
and all errors of a file are reported at once. Unknown keys are errors.

Collector entries are one-key mappings, the key being the collector kind::

    collectors:
      - memory: {}
      - rpc:
          instance: mainnet
          endpoints: [{name: erigon, url: "http://127.0.0.1:8545"}]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mevwatch.alerts.config import AlertsConfig, RuleLoading
from mevwatch.collectors.base import CollectorOptions, Paths, PollCollector
from mevwatch.collectors.registry import IMPORT_ERRORS, REMOVED_KINDS, all_kinds, get_kind
from mevwatch.daemon.state import default_state_dir
from mevwatch.daemon.yamlsource import ConfigError, ConfigIssue, Loc, format_loc, read_yaml

__all__ = [
    "DEFAULT_LISTEN",
    "CollectorSpec",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "DaemonConfig",
    "default_config_text",
    "load_config",
    "load_config_text",
    "validate_telemetry_path",
]

DEFAULT_LISTEN = "127.0.0.1:9717"
#: top-level keys that older versions accepted, with what to do instead (an error, not "unknown key")
REMOVED_KEYS: dict[str, str] = {
    "align_to_scrapes": "removed: collectors run on their own schedule only and a /metrics scrape never runs "
    "one; delete this key (set a collector's `interval` to the scrape period for values as fresh)",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def validate_telemetry_path(v: str) -> str:
    if not v.startswith("/") or any(c.isspace() for c in v) or "?" in v or "#" in v:
        raise ValueError(f"telemetry_path must be an absolute URL path such as /metrics, got {v!r}")
    return v


class WebConfig(_Strict):
    listen_address: str = Field(DEFAULT_LISTEN, description="host:port the HTTP server binds")
    telemetry_path: str = Field(
        "/metrics", description="path under which metrics are served; like --web.telemetry-path"
    )
    config_file: Path | None = Field(
        None, description="exporter-toolkit web-config file (TLS, basic auth); like --web.config.file"
    )
    enable_lifecycle: bool = Field(False, description="allow POST /-/reload (off by default, as in Prometheus)")

    @field_validator("telemetry_path")
    @classmethod
    def _path(cls, v: str) -> str:
        return validate_telemetry_path(v)

    @field_validator("listen_address")
    @classmethod
    def check_listen_address(cls, v: str) -> str:
        _, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"listen_address must be host:port with a port 1-65535, got {v!r}")
        return v


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="minimum level logged")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: readable on a TTY, JSON lines otherwise"
    )


class PathsConfig(_Strict):
    procfs: Path = Field(Path("/proc"), description="procfs mount point (like --path.procfs)")
    sysfs: Path = Field(Path("/sys"), description="sysfs mount point (like --path.sysfs)")
    rootfs: Path = Field(Path("/"), description="root filesystem (like --path.rootfs)")
    devfs: Path = Field(Path("/dev"), description="device filesystem (for /dev/kmsg)")

    def to_paths(self) -> Paths:
        return Paths(procfs=self.procfs, sysfs=self.sysfs, rootfs=self.rootfs, devfs=self.devfs)


class DaemonConfig(_Strict):
    """Top level of the config file (the ``collectors`` list is validated per kind)."""

    state_dir: Path | None = Field(
        None, description="state DB directory; default $STATE_DIRECTORY (systemd) or ./.mevwatch"
    )
    web: WebConfig = Field(default_factory=WebConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    blocking_threads: int = Field(8, ge=1, le=256, description="threads for blocking OS calls")
    collectors: list[Any] = Field(default_factory=list, description="collector entries, one-key mappings")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="alert rules, routes and receivers")

    @model_validator(mode="after")
    def _own_links(self) -> DaemonConfig:
        alerts = self.alerts.with_own_links(self.web.listen_address.rsplit(":", 1)[1])
        object.__setattr__(self, "alerts", alerts)  # a frozen model: its one derived field, set once here
        return self


@dataclass(frozen=True, slots=True)
class CollectorSpec:
    kind: str
    options: CollectorOptions

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.options.instance)


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    daemon: DaemonConfig
    collectors: tuple[CollectorSpec, ...] = field(default_factory=tuple)

    @property
    def state_dir(self) -> Path:
        return self.daemon.state_dir or default_state_dir()


# --- loading -----------------------------------------------------------------------------


def load_config_text(text: str, file: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate config text; raises ConfigError listing every problem at once.

    Problems in rule files the ``alerts:`` section names are reported with their own file and line.
    """
    doc = read_yaml(text, file, os.environ if env is None else env)
    if doc.data is None:
        raise ConfigError([ConfigIssue(file, 1, "", "the file is empty; at least `collectors:` is needed")])
    data = doc.data
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(file, 1, "", "the top level must be a mapping of sections")])
    issues = list(doc.issues)

    for key, message in REMOVED_KEYS.items():
        if key in data:
            issues.append(doc.issue((key,), message))
    base = Path(file).parent if file and not file.startswith("<") else Path.cwd()
    rule_loading = RuleLoading(base, locate=doc.issue)
    daemon: DaemonConfig | None = None
    try:
        # an absent section is validated too, so that its default rules are loaded with the rest
        current = {k: v for k, v in data.items() if k not in REMOVED_KEYS}
        daemon = DaemonConfig.model_validate({"alerts": {}, **current}, context=rule_loading)
    except ValidationError as exc:
        issues.extend(doc.validation_issues(exc))
    issues.extend(rule_loading.issues)

    specs: list[CollectorSpec] = []
    raw_collectors = data.get("collectors", [])
    seen: dict[tuple[str, str], int] = {}
    if isinstance(raw_collectors, list):
        for i, entry in enumerate(raw_collectors):
            loc: Loc = ("collectors", i)
            if not isinstance(entry, dict) or len(entry) != 1:
                issues.append(doc.issue(loc, "each collector entry must be a one-key mapping `- <kind>: {options}`"))
                continue
            kind, body = next(iter(entry.items()))
            if kind in REMOVED_KINDS:  # at the line of the kind, not of its options
                issues.append(ConfigIssue(file, doc.line(loc), format_loc((*loc, kind)), REMOVED_KINDS[kind]))
                continue
            cls = get_kind(kind)
            if cls is None and kind in IMPORT_ERRORS:
                issues.append(doc.issue((*loc, kind), f"collector {kind!r} cannot be loaded: {IMPORT_ERRORS[kind]}"))
                continue
            if cls is None:
                issues.append(
                    doc.issue((*loc, kind), f"unknown collector kind {kind!r}; known: {', '.join(all_kinds())}")
                )
                continue
            try:
                opts = cls.Options.model_validate({} if body is None else body)
            except ValidationError as exc:
                issues.extend(doc.validation_issues(exc, (*loc, kind)))
                continue
            interval = opts.interval or cls.default_interval
            if issubclass(cls, PollCollector) and opts.timeout is not None and opts.timeout >= 2 * interval:
                # The store drops samples older than 2x the interval: a run allowed to last that long would
                # leave the collector without samples before it ends and resolve its alerts falsely.
                # Prometheus rejects a scrape_timeout above scrape_interval for the same reason. (A stream
                # kind's timeout bounds something else, e.g. one pass of logwatch over its files.)
                issues.append(doc.issue((*loc, kind, "timeout"), (
                    f"timeout {opts.timeout:g}s must be less than twice the interval ({interval:g}s): samples "
                    "older than 2x the interval are dropped as stale before a run that slow ends")))
                continue
            spec = CollectorSpec(kind, opts)
            if spec.key in seen:
                issues.append(
                    ConfigIssue(
                        file,
                        doc.line((*loc, kind)),
                        format_loc((*loc, kind, "instance")),
                        f"duplicate {kind} instance {opts.instance!r} (also collectors[{seen[spec.key]}]); "
                        "give each a distinct `instance`",
                    )
                )
                continue
            seen[spec.key] = i
            specs.append(spec)
    if issues or daemon is None:
        raise ConfigError(sorted(issues, key=lambda i: (i.line or 0, i.path)))
    return Config(source=file, daemon=daemon, collectors=tuple(specs))


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(p), None, "", f"cannot read config: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue(str(p), line, "", "the file is not valid UTF-8")]) from None
    return load_config_text(text, str(p), env)


def default_config_text() -> str:
    """The embedded default: every collector kind that is on by default, with default options."""
    kinds = [
        k
        for k, cls in all_kinds().items()
        if cls.default_enabled and cls.__module__.startswith("mevwatch.collectors.")
    ]
    return "collectors:\n" + "".join(f"  - {k}: {{}}\n" for k in kinds)
