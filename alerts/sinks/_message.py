"""What a paging or chat message says about one notification: title, one line per alert, runbook links, and for
each firing alert the link back to its row on mevwatch's page and the command that silences it."""

from __future__ import annotations

import functools
import html
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DISCORD", "PLAIN", "TELEGRAM_HTML", "LinkBack", "Markup", "alert_line", "group_link", "link_back",
           "links_back", "notification_title", "plain_text", "runbook_links"]


def notification_title(payload: dict[str, Any]) -> str:
    """``[FIRING:2] HeadLag on mev-1``: status, count, alert name and host; a notification another receiver
    gave up on (its fallback) says which: ``... (undelivered to pager/webhook/0)``."""
    alerts = payload.get("alerts", [])
    firing = [a for a in alerts if a["status"] == "firing"]
    status = "FIRING" if firing else "RESOLVED"
    first = (firing or alerts or [{"labels": {}}])[0]["labels"]
    name = payload.get("groupLabels", {}).get("alertname") or first.get("alertname", "alert")
    host = first.get("host", "")
    count = len(firing) if firing else len(alerts)
    undelivered = payload.get("commonAnnotations", {}).get("undelivered_to")
    return (f"[{status}:{count}] {name}" + (f" on {host}" if host else "")
            + (f" (undelivered to {undelivered})" if undelivered else ""))


def alert_line(a: dict[str, Any]) -> str:
    ann = a.get("annotations", {})
    summary = ann.get("summary") or a["labels"].get("alertname", "alert")
    return f"[{a['status'].upper()}] {summary}"


