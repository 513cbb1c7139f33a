"""Reading values out of the metric families a collector returned, without rendering them."""

from __future__ import annotations

from collections.abc import Iterable

from mevwatch.families import Metric

__all__ = ["family_labels", "family_state", "family_value"]


def family_value(families: Iterable[Metric], name: str, **labels: str) -> float | None:
    """Value of the first sample called ``name`` (with ``_total`` for counters) whose labels include ``labels``."""
    for fam in families:
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def family_labels(families: Iterable[Metric], name: str) -> list[dict[str, str]]:
    """Label sets of every sample called ``name``."""
    return [dict(s.labels) for fam in families for s in fam.samples if s.name == name]


def family_state(families: Iterable[Metric], name: str, **labels: str) -> str | None:
    """The ``status`` label of the one sample of an enum family (``name``, ``labels``) that is 1."""
    hits = [s.labels["status"] for fam in families for s in fam.samples
            if s.name == name and s.value == 1.0 and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) <= 1, hits
    return hits[0] if hits else None
