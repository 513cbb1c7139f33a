"""The ``alerts:`` config section: rules, receivers, routes, inhibition, outbox.

The rules themselves are ``mevwatch.alerts.rule``; the rule set (defaults, rule files, inline rules)
is merged by ``mevwatch.alerts.rulefiles`` when the section is read from a config file.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from mevwatch.alerts.matchers import MatcherField, parse_matcher
from mevwatch.alerts.receivers import ChatConfig, PagerDutyConfig, SlackConfig
from mevwatch.alerts.rule import Rule, RuleOverride
from mevwatch.alerts.rulefiles import merge_rules
from mevwatch.alerts.timeintervals import NamedTimeInterval, TimeInterval
from mevwatch.daemon.yamlsource import ConfigIssue
from mevwatch.fields import Duration, SinkURL, check_sink_url, secret_url
from mevwatch.runbookdoc import RUNBOOKS_PATH

#: runbook link base of exported Prometheus rules when the config sets no runbook_url: the runbooks' path in
#: mevwatch's source (set alerts.runbook_url, or `rules export --runbook-url`, to where the on-call opens them)
EXPORT_RUNBOOK_URL = "docs/runbooks.md"

__all__ = [
    "AlertmanagerSilencesConfig",
    "AlertmanagerSinkConfig",
    "AlertsConfig",
    "EmailConfig",
    "Escalation",
    "InhibitRule",
    "LogSinkConfig",
    "OutboxConfig",
    "Receiver",
    "Route",
    "RuleLoading",
    "WebhookConfig",
    "alertmanager_urls",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


@dataclass(slots=True)
class RuleLoading:
    """Validation context of an ``alerts:`` section read from a config file.

    ``base`` is the directory relative ``rule_files`` are in; problems found in rule files are added
    to ``issues`` (with their own file, line and field path) for the config loader to report.
    """

    base: Path
    issues: list[ConfigIssue] = field(default_factory=list)
    #: places an issue at a key path of the config file (file and line); without it only the path is named
    locate: Callable[[tuple[str, ...], str], ConfigIssue] | None = None


# --- receivers ---------------------------------------------------------------------------


class LogSinkConfig(_Strict):
    """One `alert_notification` log event per alert: labels, summary, runbook, and while firing its link back
    (generator_url) and silence command."""

    level: Literal["info", "warning", "error"] = Field("warning", description="log level of the event")
    send_resolved: bool = True


class WebhookConfig(SinkURL, _Strict):
    """POST target (Alertmanager webhook JSON, version 4): ``url`` or ``url_file``."""

    headers: dict[str, str] = Field(default_factory=dict, description="extra HTTP headers")
    hmac_secret: str | None = Field(None, description="sign the body with HMAC-SHA256")
    hmac_secret_file: Path | None = Field(None, description="file holding the HMAC secret")
    signature_header: str = Field("X-Mevwatch-Signature", description="header carrying sha256=<hex>")
    timeout: Duration = Field(10.0, gt=0, description="per request")
    send_resolved: bool = True

    @model_validator(mode="after")
    def _secret(self) -> WebhookConfig:
        if self.hmac_secret is not None and self.hmac_secret_file is not None:
            raise ValueError("set hmac_secret or hmac_secret_file, not both")
        return self


class EmailConfig(_Strict):
    """Mail over SMTP: a plain-text and an HTML part, each alert with its runbook, labels, link back to
    mevwatch's page and silence command."""

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


def alertmanager_urls(urls: list[str]) -> list[str]:
    """Alertmanager base URLs, checked (and kept out of logs, as every sink URL), without a trailing slash."""
    return [check_sink_url(u, "urls").rstrip("/") for u in urls]


