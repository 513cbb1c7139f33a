"""The alerts section: inline rules, receivers and routes, with errors naming file, line and field path."""

from __future__ import annotations

import pytest

from mevwatch.daemon.config import ConfigError, load_config_text


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config_text("collectors: []\nalerts:\n" + text, "m.yaml")
    return [str(i) for i in exc.value.issues]


RULE = "    - {name: A, metric: m, summary: s, runbook: memory-high"


def test_inline_rule_errors_have_line_and_field_path() -> None:
    errs = _errors(f"  rules:\n{RULE}, op: '=>'}}\n")
    assert len(errs) == 1
    assert errs[0].startswith("m.yaml:4: alerts.rules[0].op: ")
    assert "'=>'" in errs[0] or "Input should be" in errs[0]
    errs = _errors(f"  rules:\n{RULE}, matchers: ['x=~\"(\"']}}\n")
    assert errs[0].startswith("m.yaml:4: alerts.rules[0].matchers[0]: bad regex in matcher")
    errs = _errors("  rules:\n    - {name: A, metric: m, summary: s, runbook: no-such-section}\n")
    assert errs[0].startswith("m.yaml:4: alerts.rules[0].runbook: runbook anchor 'no-such-section'")
    errs = _errors(f"  rules:\n{RULE}}}\n{RULE}}}\n")
    assert "duplicate rule name 'A' (also rules[0])" in errs[0]
    errs = _errors(f"  rules:\n{RULE}, op: '>', threshold: 5, clear: 6}}\n")
    assert errs[0].startswith("m.yaml:4: alerts.rules[0].clear: with op > the clear threshold must be <= threshold")
    errs = _errors(f"  rules:\n{RULE}, increase: 5m, rate: 5m}}\n")
    assert "alerts.rules[0].rate: use either increase or rate" in errs[0]
    errs = _errors(f"  rules:\n{RULE}, bogus: 1}}\n")
    assert errs[0].endswith("alerts.rules[0].bogus: unknown key")
    errs = _errors("  receiver: pager\n")
    assert "unknown receiver 'pager'" in errs[0]
    errs = _errors("  receivers:\n    - {name: w, webhook_configs: [{url: 'ftp://x'}]}\n  receiver: w\n")
    assert errs[0].startswith("m.yaml:4: alerts.receivers[0].webhook_configs[0].url: url must be http(s)")


def test_what_a_receiver_gives_up_on_goes_to_the_default_receiver_unless_it_says_otherwise() -> None:
    hook = "webhook_configs: [{url: 'http://127.0.0.1:1/h'}]"
    text = f"""collectors: []
alerts:
  receivers:
    - {{name: log, log_configs: [{{}}]}}
    - {{name: oncall, {hook}}}
    - {{name: chat, {hook}}}
    - {{name: lead, {hook}, fallback: [chat, oncall]}}
    - {{name: quiet, {hook}, fallback: []}}
  receiver: log
  routes:
    - {{receiver: oncall, matchers: ['severity="critical"'], escalation: [{{after: 15m, receiver: lead}}]}}
    - {{receiver: chat}}
    - {{receiver: oncall}}
"""
    cfg = load_config_text(text, "m.yaml").daemon.alerts
    assert cfg.fallback_receivers() == {
        "log": ["oncall", "chat"],  # the default receiver's own: the routes' receivers, not escalation levels
        "oncall": ["log"], "chat": ["log"],
        "lead": ["chat", "oncall"], "quiet": [],
    }
    errs = _errors(f"  receivers:\n    - {{name: w, {hook}, fallback: [nope]}}\n  receiver: w\n")
    assert "receivers[0].fallback[0]: unknown receiver 'nope'" in errs[0]
    errs = _errors(f"  receivers:\n    - {{name: w, {hook}, fallback: [w]}}\n  receiver: w\n")
    assert "receivers[0].fallback[0]: 'w' is the receiver itself" in errs[0]
