"""The ``alerts:`` config section: rules, receivers, routes, inhibition, outbox; rule files with positions.

Rules are data. Label matchers use Alertmanager's syntax (``node="erigon"``, ``state=~"open|half_open"``),
templates use the Prometheus subset ``{{ $labels.x }}`` and ``{{ $value | humanize }}``.
"""

from __future__ import annotations

import functools
import json
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mevwatch.daemon.fields import Duration

if TYPE_CHECKING:
    from mevwatch.daemon.config import ConfigIssue

__all__ = [
    "DEFAULT_RULES_FILE",
    "RUNBOOKS_FILE",
    "AlertmanagerSinkConfig",
    "AlertsConfig",
    "EmailConfig",
    "Escalation",
    "InhibitRule",
    "LogSinkConfig",
    "Matcher",
    "OutboxConfig",
    "Receiver",
    "Route",
    "Rule",
    "WebhookConfig",
    "parse_matcher",
    "render_template",
    "resolve_rules",
    "runbook_anchors",
]

DEFAULT_RULES_FILE = Path(__file__).resolve().parent / "default_rules.yaml"
RUNBOOKS_FILE = Path(__file__).resolve().parent.parent / "docs" / "runbooks.md"

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MATCHER_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


# --- matchers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label matcher; a regex is anchored at both ends, like Prometheus."""

    name: str
    op: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        have = labels.get(self.name, "")
        if self.op == "=":
            return have == self.value
        if self.op == "!=":
            return have != self.value
        hit = _compile(self.value).fullmatch(have) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{json.dumps(self.value)}"


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def parse_matcher(value: Any) -> Matcher:
    """``name="value"``, ``name!="v"``, ``name=~"re"``, ``name!~"re"`` (quotes optional) -> Matcher."""
    if isinstance(value, Matcher):
        return value
    if not isinstance(value, str):
        raise ValueError('a matcher is a string like \'node="erigon"\' or \'state=~"open|half_open"\'')
    m = _MATCHER_RE.match(value)
    if not m:
        raise ValueError(f"invalid matcher {value!r}: use name=\"v\", name!=\"v\", name=~\"re\" or name!~\"re\"")
    name, op, raw = m.groups()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError(f"invalid quoted value in matcher {value!r}") from None
    if op in ("=~", "!~"):
        try:
            re.compile(raw)
        except re.error as exc:
            raise ValueError(f"bad regex in matcher {value!r}: {exc}") from None
    return Matcher(name, op, raw)


MatcherField = Annotated[Matcher, BeforeValidator(parse_matcher)]