class AlertmanagerSinkConfig(_Strict):
    urls: list[str] = Field(default_factory=list, repr=False,
                            description="Alertmanager base URLs; alerts go to <url>/api/v2/alerts")
    url_files: list[Path] = Field(default_factory=list, description="files each holding one more base URL")
    timeout: Duration = Field(10.0, gt=0)
    resend_delay: Duration = Field(60.0, gt=0, description="firing alerts are re-sent this often (Prometheus: 1m)")
    _target_urls: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _urls(self) -> AlertmanagerSinkConfig:
        if not self.urls and not self.url_files:
            raise ValueError("set urls or url_files (at least one Alertmanager)")
        targets = [secret_url(u, None, "urls") for u in self.urls]
        targets += [secret_url(None, f, "urls") for f in self.url_files]
        self._target_urls = [u.rstrip("/") for u in targets]
        return self

    @property
    def target_urls(self) -> list[str]:
        return self._target_urls


class AlertmanagerSilencesConfig(_Strict):
    urls: list[str] = Field(default_factory=list, description=(
        "Alertmanager base URLs (peers of one cluster); silences are read from the first that answers. "
        "Default: the alertmanager receivers' URLs"))
    refresh_interval: Duration = Field(15.0, gt=0, description="how often the silences are read again")
    timeout: Duration = Field(5.0, gt=0, description="per request")

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        return alertmanager_urls(v)


class Receiver(_Strict):
    """A named set of sinks. Every page of a firing alert carries the link back to the alert's row on mevwatch's
    page (its generatorURL, `alerts.external_url` + `/#alert-<fingerprint>`; where external_url is empty or not
    http(s), the page says what the link needs instead of a link that opens nothing) and the command that
    silences exactly that alert (`mevwatch silence add -d 2h --comment '...' -m 'alertname="..."' ...`, amtool in
    fleet mode). webhook: generatorURL and the annotation `silence`; alertmanager: generatorURL (Alertmanager
    silences its own way); log: the fields generator_url and silence; mail: `Open in mevwatch:` and `Silence:`
    lines in the text part, a link and a code block in the HTML part; PagerDuty: a `links` entry per alert
    before the runbooks, `custom_details.open_in_mevwatch` and `custom_details.silence` (one per firing alert),
    `client_url` mevwatch's page unless set; Slack: a mrkdwn link `<url|Open in mevwatch>` and the command as
    code in each alert's section; chat: an `alert:` and a `silence:` line under each alert (Telegram: parse_mode
    HTML, the command in `<code>`; Discord: a code span). A message cut to a service's limit leaves out whole
    alerts, never part of a link or a command, and ends with how many are left out and mevwatch's page."""

    name: str
    log_configs: list[LogSinkConfig] = Field(default_factory=list)
    webhook_configs: list[WebhookConfig] = Field(default_factory=list)
    email_configs: list[EmailConfig] = Field(default_factory=list)
    alertmanager_configs: list[AlertmanagerSinkConfig] = Field(default_factory=list)
    pagerduty_configs: list[PagerDutyConfig] = Field(default_factory=list)
    slack_configs: list[SlackConfig] = Field(default_factory=list)
    chat_configs: list[ChatConfig] = Field(default_factory=list)
    fallback: list[str] | None = Field(None, description=(
        "receivers that get, in full, a notification this one's sinks refused for good (HTTP 4xx other than "
        "408 and 429, SMTP 5xx, bad credentials) or could not deliver within outbox.give_up_after; default: "
        "the default receiver (alerts.receiver), and for the default receiver itself the receivers of the "
        "routes; [] sends it nowhere else (the log still names it)"))


class Escalation(_Strict):
    after: Duration = Field(description="still firing this long after it fired -> also notify receiver")
    receiver: str
    active_time_intervals: list[str] = Field(default_factory=list, description=(
        "names in time_intervals: the level notifies only inside one of them (e.g. business hours); "
        "an alert still firing when a window opens escalates then; empty: always"))


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


