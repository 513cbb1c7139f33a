"""YAML with positions: plain data from a YAML text plus the line of every field path, for config errors.

The config file and every alert rule file are read through here, so each error names the file, the
line and the field path (``collectors[2].rpc.endpoints[0].url``) the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "Loc",
    "PositionedYAML",
    "format_loc",
    "line_for",
    "read_yaml",
    "validation_issues",
]

#: a field path: mapping keys and sequence indexes from the document root
Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config or rule file: where (file, line, field path) and what."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """Every problem found in a file at once."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


_VAR_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


@dataclass(slots=True)
class PositionedYAML:
    """Plain data of one YAML document, with the line of every field path and the problems met.

    ``env`` fills ``${VAR}`` and ``${VAR:-default}`` in string values (``$$`` is a literal ``$``);
    an unset variable without a default is an issue. Keys must be strings and unique.
    """

    file: str
    env: Mapping[str, str] = field(default_factory=dict)
    data: Any = None
    lines: dict[Loc, int] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)

    def build(self, node: yaml.Node, loc: Loc = ()) -> Any:
        """Plain Python data of ``node`` (placed at ``loc``), recording each path's line."""
        self.lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for knode, vnode in node.value:
                key = self._scalar(knode, loc)
                if not isinstance(key, str):
                    line = knode.start_mark.line + 1
                    self.issues.append(ConfigIssue(self.file, line, format_loc(loc), f"key {key!r} is not a string"))
                    continue
                if key in out:
                    self.issues.append(
                        ConfigIssue(self.file, knode.start_mark.line + 1, format_loc((*loc, key)), "duplicate key")
                    )
                out[key] = self.build(vnode, (*loc, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, (*loc, i)) for i, v in enumerate(node.value)]
        return self._scalar(node, loc)

    def line(self, loc: Loc) -> int | None:
        """Line of ``loc``, or of its nearest parent that has one."""
        return line_for(self.lines, loc)

    def issue(self, loc: Loc, message: str) -> ConfigIssue:
        """An issue at ``loc`` of this file."""
        return ConfigIssue(self.file, self.line(loc), format_loc(loc), message)

    def validation_issues(self, exc: ValidationError, prefix: Loc = ()) -> list[ConfigIssue]:
        """pydantic's errors for the data at ``prefix``, placed in this file."""
        return validation_issues(exc, prefix, self.file, self.lines)

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
                    format_loc(loc),
                    f"environment variable {name} is not set (use ${{{name}:-default}} for a default)",
                )
            )
            return ""

        return _VAR_RE.sub(sub, text)


# libyaml's parser when PyYAML has it: the same nodes and marks, and every command reads the
# default rules (composing them in Python was ~30 ms of each `mevwatch` command's start).
_COMPOSER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(text: str, file: str, env: Mapping[str, str] | None = None) -> PositionedYAML:
    """Parse one YAML document; a syntax error raises ConfigError with its line.

    ``data`` is None for an empty document; problems in the data (duplicate keys, unset variables)
    are in ``issues``.
    """
    doc = PositionedYAML(file, {} if env is None else env)
    try:
        root = yaml.compose(text, Loader=_COMPOSER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(
            [ConfigIssue(file, line, "", f"YAML syntax error: {exc.problem or exc.context}")]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, None, "", f"YAML error: {exc}")]) from None
    if root is not None:
        doc.data = doc.build(root)
    return doc


def format_loc(loc: Loc) -> str:
    """``("collectors", 2, "rpc", "url")`` -> ``collectors[2].rpc.url``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def line_for(lines: Mapping[Loc, int], loc: Loc) -> int | None:
    """Line of ``loc``, or of its nearest parent that has one."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def validation_issues(
    exc: ValidationError, prefix: Loc, file: str, lines: Mapping[Loc, int]
) -> list[ConfigIssue]:
    """One issue per pydantic error, with the line of its field path (``prefix`` + the error's loc)."""
    issues = []
    for err in exc.errors(include_url=False):
        loc = (*prefix, *(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        issues.append(ConfigIssue(file, line_for(lines, loc), format_loc(loc), msg))
    return issues
