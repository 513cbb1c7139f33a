"""The runbooks (docs/runbooks.md) as mevwatch ships them: their text, their section titles, and the page
the daemon serves at ``/runbooks``, so that every ``runbook_url`` link opens from the daemon itself.

A built wheel or Debian package carries the file as ``mevwatch/runbooks.md`` (setup.py's build step); an
editable install reads it from the source tree.
"""

from __future__ import annotations

import html
import re
from importlib import resources
from pathlib import Path

__all__ = ["RUNBOOKS_PATH", "runbooks_html", "runbooks_markdown", "section_titles"]

#: where the daemon serves the runbooks (the default ``alerts.runbook_url`` is external_url + this)
RUNBOOKS_PATH = "/runbooks"
_SOURCE = Path(__file__).resolve().parents[1] / "docs" / "runbooks.md"
_ANCHORED_HEADING = re.compile(r'<a id="([^"]+)"></a>\s*\n##\s+(.+)')
_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;max-width:60em;line-height:1.4}"
    "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left;vertical-align:top}"
    "code{background:#f3f3f3}pre{background:#f3f3f3;padding:.5em;overflow-x:auto}h2{margin-top:2em}"
)


def runbooks_markdown() -> str | None:
    """The runbooks' Markdown, or None when this installation has none (then links name anchors only)."""
    try:
        return (resources.files("mevwatch") / "runbooks.md").read_text(encoding="utf-8")
    except OSError:
        pass
    try:
        return _SOURCE.read_text(encoding="utf-8")
    except OSError:
        return None


def section_titles(text: str | None = None) -> dict[str, str]:
    """Anchor -> heading of each runbook section (empty when the runbooks are not installed)."""
    text = runbooks_markdown() if text is None else text
    if text is None:
        return {}
    return {m.group(1): m.group(2).strip() for m in _ANCHORED_HEADING.finditer(text)}


def runbooks_html(text: str | None = None) -> str:
    """The runbooks as one HTML page whose anchors are the sections' ``<a id>`` (the links' ``#anchor``).

    The Markdown is mevwatch's own shipped file, so its inline HTML (the anchors) is kept as written.
    """
    from markdown_it import MarkdownIt  # only the daemon's /runbooks page renders Markdown

    text = runbooks_markdown() if text is None else text
    head = f"<!doctype html><html><head><meta charset=utf-8><title>mevwatch runbooks</title><style>{_STYLE}</style>"
    if text is None:
        return (head + "</head><body><h1>mevwatch runbooks</h1><p>The runbooks are not installed with this "
                "mevwatch; see docs/runbooks.md in its source.</p></body></html>")
    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(text)
    return head + f"</head><body><p><a href=\"/\">{html.escape('← mevwatch')}</a></p>{body}</body></html>"
