"""The runbook anchors (``<a id="...">`` in docs/runbooks.md) that every rule's ``runbook`` must name."""

from __future__ import annotations

import functools
import re
from pathlib import Path

__all__ = ["RUNBOOKS_FILE", "runbook_anchors"]

RUNBOOKS_FILE = Path(__file__).resolve().parent.parent / "docs" / "runbooks.md"

_ANCHOR_RE = re.compile(r'<a\s+(?:id|name)="([^"]+)"')


@functools.lru_cache(maxsize=4)
def _anchors_of(path: Path, mtime: float) -> frozenset[str]:
    return frozenset(_ANCHOR_RE.findall(path.read_text(encoding="utf-8")))


def runbook_anchors(path: Path = RUNBOOKS_FILE) -> frozenset[str] | None:
    """Anchors of docs/runbooks.md; None when the file is not shipped."""
    try:
        return _anchors_of(path, path.stat().st_mtime)
    except OSError:
        return None