def matches_all(matchers: tuple[Matcher, ...] | list[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


# --- templates ---------------------------------------------------------------------------

_TEMPLATE_RE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_EXPR_RE = re.compile(
    r"^\s*(?:\$labels\.(?P<label>[A-Za-z_][A-Za-z0-9_]*)|(?P<value>\$value))"
    r"(?:\s*\|\s*(?P<fn>humanize|humanize1024|humanizePercentage|humanizeDuration))?\s*$"
)


def _humanize(v: float, base: float, units: tuple[str, ...]) -> str:
    if v == 0 or abs(v) < 1:
        return f"{v:.4g}"
    i = 0
    while abs(v) >= base and i < len(units) - 1:
        v /= base
        i += 1
    return f"{v:.4g}{units[i]}"


def _duration(v: float) -> str:
    if v < 1:
        return f"{v * 1000:.4g}ms"
    parts, rest = [], int(v)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def _format(value: float, fn: str | None) -> str:
    if value != value:
        return "NaN"
    if fn == "humanize":
        return _humanize(value, 1000.0, ("", "k", "M", "G", "T", "P"))
    if fn == "humanize1024":
        return _humanize(value, 1024.0, ("", "Ki", "Mi", "Gi", "Ti", "Pi"))
    if fn == "humanizePercentage":
        return f"{value * 100:.4g}%"
    if fn == "humanizeDuration":
        return _duration(value)
    return f"{value:.6g}"


def check_template(text: str) -> str:
    for m in _TEMPLATE_RE.finditer(text):
        if not _EXPR_RE.match(m.group(1)):
            raise ValueError(
                f"unsupported template expression {m.group(0)!r}: use {{{{ $labels.NAME }}}} or "
                "{{ $value }} with an optional | humanize, humanize1024, humanizePercentage, humanizeDuration"
            )
    if "{{" in _TEMPLATE_RE.sub("", text):
        raise ValueError("unclosed '{{' in template")
    return text


def render_template(text: str, labels: Mapping[str, str], value: float) -> str:
    """Fill a checked template; a missing label renders empty, as in Prometheus."""

    def sub(m: re.Match[str]) -> str:
        e = _EXPR_RE.match(m.group(1))
        if e is None:
            return m.group(0)
        if e.group("label"):
            return labels.get(e.group("label"), "")
        return _format(value, e.group("fn"))

    return _TEMPLATE_RE.sub(sub, text)


# --- runbook anchors ---------------------------------------------------------------------

_ANCHOR_RE = re.compile(r'<a\s+(?:id|name)="([^"]+)"')


@functools.lru_cache(maxsize=4)
def _anchors_of(path: Path, mtime: float) -> frozenset[str]:
    return frozenset(_ANCHOR_RE.findall(path.read_text(encoding="utf-8")))


def runbook_anchors(path: Path = RUNBOOKS_FILE) -> frozenset[str] | None:
    """Anchors (``<a id="...">``) of docs/runbooks.md; None when the file is not shipped."""
    try:
        return _anchors_of(path, path.stat().st_mtime)
    except OSError:
        return None


# --- rules -------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Op = Literal[">", ">=", "<", "<=", "==", "!="]
Severity = Literal["info", "warning", "critical"]


class Rule(_Strict):
    """One alerting rule over one metric's series (sample name as in /metrics)."""

    name: str = Field(description="alert name (alertname label), unique over all rules")
    metric: str = Field(description="sample name as exposed on /metrics, e.g. mevwatch_oom_kills_total")
    matchers: list[MatcherField] = Field(default_factory=list, description="label matchers selecting series")
    increase: Duration | None = Field(None, description="compare the counter's increase over this window")
    rate: Duration | None = Field(None, description="compare the counter's per-second rate over this window")
    quantile: float | None = Field(
        None, gt=0, lt=1, description="histogram quantile of <metric>_bucket (over `rate` window if set)"
    )
    absent: bool = Field(False, description="fire when no series matches (a dead collector is an alert)")
    op: Op = Field(">", description="comparison: > >= < <= == !=")
    threshold: float = Field(0.0, description="value compared with op")
    clear: float | None = Field(None, description="hysteresis: an active alert stays until the value passes this")
    for_: Duration = Field(0.0, alias="for", description="condition must hold this long before firing")
    keep_firing_for: Duration = Field(0.0, description="keep firing this long after the condition stopped")
    severity: Severity = Field("warning", description="info, warning or critical")
    labels: dict[str, str] = Field(default_factory=dict, description="extra labels on the alert")
    summary: str = Field(description="one line; {{ $labels.x }} and {{ $value }} templates")
    description: str = Field("", description="longer text; same templates")
    runbook: str = Field(description="anchor in docs/runbooks.md")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"rule name {v!r} must match [A-Za-z_][A-Za-z0-9_]*")
        return v

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if not re.match(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$", v):
            raise ValueError(f"metric {v!r} is not a valid Prometheus metric name")
        return v

    @field_validator("rate", "quantile", "absent")
    @classmethod
    def _one_function(cls, v: Any, info: ValidationInfo) -> Any:
        if v and info.field_name == "rate" and info.data.get("increase"):
            raise ValueError("use either increase or rate, not both")
        if v and info.field_name == "absent" and (
            info.data.get("increase") or info.data.get("rate") or info.data.get("quantile")
        ):
            raise ValueError("absent cannot be combined with increase, rate or quantile")
        return v

    @field_validator("clear")
    @classmethod
    def _clear(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is None:
            return v
        op, threshold = info.data.get("op"), info.data.get("threshold")
        if op is None or threshold is None:
            return v
        if op in ("==", "!="):
            raise ValueError(f"clear (hysteresis) needs an ordering op, not {op}")
        if op in (">", ">=") and v > threshold:
            raise ValueError(f"with op {op} the clear threshold must be <= threshold ({threshold:g}), got {v:g}")
        if op in ("<", "<=") and v < threshold:
            raise ValueError(f"with op {op} the clear threshold must be >= threshold ({threshold:g}), got {v:g}")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not _NAME_RE.match(k) or k.startswith("__"):
                raise ValueError(f"label name {k!r} is not valid")
            if k in ("alertname", "severity"):
                raise ValueError(f"label {k!r} is set from the rule's name/severity")
        return v

    @field_validator("summary", "description")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_template(v)

    @field_validator("runbook")
    @classmethod
    def _runbook(cls, v: str) -> str:
        anchors = runbook_anchors()
        if anchors is not None and v not in anchors:
            raise ValueError(f"runbook anchor {v!r} is not in {RUNBOOKS_FILE.name} (add a section with <a id=\"{v}\">)")
        return v

    @property
    def window(self) -> float:
        """History a series needs for this rule (increase/rate window)."""
        return float(self.increase or self.rate or 0.0)

    def passes(self, value: float, active: bool) -> bool:
        """Does ``value`` meet the condition? An active alert is held until it passes ``clear``."""
        bound = self.clear if active and self.clear is not None else self.threshold
        op = self.op
        if active and self.clear is not None and op in (">", "<"):
            op = op + "="  # type: ignore[assignment]  # a value exactly at clear keeps the alert
        return _compare(value, op, bound)


def _compare(value: float, op: str, bound: float) -> bool:
    if value != value:
        return False
    if op == ">":
        return value > bound
    if op == ">=":
        return value >= bound
    if op == "<":
        return value < bound
    if op == "<=":
        return value <= bound
    if op == "==":
        return value == bound
    return value != bound


class RuleFile(_Strict):
    rules: list[Rule] = Field(default_factory=list)


# --- receivers ---------------------------------------------------------------------------


class LogSinkConfig(_Strict):
    level: Literal["info", "warning", "error"] = Field("warning", description="log level of the event")
    send_resolved: bool = True


class WebhookConfig(_Strict):
    url: str = Field(description="POST target (Alertmanager webhook JSON, version 4)")
    headers: dict[str, str] = Field(default_factory=dict, description="extra HTTP headers")
    hmac_secret: str | None = Field(None, description="sign the body with HMAC-SHA256")
    hmac_secret_file: Path | None = Field(None, description="file holding the HMAC secret")
    signature_header: str = Field("X-Mevwatch-Signature", description="header carrying sha256=<hex>")
    timeout: Duration = Field(10.0, gt=0, description="per request")
    send_resolved: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"url must be http(s)://host[:port]/path, got {v!r}")
        return v

    @model_validator(mode="after")
    def _secret(self) -> WebhookConfig:
        if self.hmac_secret is not None and self.hmac_secret_file is not None:
            raise ValueError("set hmac_secret or hmac_secret_file, not both")
        return self


class EmailConfig(_Strict):
    to: list[str] = Field(min_length=1, description="recipients")
    from_: str = Field(alias="from", description="sender address")
    smarthost: str = Field(description="SMTP server host:port")
    tls: Literal["starttls", "implicit", "none"] = Field(
        "starttls", description="starttls (required, fails if the server lacks it), implicit (SMTPS) or none"
    )
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = Field(None, description="CA bundle to verify the server certificate")
    insecure_skip_verify: bool = Field(False, description="do not verify the server certificate")
    timeout: Duration = Field(10.0, gt=0)
    send_resolved: bool = True

    @field_validator("smarthost")
    @classmethod
    def _hostport(cls, v: str) -> str:
        _, sep, port = v.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"smarthost must be host:port, got {v!r}")
        return v

    @model_validator(mode="after")
    def _auth(self) -> EmailConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise ValueError("a password needs a username")
        return self


class AlertmanagerSinkConfig(_Strict):
    urls: list[str] = Field(min_length=1, description="Alertmanager base URLs; alerts go to <url>/api/v2/alerts")
    timeout: Duration = Field(10.0, gt=0)
    resend_delay: Duration = Field(60.0, gt=0, description="firing alerts are re-sent this often (Prometheus: 1m)")

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for u in v:
            if not re.match(r"^https?://[^/\s]+", u):
                raise ValueError(f"Alertmanager URL must be http(s)://host[:port], got {u!r}")
        return [u.rstrip("/") for u in v]


class Receiver(_Strict):
    name: str
    log_configs: list[LogSinkConfig] = Field(default_factory=list)
    webhook_configs: list[WebhookConfig] = Field(default_factory=list)
    email_configs: list[EmailConfig] = Field(default_factory=list)
    alertmanager_configs: list[AlertmanagerSinkConfig] = Field(default_factory=list)


class Escalation(_Strict):
    after: Duration = Field(description="still firing this long after it fired -> also notify receiver")
    receiver: str


class Route(_Strict):
    receiver: str
    matchers: list[MatcherField] = Field(default_factory=list)
    group_by: list[str] | None = Field(None, description="default: the top-level group_by")
    group_wait: Duration | None = None
    group_interval: Duration | None = None
    repeat_interval: Duration | None = None
    continue_: bool = Field(False, alias="continue", description="keep matching the next routes")
    escalation: list[Escalation] = Field(default_factory=list, description="L2, L3, L4 after delays")


class InhibitRule(_Strict):
    source_matchers: list[MatcherField] = Field(min_length=1)
    target_matchers: list[MatcherField] = Field(min_length=1)
    equal: list[str] = Field(default_factory=list, description="labels that must be equal on source and target")


class OutboxConfig(_Strict):
    retry_initial: Duration = Field(1.0, gt=0, description="first retry delay")
    retry_max: Duration = Field(300.0, gt=0, description="cap of the exponential backoff")
    give_up_after: Duration = Field(86400.0, gt=0, description="dead-letter a notification pending this long")


def _default_receivers() -> list[Receiver]:
    return [Receiver(name="log", log_configs=[LogSinkConfig()])]


def _default_inhibit() -> list[InhibitRule]:
    # A node that is down also has no peers and lags: page once, for the cause.
    return [
        InhibitRule(
            source_matchers=[parse_matcher('alertname="NodeDown"')],
            target_matchers=[parse_matcher('alertname=~"PeersLow|HeadLag|NodeSyncing"')],
            equal=["endpoint"],
        ),
        InhibitRule(
            source_matchers=[parse_matcher('alertname="OomKill"')],
            target_matchers=[parse_matcher('alertname="OomKillKernelCounter"')],
            equal=["host"],
        ),
    ]


class AlertsConfig(_Strict):
    """The ``alerts:`` section."""

    enabled: bool = Field(True, description="run the alert engine")
    host: str = Field(default_factory=socket.gethostname, description="host label on every alert")
    evaluation_interval: Duration = Field(1.0, gt=0, description=(
        "tick on which every rule is evaluated (for, absent, keep_firing_for, windows, stale data); "
        "a collector's new values are evaluated at once, between ticks"))
    startup_grace: Duration = Field(
        30.0, ge=0, description="after a start, absent and stale-data alerts wait this long for collectors"
    )
    default_rules: bool = Field(True, description="include alerts/default_rules.yaml")
    rule_files: list[Path] = Field(default_factory=list, description="extra rule files (relative to the config)")
    rules: list[Rule] = Field(default_factory=list, description="inline rules; same name overrides a default")
    runbook_url: str = Field("docs/runbooks.md", description="base of runbook links; '#anchor' is appended")
    external_url: str = Field("", description="externalURL in webhook payloads")
    receivers: list[Receiver] = Field(default_factory=_default_receivers)
    receiver: str = Field("log", description="default receiver of the top-level route")
    group_by: list[str] = Field(default_factory=lambda: ["alertname"])
    group_wait: Duration = Field(30.0, ge=0)
    group_interval: Duration = Field(300.0, gt=0)
    repeat_interval: Duration = Field(14400.0, gt=0)
    routes: list[Route] = Field(default_factory=list, description="first match wins unless continue: true")
    escalation: list[Escalation] = Field(default_factory=list, description="escalation of the default route")
    inhibit_rules: list[InhibitRule] = Field(default_factory=_default_inhibit)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)

    _rules: tuple[Rule, ...] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _references(self) -> AlertsConfig:
        names = [r.name for r in self.receivers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate receiver name(s): {', '.join(dup)}")
        known = set(names)
        refs = [("receiver", self.receiver)]
        refs += [(f"escalation[{i}].receiver", e.receiver) for i, e in enumerate(self.escalation)]
        for i, r in enumerate(self.routes):
            refs.append((f"routes[{i}].receiver", r.receiver))
            refs += [(f"routes[{i}].escalation[{j}].receiver", e.receiver) for j, e in enumerate(r.escalation)]
        for where, name in refs:
            if name not in known:
                raise ValueError(f"{where}: unknown receiver {name!r}; known: {', '.join(names) or 'none'}")
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if rule.name in seen:
                raise ValueError(f"rules[{i}].name: duplicate rule name {rule.name!r} (also rules[{seen[rule.name]}])")
            seen[rule.name] = i
        return self

    @property
    def all_rules(self) -> tuple[Rule, ...]:
        """Default rules, then rule files, then inline rules (inline ones replace defaults of the same name)."""
        if self._rules is not None:
            return self._rules
        return tuple(self.rules)

    def receiver_named(self, name: str) -> Receiver:
        return next(r for r in self.receivers if r.name == name)


# --- rule files --------------------------------------------------------------------------


def load_rule_file(path: Path, label: str | None = None) -> tuple[list[Rule], list[ConfigIssue]]:
    """Rules of one YAML file (``rules: [...]``); issues name that file, its line and the field path."""
    import yaml

    from mevwatch.daemon.config import ConfigIssue, _Builder, _pydantic_issues

    file = label or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [ConfigIssue(file, None, "", f"cannot read rule file: {getattr(exc, 'strerror', None) or exc}")]
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        return [], [ConfigIssue(file, mark.line + 1 if mark else None, "", f"YAML syntax error: {exc.problem}")]
    if root is None:
        return [], []
    builder = _Builder(file, {})
    data = builder.build(root, ())
    if builder.issues:
        return [], list(builder.issues)
    try:
        parsed = RuleFile.model_validate(data)
    except ValidationError as exc:
        return [], _pydantic_issues(exc, (), file, builder.lines)
    rules = list(parsed.rules)
    issues = []
    seen: dict[str, int] = {}
    for i, r in enumerate(rules):
        if r.name in seen:
            loc = ("rules", i, "name")
            issues.append(
                ConfigIssue(file, builder.lines.get(loc), f"rules[{i}].name",
                            f"duplicate rule name {r.name!r} (also rules[{seen[r.name]}])")
            )
        seen[r.name] = i
    return rules, issues


def resolve_rules(alerts: AlertsConfig, config_file: str) -> list[ConfigIssue]:
    """Load default and extra rule files into ``alerts``; return every problem found in them."""
    from mevwatch.daemon.config import ConfigIssue

    issues: list[ConfigIssue] = []
    by_name: dict[str, Rule] = {}
    origin: dict[str, str] = {}
    sources: list[tuple[Path, str]] = []
    if alerts.default_rules:
        sources.append((DEFAULT_RULES_FILE, str(DEFAULT_RULES_FILE)))
    base = Path(config_file).parent if config_file and not config_file.startswith("<") else Path.cwd()
    for p in alerts.rule_files:
        full = p if p.is_absolute() else base / p
        sources.append((full, str(full)))
    for path, label in sources:
        rules, file_issues = load_rule_file(path, label)
        issues.extend(file_issues)
        for i, r in enumerate(rules):
            if r.name in by_name and origin[r.name] != str(DEFAULT_RULES_FILE):
                issues.append(ConfigIssue(label, None, f"rules[{i}].name",
                                          f"duplicate rule name {r.name!r} (also in {origin[r.name]})"))
                continue
            by_name[r.name] = r
            origin[r.name] = label
    for r in alerts.rules:
        by_name[r.name] = r  # inline rules override defaults and files by name
    alerts._rules = tuple(by_name.values())
    return issues
