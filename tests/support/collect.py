"""Running a poll collector once in a test, keeping what a failed run still measured."""

from __future__ import annotations

from typing import Any

from mevwatch.collectors.base import CollectorError, Families, PollCollector

__all__ = ["collect_anyway"]


async def collect_anyway(collector: PollCollector[Any]) -> Families:
    """The families of one run, whether it succeeded or failed with families (e.g. ``up 0``)."""
    try:
        return await collector.collect()
    except CollectorError as exc:
        if exc.families is None:
            raise
        return exc.families