def runbook_links(alerts: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """(alert name, runbook URL) once per URL, in alert order."""
    seen: dict[str, str] = {}
    for a in alerts:
        url = a.get("annotations", {}).get("runbook_url", "")
        if url.startswith(("http://", "https://")) and url not in seen:
            seen[url] = a["labels"].get("alertname", "alert")
    return [(name, url) for url, name in seen.items()]


def _is_link(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _no_link(url: str) -> str:
    """What a link back would need, said where the link would be (never a link that cannot open)."""
    # no example URL: a chat service would make it a link that opens nothing
    setting = "set alerts.external_url to the http(s) address this mevwatch's page is reached at"
    if not url:
        return f"no link: alerts.external_url is empty; {setting}"
    return f"no link: {url!r} is not an http(s) URL; {setting}"


@dataclass(frozen=True, slots=True)
class LinkBack:
    """One alert's way back to mevwatch, as every sink's page shows it: ``url`` its row on mevwatch's page (the
    notification's generatorURL, from alerts.external_url), ``silence`` the command that silences exactly this
    alert (its ``silence`` annotation, set by the router like generatorURL)."""

    url: str
    silence: str

    @property
    def opens(self) -> bool:
        """True when ``url`` is a link that can open (http or https)."""
        return _is_link(self.url)

    @property
    def missing(self) -> str:
        """What the link would need, shown in its place when it cannot open."""
        return "" if self.opens else _no_link(self.url)


def link_back(alert: Mapping[str, Any]) -> LinkBack:
    """The link back and the silence command of one alert of a notification."""
    ann = alert.get("annotations") or {}
    return LinkBack(str(alert.get("generatorURL") or ""), str(ann.get("silence") or ""))


def links_back(alerts: Iterable[Mapping[str, Any]]) -> list[LinkBack]:
    """The link back and the silence command of each firing alert (a resolved one has nothing left to open
    or silence), in alert order."""
    return [link_back(a) for a in alerts if a.get("status") == "firing"]


def group_link(payload: Mapping[str, Any]) -> str:
    """The page that lists every alert of this mevwatch (the notification's externalURL), or ""."""
    url = str(payload.get("externalURL") or "")
    return url if _is_link(url) else ""


@dataclass(frozen=True, slots=True)
class Markup:
    """How a chat service shows plain text, a link and a command (its escaping and its markup)."""

    text: Callable[[str], str]
    link: Callable[[str], str]  # the URL shown as itself, so it reads even where the service drops the markup
    code: Callable[[str], str]  # a command the on-call copies: shown verbatim


def _html_text(s: str) -> str:
    return html.escape(s, quote=False)


def _discord_code(cmd: str) -> str:
    # Discord's markdown: a code span shows its text verbatim; double backticks hold one that has backticks
    if "`" not in cmd:
        return f"`{cmd}`"
    return f"`` {cmd} ``" if "``" not in cmd else cmd


#: plain text (Matrix m.text, a custom body, mail)
PLAIN = Markup(text=lambda s: s, link=lambda url: url, code=lambda cmd: cmd)
#: Telegram's parse_mode HTML: only &, < and > escaped in text (and " in an attribute); <code> copies on a tap
TELEGRAM_HTML = Markup(
    text=_html_text,
    link=lambda url: f'<a href="{html.escape(url, quote=True)}">{_html_text(url)}</a>',
    code=lambda cmd: f"<code>{_html_text(cmd)}</code>",
)
#: Discord's message markdown: <url> is a link without an embed; a command in a code span
DISCORD = Markup(text=lambda s: s, link=lambda url: f"<{url}>", code=_discord_code)


def _block(a: dict[str, Any], markup: Markup, summary_limit: int | None = None, silence: bool = True) -> str:
    """One alert: its line with the runbook, then (firing) its link back and its silence command."""
    line = alert_line(a) if summary_limit is None else _shortened(alert_line(a), summary_limit)
    url = a.get("annotations", {}).get("runbook_url", "")
    out = markup.text(line)
    if url:
        out += " (runbook: " + (markup.link(url) if _is_link(url) else markup.text(url)) + ")"
    if a.get("status") != "firing":
        return out
    back = link_back(a)
    out += "\n  alert: " + (markup.link(back.url) if back.opens else markup.text(back.missing))
    if silence and back.silence:
        out += "\n  silence: " + markup.code(back.silence)
    return out


def _cut_note(payload: dict[str, Any], left: int, markup: Markup) -> str:
    where = group_link(payload)
    text = markup.text(f"… {left} more not shown (cut); see the alert list in mevwatch")
    return text + (" at " + markup.link(where) if where else "")


def plain_text(payload: dict[str, Any], limit: int, markup: Markup = PLAIN) -> str:
    """Title, then per alert its line with the runbook and, while firing, its link back and silence command;
    within ``limit`` characters. What does not fit is left out by whole alerts, with a note of how many and
    where the rest is: a link or a command cut short would open nothing or silence the wrong alerts."""
    alerts = payload.get("alerts", [])
    title = markup.text(notification_title(payload))
    blocks = [_block(a, markup) for a in alerts]
    text = "\n".join([title, *blocks])
    if len(text) <= limit:
        return text
    size = len(title)
    sizes = [size]
    for b in blocks:
        size += 1 + len(b)
        sizes.append(size)
    for kept in range(len(blocks) - 1, 0, -1):
        note = _cut_note(payload, len(blocks) - kept, markup)
        if sizes[kept] + 1 + len(note) <= limit:
            return "\n".join([title, *blocks[:kept], note])
    # not even the first alert fits whole: shorten its summary, then leave out its silence command (the
    # alert's row on mevwatch's page has it), and as a last resort send the title alone
    note = _cut_note(payload, len(blocks) - 1, markup) if len(blocks) > 1 else ""
    room = limit - len(title) - 1 - (len(note) + 1 if note else 0)
    for silence in (True, False) if alerts else ():
        first = _fitted(functools.partial(_block, alerts[0], markup, silence=silence), room)
        if first is not None:
            return "\n".join([title, first, *([note] if note else [])])
    alone = _fitted(lambda n: markup.text(_shortened(notification_title(payload), n) + " … (cut; see the alert "
                                                      "list in mevwatch)"), limit)
    return alone if alone is not None else markup.text("… (cut; see the alert list in mevwatch)")[:limit]


def _shortened(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(n - 1, 0)] + "…"


def _fitted(render: Callable[[int], str], room: int, shortest: int = 12) -> str | None:
    """``render(n)`` with the largest ``n`` (a text's length before escaping) that fits ``room``; None when
    not even ``shortest`` fits."""
    n = room
    while n >= shortest:
        out = render(n)
        if len(out) <= room:
            return out
        n -= max(len(out) - room, 1)
    out = render(shortest)
    return out if len(out) <= room else None
