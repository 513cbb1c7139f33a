"""docs/runbooks.md's table of the guide's checks: every row names a metric, a rule and a diagnose line that
exist, or says why there is none; a rule named reads a metric of its row, a metric named (a shorthand ``_x``
too) is declared with the labels named; every default rule answers some check of the guide."""

from __future__ import annotations

import re
from collections.abc import Mapping

from mevwatch.alerts.rule import Rule
from mevwatch.alerts.rulefiles import DEFAULT_RULES_FILE, load_rule_file
from tests.support.peers import REPO

RUNBOOKS = REPO / "docs" / "runbooks.md"
METRICS = REPO / "docs" / "metrics.md"
#: diagnose lines that are not a rule's: the runbook's detail lines (daemon/diagnose.py and the collectors)
DETAIL_LINES = ("top memory #", "recent errors", "collector KIND/INSTANCE", "largest file")
_RULE_NAME = re.compile(r"\b[A-Z][a-z]+(?:[A-Z][a-z0-9]*)+\b")
#: CamelCase words of the table that are not rule names
NOT_RULES = {"MemoryMax"}
_METRICS_ROW = re.compile(
    r"\| `(?P<name>[a-z0-9_]+)`(?: `[a-z0-9_]+`)* \| (?P<type>\w+) \|[^|]*\| (?P<labels>[^|]*) \|")


def _rows() -> list[list[str]]:
    text = RUNBOOKS.read_text(encoding="utf-8")
    start = text.index("| Guide section: check | Metric | Rule | diagnose line |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


def _rules() -> dict[str, Rule]:
    rules, issues = load_rule_file(DEFAULT_RULES_FILE)
    assert issues == []
    return {r.name: r for r in rules}


def _declared() -> dict[str, tuple[str, ...]]:
    """docs/metrics.md's families (a histogram by its name) and their labels."""
    out: dict[str, tuple[str, ...]] = {}
    for line in METRICS.read_text(encoding="utf-8").splitlines():
        m = _METRICS_ROW.match(line)
        if m:
            name = m.group("name").removesuffix("_bucket") if m.group("type") == "histogram" else m.group("name")
            out[name] = tuple(re.findall(r"`(\w+)`", m.group("labels")))
    return out


def _family(name: str, declared: Mapping[str, tuple[str, ...]]) -> str | None:
    for candidate in (name, name.removesuffix("_total"), name.removesuffix("_info"), name.removesuffix("_bucket")):
        if candidate in declared:
            return candidate
    return None


def _shared(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _metrics(cell: str, declared: Mapping[str, tuple[str, ...]]) -> list[tuple[str, str | None, list[str]]]:
    """(as written, the family it names or None, label names in its braces: ``{reason}``, ``{status=failed}``)
    of each metric of a cell; a
    shorthand ``_x`` names the family sharing the longest prefix with the one before it (``_swap_used_ratio``
    after ``mevwatch_memory_used_ratio``)."""
    out: list[tuple[str, str | None, list[str]]] = []
    prev = ""
    for written, braces in re.findall(r"`(_?[a-z0-9_]+)(\{[^}]*\})?`", cell):
        if written.startswith("mevwatch_"):
            family = _family(written, declared)
        else:
            fits = [n for n in declared if n.endswith(written) and prev]
            family = max(fits, key=lambda n: _shared(n, prev), default=None)
        parts = [part.strip() for part in braces.strip("{}").split(",") if part.strip()]
        # {sink,lost}: label names; {source=journal,pattern=priority_err}: label=value; {pattern=error,warning}:
        # a bare part after a label=value is another value of that label
        valued = any("=" in part for part in parts)
        out.append((written, family, [part.split("=", 1)[0] for part in parts if "=" in part or not valued]))
        prev = family or prev
    return out


def test_every_row_has_a_rule_or_says_why_not() -> None:
    rules = _rules()
    rows = _rows()
    assert len(rows) >= 60
    for check, metric, rule, diagnose in rows:
        assert all((check, metric, rule, diagnose)), check
        named = set(_RULE_NAME.findall(rule))
        if rule.startswith("none: "):
            assert len(rule) > 20, f"{check}: no rule and no reason: {rule!r}"
        else:
            assert named, f"{check}: neither a rule nor why not: {rule!r}"
        # a rule named anywhere in the row, a reason's too, is a default rule
        for cell in (rule, diagnose):
            unknown = set(_RULE_NAME.findall(cell)) - set(rules) - NOT_RULES
            assert not unknown, f"{check}: no default rule {unknown}"
        shown = set(_RULE_NAME.findall(diagnose)) & set(rules)
        if rule.startswith("none: "):
            assert diagnose == "none" or diagnose.startswith(DETAIL_LINES), f"{check}: {diagnose!r}"
        else:
            assert shown or diagnose.startswith(DETAIL_LINES), f"{check}: no diagnose line for {rule!r}"


def test_every_metric_named_is_declared_with_the_labels_named() -> None:
    declared = _declared()
    for check, metric, _, _ in _rows():
        if metric != "none":
            assert "`mevwatch_" in metric, f"{check}: {metric!r}"
        for written, family, labels in _metrics(metric, declared):
            assert family is not None, f"{check}: {written} is not in docs/metrics.md"
            unknown = set(labels) - set(declared[family])
            assert not unknown, f"{check}: {family} has no label {unknown}"


def test_every_rule_named_reads_a_metric_of_its_row() -> None:
    rules, declared = _rules(), _declared()
    for check, metric, rule, _ in _rows():
        if rule.startswith("none: "):
            continue
        families = {f for _, f, _ in _metrics(metric, declared) if f is not None}
        for name in set(_RULE_NAME.findall(rule)) & set(rules):
            r = rules[name]
            reads = {_family(n, declared) for n in (r.metric, *([r.when.metric] if r.when else []))}
            assert reads & families, f"{check}: {name} reads {sorted(map(str, reads))}, the row {sorted(families)}"


def test_the_detail_lines_named_are_diagnose_lines() -> None:
    code = (REPO / "daemon" / "diagnose.py").read_text() + "".join(
        p.read_text() for p in (REPO / "collectors").glob("*.py"))
    for line in DETAIL_LINES:
        spelled = {"collector KIND/INSTANCE": "collector {", "largest file": "largest file {"}.get(line, line)
        assert spelled in code, f"no diagnose line starts with {line!r}"


def test_every_default_rule_answers_a_check_of_the_guide() -> None:
    tabled = {n for _, _, rule, _ in _rows() for n in _RULE_NAME.findall(rule)}
    assert sorted(set(_rules()) - tabled) == []
