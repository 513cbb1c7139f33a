"""One alerting rule: its fields as written in YAML and what they mean (``window``, ``passes``).

Rules are data: ``metric``, label matchers, ``op``/``threshold`` with an optional ``clear`` threshold
(hysteresis), ``for``, ``keep_firing_for``, increase/rate over a window or a histogram quantile.
Evaluation over series and time is in ``mevwatch.alerts.rules``; the meaning of one comparison is here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator, model_validator

from mevwatch.alerts.matchers import MatcherField
from mevwatch.alerts.runbooks import RUNBOOKS_FILE, runbook_anchors
from mevwatch.alerts.templates import check_template, template_metrics, uses_window
from mevwatch.families import METRIC_NAME_RE
from mevwatch.fields import Duration

__all__ = [
    "LABEL_NAME_RE", "RESERVED_ANNOTATIONS", "Condition", "Op", "Rule", "RuleFile", "RuleOverride", "Severity",
    "compare",
]

LABEL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: annotations mevwatch writes itself (texts, runbook link, silence command)
RESERVED_ANNOTATIONS = ("summary", "description", "runbook_url", "silence")

Op = Literal[">", ">=", "<", "<=", "==", "!="]
Severity = Literal["info", "warning", "critical"]


def metric_name(v: str) -> str:
    if not METRIC_NAME_RE.fullmatch(v):
        raise ValueError(f"metric {v!r} is not a valid Prometheus metric name")
    return v


class Condition(BaseModel):
    """A second metric that must hold for the same series (PromQL ``and``), e.g. dead tuples above 1,000
    beside the dead-tuple ratio; with ``absent``, the series that must each have one of the rule's metric
    (PromQL ``unless``), e.g. every node that is up must report its peer count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(description="sample name of the other metric")
    matchers: list[MatcherField] = Field(default_factory=list, description="label matchers on it")
    increase: Duration | None = Field(None, description="compare the counter's increase over this window")
    op: Op = Field(">", description="comparison: > >= < <= == !=")
    threshold: float = Field(0.0, description="value compared with op")
    ignoring: list[str] = Field(
        default_factory=list, description="labels left out when pairing its series with the rule's (PromQL ignoring)"
    )

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return metric_name(v)

    def passes(self, value: float) -> bool:
        return compare(value, self.op, self.threshold)


