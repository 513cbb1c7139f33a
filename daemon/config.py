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
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mevwatch.alerts.config import AlertsConfig, resolve_rules
from mevwatch.collectors.base import IMPORT_ERRORS, CollectorOptions, Paths, all_kinds, get_kind
from mevwatch.daemon.state import default_state_dir

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
Loc = tuple[str | int, ...]
#: top-level keys that older versions accepted, with what to do instead (an error, not "unknown key")
REMOVED_KEYS: dict[str, str] = {
    "align_to_scrapes": "removed: collectors run on their own schedule only and a /metrics scrape never runs "
    "one; delete this key (set a collector's `interval` to the scrape period for values as fresh)",
}


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


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


# --- YAML with positions -----------------------------------------------------------------

_VAR_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class _Builder:
    """Builds plain Python objects from a composed YAML tree, recording each path's line."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.lines: dict[Loc, int] = {}
        self.issues: list[ConfigIssue] = []

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for knode, vnode in node.value:
                key = self._scalar(knode, loc)
                if not isinstance(key, str):
                    self.issues.append(
                        ConfigIssue(self.file, knode.start_mark.line + 1, _fmt(loc), f"key {key!r} is not a string")
                    )
                    continue
                if key in out:
                    self.issues.append(
                        ConfigIssue(self.file, knode.start_mark.line + 1, _fmt((*loc, key)), "duplicate key")
                    )
                out[key] = self.build(vnode, (*loc, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, (*loc, i)) for i, v in enumerate(node.value)]
        return self._scalar(node, loc)

    def _scalar(self, node: yaml.Node, loc: Loc) -> Any:
        loader = yaml.SafeLoader("")
        try:
            value = loader.construct_object(node, deep=True)
        finally:
            loader.dispose()
        if isinstance(value, str):
            return self._interpolate(value, node, loc)
        return value

    def _interpolate(self, text: str, node: yaml.Node, loc: Loc) -> str:
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name in self.env and (default is None or self.env[name] != ""):
                return self.env[name]
            if default is not None:
                return default
            self.issues.append(
                ConfigIssue(
                    self.file,
                    node.start_mark.line + 1,
                    _fmt(loc),
                    f"environment variable {name} is not set (use ${{{name}:-default}} for a default)",
                )
            )
            return ""

        return _VAR_RE.sub(sub, text)


def _fmt(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _line_for(lines: Mapping[Loc, int], loc: Loc) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _pydantic_issues(
    exc: ValidationError, prefix: Loc, file: str, lines: Mapping[Loc, int]
) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        loc = (*prefix, *(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        issues.append(ConfigIssue(file, _line_for(lines, loc), _fmt(loc), msg))
    return issues


# --- loading -----------------------------------------------------------------------------


def load_config_text(text: str, file: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate config text; raises ConfigError listing every problem at once."""
    env = os.environ if env is None else env
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(
            [ConfigIssue(file, line, "", f"YAML syntax error: {exc.problem or exc.context}")]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, None, "", f"YAML error: {exc}")]) from None
    if root is None:
        raise ConfigError([ConfigIssue(file, 1, "", "the file is empty; at least `collectors:` is needed")])
    builder = _Builder(file, env)
    data = builder.build(root, ())
    issues = list(builder.issues)
    lines = builder.lines
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(file, 1, "", "the top level must be a mapping of sections")])

    for key, message in REMOVED_KEYS.items():
        if key in data:
            issues.append(ConfigIssue(file, _line_for(lines, (key,)), key, message))
    daemon: DaemonConfig | None = None
    try:
        daemon = DaemonConfig.model_validate({k: v for k, v in data.items() if k not in REMOVED_KEYS})
    except ValidationError as exc:
        issues.extend(_pydantic_issues(exc, (), file, lines))
    if daemon is not None and daemon.alerts.enabled:
        issues.extend(resolve_rules(daemon.alerts, file))

    specs: list[CollectorSpec] = []
    raw_collectors = data.get("collectors", [])
    seen: dict[tuple[str, str], int] = {}
    if isinstance(raw_collectors, list):
        for i, entry in enumerate(raw_collectors):
            loc: Loc = ("collectors", i)
            if not isinstance(entry, dict) or len(entry) != 1:
                issues.append(
                    ConfigIssue(
                        file,
                        _line_for(lines, loc),
                        _fmt(loc),
                        "each collector entry must be a one-key mapping `- <kind>: {options}`",
                    )
                )
                continue
            kind, body = next(iter(entry.items()))
            cls = get_kind(kind)
            if cls is None and kind in IMPORT_ERRORS:
                issues.append(
                    ConfigIssue(
                        file,
                        _line_for(lines, (*loc, kind)),
                        _fmt((*loc, kind)),
                        f"collector {kind!r} cannot be loaded: {IMPORT_ERRORS[kind]}",
                    )
                )
                continue
            if cls is None:
                issues.append(
                    ConfigIssue(
                        file,
                        _line_for(lines, (*loc, kind)),
                        _fmt((*loc, kind)),
                        f"unknown collector kind {kind!r}; known: {', '.join(all_kinds())}",
                    )
                )
                continue
            try:
                opts = cls.Options.model_validate({} if body is None else body)
            except ValidationError as exc:
                issues.extend(_pydantic_issues(exc, (*loc, kind), file, lines))
                continue
            spec = CollectorSpec(kind, opts)
            if spec.key in seen:
                issues.append(
                    ConfigIssue(
                        file,
                        _line_for(lines, (*loc, kind)),
                        _fmt((*loc, kind, "instance")),
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
