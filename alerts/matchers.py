"""Label matchers in Alertmanager's syntax: ``node="erigon"``, ``node!="a"``, ``state=~"open|half_open"``, ``x!~"re"``.

Rules select series with them, routes and inhibit rules select alerts with them.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator

__all__ = ["Matcher", "MatcherField", "matches_all", "parse_matcher"]

_MATCHER_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


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


#: a config field holding a matcher written as a string
MatcherField = Annotated[Matcher, BeforeValidator(parse_matcher)]


def matches_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