class Rule(BaseModel):
    """One alerting rule over one metric's series (sample name as in /metrics)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(description="alert name (alertname label), unique over all rules")
    metric: str = Field(description="sample name as exposed on /metrics, e.g. mevwatch_oom_kills_total")
    matchers: list[MatcherField] = Field(default_factory=list, description="label matchers selecting series")
    increase: Duration | None = Field(None, description="compare the counter's increase over this window")
    rate: Duration | None = Field(None, description="compare the counter's per-second rate over this window")
    quantile: float | None = Field(
        None, gt=0, lt=1, description="histogram quantile of <metric>_bucket (over `rate` window if set)"
    )
    absent: bool = Field(False, description=(
        "fire when no series matches (a dead collector is an alert); with `when`: fire for each series of "
        "`when` that has no series of `metric` (a check that cannot be made)"))
    when: Condition | None = Field(None, description=(
        "another metric's series must pass their own op/threshold too, paired by labels (PromQL and/unless)"))
    without: list[str] = Field(default_factory=list, description=(
        "labels that do not tell the rule's alerts apart: series differing only in them are judged as one, by "
        "their highest value (PromQL max without(...)), so a label that changes while the condition holds (a "
        "failure's reason, a state) neither restarts `for` nor resolves the page; the text can still read it "
        "with {{ $metric.NAME | label \"LABEL\" }}"))
    op: Op = Field(">", description="comparison: > >= < <= == !=")
    threshold: float = Field(0.0, description="value compared with op")
    clear: float | None = Field(None, description="hysteresis: an active alert stays until the value passes this")
    for_: Duration = Field(0.0, alias="for", description="condition must hold this long before firing")
    keep_firing_for: Duration = Field(0.0, description="keep firing this long after the condition stopped")
    severity: Severity = Field("warning", description="info, warning or critical")
    labels: dict[str, str] = Field(default_factory=dict, description="extra labels on the alert")
    summary: str = Field(description=(
        "one line; {{ $labels.x }}, {{ $value }}, {{ $metric.NAME }} and the rule's {{ $threshold }}, {{ $for }}, "
        "{{ $window }} templates"))
    description: str = Field("", description="longer text; same templates")
    annotations: dict[str, str] = Field(default_factory=dict, description=(
        "more annotations by name, same templates, e.g. diff: a detail the landing page and diagnose show "
        "on its own"))
    runbook: str = Field(description="anchor in docs/runbooks.md")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not LABEL_NAME_RE.match(v):
            raise ValueError(f"rule name {v!r} must match [A-Za-z_][A-Za-z0-9_]*")
        return v

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return metric_name(v)

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

    @field_validator("without")
    @classmethod
    def _without(cls, v: list[str], info: ValidationInfo) -> list[str]:
        for name in v:
            if not LABEL_NAME_RE.match(name) or name in ("__name__", "le", "host"):
                raise ValueError(f"without: {name!r} is not a label a rule's series can be merged over")
        if v and info.data.get("absent"):
            raise ValueError("without cannot be combined with absent (an absent alert has no series to merge)")
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
            if not LABEL_NAME_RE.match(k) or k.startswith("__"):
                raise ValueError(f"label name {k!r} is not valid")
            if k in ("alertname", "severity"):
                raise ValueError(f"label {k!r} is set from the rule's name/severity")
        return v

    @field_validator("summary", "description")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_template(v)

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, v: dict[str, str]) -> dict[str, str]:
        for name, text in v.items():
            if not LABEL_NAME_RE.match(name) or name in RESERVED_ANNOTATIONS:
                raise ValueError(f"annotation name {name!r} is not valid (or is set by mevwatch: "
                                 f"{', '.join(RESERVED_ANNOTATIONS)})")
            check_template(text)
        return v

    @field_validator("runbook")
    @classmethod
    def _runbook(cls, v: str) -> str:
        anchors = runbook_anchors()
        if anchors is not None and v not in anchors:
            raise ValueError(f"runbook anchor {v!r} is not in {RUNBOOKS_FILE.name} (add a section with <a id=\"{v}\">)")
        return v

    @model_validator(mode="after")
    def _window_named(self) -> Rule:
        if self.text_window is None and any(uses_window(t) for t in self.texts.values()):
            raise ValueError("{{ $window }} names the window the rule counts over: it needs increase or rate "
                             "(a quantile without rate reads every bucket since start), or when.increase")
        return self

    @property
    def inputs(self) -> tuple[str, ...]:
        """The sample names the rule reads."""
        main = self.metric + "_bucket" if self.quantile is not None else self.metric
        names = (main, self.when.metric) if self.when is not None else (main,)
        shown = tuple(n for t in self.texts.values() for n in template_metrics(t))  # {{ $metric.NAME }}
        return names + tuple(n for n in dict.fromkeys(shown) if n not in names) if shown else names

    @property
    def texts(self) -> dict[str, str]:
        """The annotations' templates by name: summary, description, then the rule's own ``annotations``."""
        return {"summary": self.summary, "description": self.description, **self.annotations}

    @property
    def window(self) -> float:
        """History a series needs for this rule (increase/rate window)."""
        return float(self.increase or self.rate or 0.0)

    @property
    def text_window(self) -> float | None:
        """The window ``{{ $window }}`` names: the rule's increase or rate window, else its condition's
        increase window (how long one event keeps the rule's condition true); None without one."""
        if self.window:
            return self.window
        return float(self.when.increase) if self.when is not None and self.when.increase else None

    def passes(self, value: float, active: bool) -> bool:
        """Does ``value`` meet the condition? An active alert is held until it passes ``clear``.

        A value exactly at ``clear`` keeps an active alert (a strict op becomes inclusive), and NaN
        never passes.
        """
        if active and self.clear is not None:
            op = {">": ">=", "<": "<="}.get(self.op, self.op)
            return compare(value, op, self.clear)
        return compare(value, self.op, self.threshold)


def compare(value: float, op: str, bound: float) -> bool:
    """``value op bound``; NaN compares false, as in PromQL."""
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


class RuleFile(BaseModel):
    """A rule file: ``rules: [...]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule] = Field(default_factory=list)


def _override_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in Rule.model_fields.items():
        if name == "name":
            continue
        base: Any = info.annotation
        kind = Annotated[base | None, *info.metadata] if info.metadata else base | None
        fields[name] = (kind, Field(None, alias=info.alias, description=info.description))
    return fields


#: ``alerts.rule_overrides.<RuleName>``: any field of a rule but its name; the ones given replace the rule's
RuleOverride: type[BaseModel] = create_model(
    "RuleOverride",
    __config__=ConfigDict(extra="forbid", frozen=True, populate_by_name=True),
    __doc__="Fields replacing those of the rule of that name (default, rule file or inline); the rest stay.",
    **_override_fields(),
)


def override_rule(rule: Rule, override: BaseModel) -> Rule:
    """``rule`` with the fields ``override`` sets, validated again as a whole (ValidationError if it breaks)."""
    values: dict[str, Any] = {k: getattr(rule, k) for k in Rule.model_fields}
    values.update({k: getattr(override, k) for k in override.model_fields_set})
    return Rule.model_validate(values)
