"""Reading values out of the metric families a collector returned, without rendering them."""

from __future__ import annotations

from collections.abc import Iterable

from mevwatch.families import Metric

__all__ = ["family_labels", "family_value"]


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