#: the sinks a fleet-mode mevwatch may keep: everything else is Alertmanager's to route
FLEET_SINKS = ("log_configs", "alertmanager_configs")
_FLEET = "alerts.mode is fleet: Alertmanager owns routing, grouping, inhibition, silences and escalation"


class AlertsConfig(_Strict):
    """The ``alerts:`` section."""

    enabled: bool = Field(True, description="run the alert engine")
    mode: Literal["standalone", "fleet"] = Field("standalone", description=(
        "standalone: mevwatch routes, silences, escalates and pages itself; fleet: it sends its alerts to an "
        "Alertmanager cluster, which owns routing, grouping, inhibition, silences and escalation "
        "(only log and alertmanager sinks, no escalation, no inhibit_rules, no local silences)"))
    host: str = Field(default_factory=socket.gethostname, description="host label on every alert")
    evaluation_interval: Duration = Field(1.0, gt=0, description=(
        "grid of the tick that does what time alone moves (for, keep_firing_for, windows, stale data, "
        "escalation); it runs when something is due, rounded up to this grid, and at least every 15 s; "
        "a collector's new values are evaluated at once, between ticks"))
    startup_grace: Duration = Field(
        30.0, ge=0, description="after a start, absent and stale-data alerts wait this long for collectors"
    )
    gap_settle: Duration = Field(60.0, ge=0, description=(
        "a pending MonitoringGap alert (a check that cannot be made) counts as WARN in the host's verdict on `/` "
        "and in `mevwatch diagnose` once it has been pending this long, well before its `for` lets it page; a "
        "blind spot of one run (a method that timed out once) does not flip the verdict"))
    default_rules: bool = Field(True, description="include alerts/default_rules.yaml")
    rule_files: list[Path] = Field(default_factory=list, description="extra rule files (relative to the config)")
    rules: list[Rule] = Field(default_factory=list, description="inline rules; same name overrides a default")
    rule_overrides: dict[str, RuleOverride] = Field(
        default_factory=dict, description=(
            "rule name -> fields replacing that rule's (e.g. HeadStale: {threshold: 10}); the others stay"))
    runbook_url: str = Field(RUNBOOKS_PATH, description=(
        "base of runbook links; '#anchor' is appended. Default: the runbooks this mevwatch serves, "
        "external_url + '/runbooks'"))
    external_url: str = Field("", description=(
        "where this mevwatch's landing page is reached (e.g. https://mev-host-1:9717): externalURL of webhook "
        "payloads, and each alert's generatorURL links to its row there. Default, as Prometheus' "
        "--web.external-url: http://<host>:<port of web.listen_address>"))
    receivers: list[Receiver] = Field(default_factory=_default_receivers)
    receiver: str = Field("log", description="default receiver of the top-level route")
    group_by: list[str] = Field(default_factory=lambda: ["alertname", "host"], description=(
        "labels a notification groups alerts by; host is always one of them, so two hosts never share a group"))
    group_wait: Duration = Field(30.0, ge=0)
    group_interval: Duration = Field(300.0, gt=0)
    repeat_interval: Duration = Field(14400.0, gt=0)
    routes: list[Route] = Field(default_factory=list, description="first match wins unless continue: true")
    escalation: list[Escalation] = Field(default_factory=list, description="escalation of the default route")
    time_intervals: list[NamedTimeInterval] = Field(default_factory=list, description=(
        "named windows in Alertmanager's time_intervals syntax (times, weekdays, days_of_month, months, "
        "years, location), for escalation levels' active_time_intervals"))
    inhibit_rules: list[InhibitRule] = Field(default_factory=_default_inhibit)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    alertmanager_silences: AlertmanagerSilencesConfig | None = Field(None, description=(
        "an Alertmanager cluster whose silences (API v2) mevwatch reads. standalone: the direct sinks also "
        "honour them (while it cannot be read they mute nothing), and the screens show them; fleet: only "
        "shown (which silence holds an alert, or UNKNOWN while no peer answers), Alertmanager applies them "
        "itself; default in fleet mode: the alertmanager receivers' URLs"))

    _rules: tuple[Rule, ...] = PrivateAttr(default=())
    _derived: frozenset[str] = PrivateAttr(default=frozenset())  # link fields derived from the address

    def with_own_links(self, port: str) -> AlertsConfig:
        """This config with the links back to this mevwatch filled in where the file leaves them out:
        external_url as Prometheus derives --web.external-url (http://<host>:<port>), and runbook_url the
        runbooks it serves there. Called again when a flag moves the listen address."""
        given = self.model_fields_set - self._derived
        external = self.external_url if "external_url" in given else f"http://{self.host}:{port}"
        update = {k: v for k, v in (("external_url", external),
                                     ("runbook_url", external.rstrip("/") + RUNBOOKS_PATH)) if k not in given}
        if not update:
            return self
        out = self.model_copy(update=update)
        out._derived = frozenset(update)
        return out

    @property
    def export_runbook_url(self) -> str:
        """The runbook link base of rules exported for Prometheus: the file's runbook_url, or, when that is
        derived from this host's address, the host-independent EXPORT_RUNBOOK_URL (the rules serve a fleet)."""
        return EXPORT_RUNBOOK_URL if "runbook_url" in self._derived else self.runbook_url

    def model_post_init(self, context: Any, /) -> None:
        # Read from a config file (context RuleLoading): the rule set is merged from the default rules,
        # the rule files and the inline rules, once, here. Built in code: the inline rules alone.
        if isinstance(context, RuleLoading) and self.enabled:
            rules, issues = merge_rules(self.default_rules, self.rule_files, self.rules, context.base,
                                        self.rule_overrides)
            locate = context.locate
            context.issues.extend(
                locate(tuple(i.path.split(".")), i.message) if locate is not None and not i.file else i
                for i in issues
            )
            self._rules = rules
        else:
            self._rules = tuple(self.rules)

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
        for i, rc in enumerate(self.receivers):
            for j, name in enumerate(rc.fallback or ()):
                if name == rc.name:
                    raise ValueError(f"receivers[{i}].fallback[{j}]: {name!r} is the receiver itself; what it "
                                     "refuses goes to other receivers")
                refs.append((f"receivers[{i}].fallback[{j}]", name))
        for where, name in refs:
            if name not in known:
                raise ValueError(f"{where}: unknown receiver {name!r}; known: {', '.join(names) or 'none'}")
        windows = [t.name for t in self.time_intervals]
        dup = sorted({n for n in windows if windows.count(n) > 1})
        if dup:
            raise ValueError(f"time_intervals: duplicate name(s): {', '.join(dup)}")
        levels = [(f"escalation[{i}]", e) for i, e in enumerate(self.escalation)]
        levels += [(f"routes[{i}].escalation[{j}]", e) for i, r in enumerate(self.routes)
                   for j, e in enumerate(r.escalation)]
        for where, e in levels:
            for k, name in enumerate(e.active_time_intervals):
                if name not in windows:
                    raise ValueError(f"{where}.active_time_intervals[{k}]: unknown time interval {name!r}; "
                                     f"known: {', '.join(windows) or 'none (add it under alerts.time_intervals)'}")
        seen: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if rule.name in seen:
                raise ValueError(f"rules[{i}].name: duplicate rule name {rule.name!r} (also rules[{seen[rule.name]}])")
            seen[rule.name] = i
        if self.alertmanager_silences is not None and not self.alertmanager_silences.urls and not any(
                rc.alertmanager_configs for rc in self.receivers):
            raise ValueError("alertmanager_silences.urls: none given, and no receiver has alertmanager_configs "
                             "whose URLs it could default to")
        if self.mode == "fleet":
            if not any(rc.alertmanager_configs for rc in self.receivers):
                raise ValueError(f"receivers: {_FLEET}; add a receiver with alertmanager_configs")
            # every alert must reach Alertmanager: a route to a log-only receiver would keep it from there
            for where, name in [("receiver", self.receiver)] + [
                    (f"routes[{i}].receiver", r.receiver) for i, r in enumerate(self.routes)]:
                if not self.receiver_named(name).alertmanager_configs:
                    raise ValueError(f"{where}: {_FLEET}, so every alert goes there: receiver {name!r} has no "
                                     "alertmanager_configs (add them; a log_configs entry may stay beside them)")
        return self

    @field_validator("escalation", "routes", "inhibit_rules", "receivers")
    @classmethod
    def _fleet_mode(cls, v: Any, info: ValidationInfo) -> Any:
        """What fleet mode leaves to Alertmanager is refused where it is written."""
        if info.data.get("mode") != "fleet" or not v:
            return v
        field = info.field_name
        if field == "escalation":
            raise ValueError(f"{_FLEET}; escalate in Alertmanager's route tree and remove alerts.escalation")
        if field == "routes":
            for i, r in enumerate(v):
                if r.escalation:
                    raise ValueError(f"routes[{i}].escalation: {_FLEET}; escalate in Alertmanager's route tree")
        if field == "inhibit_rules":
            raise ValueError(f"{_FLEET}; put inhibit_rules in Alertmanager's config")
        if field == "receivers":
            for i, rc in enumerate(v):
                for name in type(rc).model_fields:
                    if name.endswith("_configs") and name not in FLEET_SINKS and getattr(rc, name):
                        raise ValueError(f"receivers[{i}].{name}: {_FLEET}; only log_configs and "
                                         "alertmanager_configs may be used: configure this receiver in Alertmanager")
        return v

    @property
    def silence_source(self) -> AlertmanagerSilencesConfig | None:
        """The Alertmanager cluster whose silences are read: alertmanager_silences, or in fleet mode (where
        every alert goes to Alertmanager) by default, so that mevwatch's screens can say which silence holds
        an alert; its URLs default to the alertmanager receivers' peers."""
        source = self.alertmanager_silences
        if source is None and self.mode != "fleet":
            return None
        source = source or AlertmanagerSilencesConfig()
        if not source.urls:
            urls = [u for rc in self.receivers for c in rc.alertmanager_configs for u in c.target_urls]
            source = source.model_copy(update={"urls": list(dict.fromkeys(urls))})
        return source if source.urls else None

    @property
    def silences_mute(self) -> bool:
        """Whether Alertmanager's silences hold mevwatch's own pages: standalone only; in fleet mode every
        alert goes to Alertmanager unfiltered and its silences are only shown (a local mute would hide an
        alert from the cluster)."""
        return self.mode == "standalone" and self.alertmanager_silences is not None

    @property
    def all_rules(self) -> tuple[Rule, ...]:
        """Default rules, then rule files, then inline rules (inline ones replace defaults of the same name)."""
        return self._rules

    def time_interval_named(self, name: str) -> tuple[TimeInterval, ...]:
        return tuple(next(t for t in self.time_intervals if t.name == name).time_intervals)

    def receiver_named(self, name: str) -> Receiver:
        return next(r for r in self.receivers if r.name == name)

    def fallback_receivers(self) -> dict[str, list[str]]:
        """Receiver name -> the receivers that get a notification it gave up on (``Receiver.fallback``).

        By default the default receiver, the one that sees everything no route claims; what the default
        receiver itself refuses goes to the receivers of the routes (not to escalation levels: a broken
        webhook must not page a director). Never the receiver itself."""
        routed = list(dict.fromkeys(r.receiver for r in self.routes))
        out = {}
        for rc in self.receivers:
            if rc.fallback is not None:
                names = rc.fallback
            elif rc.name != self.receiver:
                names = [self.receiver]
            else:
                names = routed
            out[rc.name] = [n for n in dict.fromkeys(names) if n != rc.name]
        return out
