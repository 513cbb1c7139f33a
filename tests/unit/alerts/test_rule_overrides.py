"""``alerts.rule_overrides``: one field of a default rule changed by name, the rest kept; every mistake named
with its file, line and field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from mevwatch.daemon.config import ConfigError, load_config_text


def _rules(text: str, tmp_path: Path) -> dict[str, object]:
    cfg = load_config_text("collectors: []\nalerts:\n" + text, str(tmp_path / "mevwatch.yaml"))
    return {r.name: r for r in cfg.daemon.alerts.all_rules}


def test_an_override_changes_only_the_fields_it_names(tmp_path: Path) -> None:
    default = _rules("  default_rules: true\n", tmp_path)["HeadStale"]
    rules = _rules("  rule_overrides:\n    HeadStale: {threshold: 10, for: 1m, severity: warning}\n", tmp_path)
    changed = rules["HeadStale"]
    assert (changed.threshold, changed.for_, changed.severity) == (10.0, 60.0, "warning")  # type: ignore[attr-defined]
    assert changed.summary == default.summary  # type: ignore[attr-defined]
    assert changed.metric == default.metric == "mevwatch_chain_head_age_blocks"  # type: ignore[attr-defined]
    assert rules["NodeDown"] == _rules("  default_rules: true\n", tmp_path)["NodeDown"]


def test_an_override_applies_to_an_inline_rule_too(tmp_path: Path) -> None:
    text = """  default_rules: false
  rules:
    - {name: Mine, metric: mevwatch_x, threshold: 1, summary: s, runbook: memory-high}
  rule_overrides:
    Mine: {matchers: ['a="b"']}
"""
    [rule] = _rules(text, tmp_path).values()
    assert [str(m) for m in rule.matchers] == ['a="b"']  # type: ignore[attr-defined]


@pytest.mark.parametrize(("body", "expected"), [
    ("    HeadStal: {threshold: 3}\n",
     "mevwatch.yaml:4: alerts.rule_overrides.HeadStal: no rule named 'HeadStal' to override; did you mean HeadStale"),
    ("    MemoryHigh:\n      clear: 0.95\n",
     "mevwatch.yaml:5: alerts.rule_overrides.MemoryHigh.clear: with op > the clear threshold must be <= threshold"),
    ("    MemoryHigh: {threshold: lots}\n", "mevwatch.yaml:4: alerts.rule_overrides.MemoryHigh.threshold:"),
    ("    MemoryHigh: {name: Other}\n", "mevwatch.yaml:4: alerts.rule_overrides.MemoryHigh.name: unknown key"),
])
def test_a_bad_override_is_a_config_error_with_its_position(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        _rules("  rule_overrides:\n" + body, tmp_path)
    assert any(expected in str(issue) for issue in err.value.issues), [str(i) for i in err.value.issues]
