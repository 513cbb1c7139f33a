"""Rule files: the default rules, extra rule files and inline rules merged into one rule set.

A rule file is YAML (``rules: [...]``) read with positions, so each problem names that file, its
line and the field path, as config errors do.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ValidationError

from mevwatch.alerts.rule import Rule, RuleFile, override_rule
from mevwatch.daemon.yamlsource import ConfigError, ConfigIssue, read_yaml

__all__ = ["DEFAULT_RULES_FILE", "load_rule_file", "merge_rules"]

DEFAULT_RULES_FILE = Path(__file__).resolve().parent / "default_rules.yaml"


def load_rule_file(path: Path, label: str | None = None) -> tuple[list[Rule], list[ConfigIssue]]:
    """Rules of one YAML file; issues name the file (``label``, default the path), line and field path."""
    file = label or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [ConfigIssue(file, None, "", f"cannot read rule file: {getattr(exc, 'strerror', None) or exc}")]
    try:
        doc = read_yaml(text, file)
    except ConfigError as exc:
        return [], exc.issues
    if doc.data is None:
        return [], []
    if doc.issues:
        return [], doc.issues
    try:
        parsed = RuleFile.model_validate(doc.data)
    except ValidationError as exc:
        return [], doc.validation_issues(exc)
    issues = []
    seen: dict[str, int] = {}
    for i, r in enumerate(parsed.rules):
        if r.name in seen:
            issues.append(doc.issue(("rules", i, "name"),
                                    f"duplicate rule name {r.name!r} (also rules[{seen[r.name]}])"))
        seen[r.name] = i
    return list(parsed.rules), issues


def merge_rules(
    default_rules: bool, rule_files: Iterable[Path], inline: Iterable[Rule], base: Path,
    overrides: Mapping[str, BaseModel] | None = None,
) -> tuple[tuple[Rule, ...], list[ConfigIssue]]:
    """The rule set: default rules, then rule files (relative to ``base``), then inline rules, then the
    ``overrides`` of single fields by rule name.

    An inline rule replaces a rule of the same name; a rule file may replace a default rule but not
    a rule of another file. Returns the rules and every problem found in the files and overrides.
    """
    issues: list[ConfigIssue] = []
    by_name: dict[str, Rule] = {}
    origin: dict[str, str] = {}
    sources: list[Path] = [DEFAULT_RULES_FILE] if default_rules else []
    sources += [p if p.is_absolute() else base / p for p in rule_files]
    for path in sources:
        label = str(path)
        rules, file_issues = load_rule_file(path, label)
        issues.extend(file_issues)
        for i, r in enumerate(rules):
            if r.name in by_name and origin[r.name] != str(DEFAULT_RULES_FILE):
                issues.append(ConfigIssue(label, None, f"rules[{i}].name",
                                          f"duplicate rule name {r.name!r} (also in {origin[r.name]})"))
                continue
            by_name[r.name] = r
            origin[r.name] = label
    for r in inline:
        by_name[r.name] = r
    for name, override in (overrides or {}).items():
        where = f"alerts.rule_overrides.{name}"
        if name not in by_name:
            close = difflib.get_close_matches(name, by_name, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else " (see docs/runbooks.md for the names)"
            issues.append(ConfigIssue("", None, where, f"no rule named {name!r} to override{hint}"))
            continue
        try:
            by_name[name] = override_rule(by_name[name], override)
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"])
                issues.append(ConfigIssue("", None, f"{where}.{field}" if field else where,
                                          err["msg"].removeprefix("Value error, ")))
    return tuple(by_name.values()), issues
