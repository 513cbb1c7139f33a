"""Local stand-ins for PagerDuty, Slack, Telegram, Discord and Matrix that check each request against the
service's documented request schema and answer as the service does (statuses, bodies, rate limits), and
``shown``: what each service shows of a request (the links the on-call can open, the code they can copy).

Sources of the checks:
- PagerDuty Events API v2: https://developer.pagerduty.com/docs/events-api-v2/trigger-events/ (and resolve-events)
- Slack incoming webhooks and Block Kit: https://api.slack.com/messaging/webhooks,
  https://api.slack.com/reference/block-kit/blocks and /block-elements#button; mrkdwn links ``<url|text>``
  and escaping (&, < and > as &amp; &lt; &gt;): https://api.slack.com/reference/surfaces/formatting
- Telegram Bot API sendMessage: https://core.telegram.org/bots/api#sendmessage and, for parse_mode HTML,
  #html-style (the tags it knows; &, < and > outside tags as entities; named entities &lt; &gt; &amp; &quot;
  only; the 4096-character limit counts the text after its entities are parsed)
- Discord Execute Webhook: https://discord.com/developers/docs/resources/webhook#execute-webhook
- Matrix client-server API v3, PUT /rooms/{roomId}/send/{eventType}/{txnId}
"""

from __future__ import annotations

import html
import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

from tests.support.peers import free_port
from tests.support.threadedapp import ThreadedApp

__all__ = ["FakeServices", "Scripted", "ServiceRequest", "Shown", "shown", "shown_html", "shown_plain"]

PD_KEY = "0123456789abcdef0123456789abcdef"
MATRIX_TOKEN = "syt_matrix_token"
TELEGRAM_TOKEN = "123456:ABC-telegram"


@dataclass(frozen=True, slots=True)
class Scripted:
    """An answer to give instead of the normal one (a failure to test retries)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServiceRequest:
    service: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    problems: tuple[str, ...]  # schema violations found; the fake answered 400 when there were any
    status: int


def _str(v: Any, name: str, limit: int, problems: list[str], required: bool = True) -> None:
    if v is None:
        if required:
            problems.append(f"{name} is required")
        return
    if not isinstance(v, str):
        problems.append(f"{name} must be a string")
    elif len(v) > limit:
        problems.append(f"{name} is longer than {limit}")
    elif required and not v:
        problems.append(f"{name} is empty")


def _only(obj: dict[str, Any], allowed: set[str], name: str, problems: list[str]) -> None:
    for k in obj:
        if k not in allowed:
            problems.append(f"{name}.{k} is not a documented field")


def check_pagerduty(body: Any) -> list[str]:
    p: list[str] = []
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    _only(body, {"routing_key", "event_action", "dedup_key", "payload", "images", "links", "client", "client_url"},
          "event", p)
    if body.get("routing_key") != PD_KEY:
        p.append("routing_key must be the integration's 32-character key")
    action = body.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        p.append("event_action must be trigger, acknowledge or resolve")
    _str(body.get("dedup_key"), "dedup_key", 255, p, required=action != "trigger")
    if action == "trigger":
        pl = body.get("payload")
        if not isinstance(pl, dict):
            return [*p, "payload is required for trigger"]
        _only(pl, {"summary", "source", "severity", "timestamp", "component", "group", "class", "custom_details"},
              "payload", p)
        _str(pl.get("summary"), "payload.summary", 1024, p)
        _str(pl.get("source"), "payload.source", 255, p)
        if pl.get("severity") not in ("critical", "error", "warning", "info"):
            p.append("payload.severity must be critical, error, warning or info")
        ts = pl.get("timestamp")
        if ts is not None and not (isinstance(ts, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d.*", ts)):
            p.append("payload.timestamp must be ISO 8601")
        for k in ("component", "group", "class"):
            _str(pl.get(k), f"payload.{k}", 1024, p, required=False)
        if "custom_details" in pl and not isinstance(pl["custom_details"], dict):
            p.append("payload.custom_details must be an object")
        for i, link in enumerate(body.get("links", [])):
            if not isinstance(link, dict) or not isinstance(link.get("href"), str):
                p.append(f"links[{i}].href is required")
            elif not re.fullmatch(r"https?://[^\s/]+\S*", link["href"]):
                p.append(f"links[{i}].href must be an absolute URL")
            elif "text" in link and not isinstance(link["text"], str):
                p.append(f"links[{i}].text must be a string")
        client_url = body.get("client_url")
        if client_url is not None and not (isinstance(client_url, str) and re.match(r"https?://", client_url)):
            p.append("client_url must be a URL")
    elif "payload" in body:
        p.append(f"{action} takes no payload")
    return p


#: what Slack reads between < and > in mrkdwn: a link (<url> or <url|text>), a mention or a special mention
_SLACK_ANGLE = re.compile(r"<(?:(?:https?://|mailto:)[^|<>\s]+(?:\|[^<>]*)?|[@#][A-Z0-9]+(?:\|[^<>]*)?|!\w+(?:\^[^<>]*)?)>")


def _text_object(obj: Any, name: str, limit: int, p: list[str], types: tuple[str, ...]) -> None:
    if not isinstance(obj, dict) or obj.get("type") not in types:
        p.append(f"{name} must be a text object of type {'/'.join(types)}")
        return
    _str(obj.get("text"), f"{name}.text", limit, p)
    if obj.get("type") == "mrkdwn" and isinstance(obj.get("text"), str):
        rest = _SLACK_ANGLE.sub("", obj["text"])
        if "<" in rest or ">" in rest:
            p.append(f"{name}.text: a < or > that is not a link or mention must be escaped (&lt; &gt;)")
        if re.search(r"&(?!amp;|lt;|gt;)", rest):
            p.append(f"{name}.text: a bare & must be escaped (&amp;)")


def check_slack(body: Any) -> list[str]:
    p: list[str] = []
    if not isinstance(body, dict):
        return ["invalid_payload"]
    if not body.get("text") and not body.get("blocks"):
        p.append("no_text")
    blocks = body.get("blocks", [])
    if not isinstance(blocks, list) or len(blocks) > 50:
        return [*p, "invalid_blocks: at most 50 blocks"]
    for i, b in enumerate(blocks):
        name = f"blocks[{i}]"
        t = b.get("type") if isinstance(b, dict) else None
        if t == "header":
            _text_object(b.get("text"), f"{name}.text", 150, p, ("plain_text",))
        elif t == "section":
            if "text" not in b and "fields" not in b:
                p.append(f"{name}: a section needs text or fields")
            if "text" in b:
                _text_object(b["text"], f"{name}.text", 3000, p, ("plain_text", "mrkdwn"))
            acc = b.get("accessory")
            if acc is not None:
                if acc.get("type") != "button":
                    p.append(f"{name}.accessory: only buttons expected")
                _text_object(acc.get("text"), f"{name}.accessory.text", 75, p, ("plain_text",))
                _str(acc.get("url"), f"{name}.accessory.url", 3000, p, required=False)
                _str(acc.get("action_id"), f"{name}.accessory.action_id", 255, p, required=False)
        elif t == "context":
            els = b.get("elements", [])
            if not 1 <= len(els) <= 10:
                p.append(f"{name}.elements: 1 to 10")
            for j, e in enumerate(els):
                _text_object(e, f"{name}.elements[{j}]", 3000, p, ("plain_text", "mrkdwn"))
        elif t == "actions":
            if not 1 <= len(b.get("elements", [])) <= 25:
                p.append(f"{name}.elements: 1 to 25")
        else:
            p.append(f"{name}: unexpected block type {t!r}")
    return p


def check_telegram(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return ["Bad Request: body must be an object"]
    p: list[str] = []
    if not isinstance(body.get("chat_id"), int | str) or body.get("chat_id") in ("", None):
        p.append("Bad Request: chat_id is empty")
    if "parse_mode" in body and body["parse_mode"] not in ("HTML", "Markdown", "MarkdownV2"):
        p.append("Bad Request: unsupported parse_mode")
    text = body.get("text")
    if isinstance(text, str) and body.get("parse_mode") == "HTML":
        text, problems = _telegram_html(text)  # the limit counts the text after its entities are parsed
        p += problems
    if not isinstance(text, str) or not text.strip():
        p.append("Bad Request: message text is empty")
    elif len(text) > 4096:
        p.append("Bad Request: message is too long")
    return p


_TELEGRAM_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "code",
                  "pre", "blockquote", "tg-emoji"}
_TELEGRAM_TOKEN = re.compile(r"<(/?)([a-zA-Z][\w-]*)((?:\s+[\w-]+=\"[^\"<>]*\")*)\s*>"  # a tag
                             r"|&(#\d+|#x[0-9a-fA-F]+|lt|gt|amp|quot);")  # an entity it knows


def _telegram_html(text: str) -> tuple[str, list[str]]:
    """Telegram's parse_mode HTML: (the text after parsing, the "can't parse entities" problems)."""
    p: list[str] = []
    out: list[str] = []
    open_tags: list[str] = []
    pos = 0
    for m in _TELEGRAM_TOKEN.finditer(text):
        between = text[pos:m.start()]
        if any(c in between for c in "<>&"):
            p.append(f"Bad Request: can't parse entities: unescaped <, > or & in {between[:40]!r}")
        out.append(between)
        pos = m.end()
        if m.group(2) is None:  # an entity
            out.append(html.unescape(m.group(0)))
            continue
        closing, tag, attrs = m.group(1) == "/", m.group(2).lower(), m.group(3)
        if tag not in _TELEGRAM_TAGS:
            p.append(f"Bad Request: can't parse entities: unsupported start tag \"{tag}\"")
        elif closing:
            if not open_tags or open_tags.pop() != tag:
                p.append(f"Bad Request: can't parse entities: unmatched end tag \"{tag}\"")
        else:
            if tag == "a" and not re.search(r'href="[^"]+"', attrs):
                p.append("Bad Request: can't parse entities: <a> without href")
            open_tags.append(tag)
    tail = text[pos:]
    if any(c in tail for c in "<>&"):
        p.append(f"Bad Request: can't parse entities: unescaped <, > or & in {tail[:40]!r}")
    out.append(tail)
    if open_tags:
        p.append(f"Bad Request: can't parse entities: can't find end tag corresponding to start tag {open_tags[-1]}")
    return "".join(out), p


def check_discord(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return ["50109: The request body contains invalid JSON."]
    p: list[str] = []
    content = body.get("content")
    if not content and not body.get("embeds"):
        p.append("50006: Cannot send an empty message")
    if isinstance(content, str) and len(content) > 2000:
        p.append("content: Must be 2000 or fewer in length.")
    _str(body.get("username"), "username", 80, p, required=False)
    am = body.get("allowed_mentions")
    if am is not None and not set(am.get("parse", [])) <= {"roles", "users", "everyone"}:
        p.append("allowed_mentions.parse: unknown type")
    return p


def check_matrix(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return ["M_NOT_JSON"]
    p: list[str] = []
    if not isinstance(body.get("msgtype"), str):
        p.append("M_BAD_JSON: msgtype")
    if not isinstance(body.get("body"), str):
        p.append("M_BAD_JSON: body")
    return p


@dataclass(frozen=True, slots=True)
class Shown:
    """What a service shows of a message: its ``text`` as read, the ``links`` one can open (their targets) and
    the ``code`` one can copy as it stands (code spans; plain text has none: there, the rest of a line after its
    label, ``silence: <command>``)."""

    text: str
    links: tuple[str, ...]
    code: tuple[str, ...]


_PLAIN_URL = re.compile(r"https?://[^\s<>()]+")


def shown_plain(text: str) -> Shown:
    code = tuple(line.split(": ", 1)[1] for line in text.splitlines() if ": " in line)
    return Shown(text, tuple(_PLAIN_URL.findall(text)), code)


class _HTMLShown(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.links: list[str] = []
        self.code: list[str] = []
        self._in_code = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links += [v for k, v in attrs if k == "href" and v]
        if tag == "code":
            self._in_code += 1
            self.code.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "code":
            self._in_code -= 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_code:
            self.code[-1] += data


def shown_html(text: str) -> Shown:
    """HTML as a mail reader or Telegram (parse_mode HTML) shows it: <a href> links, <code> code."""
    parser = _HTMLShown()
    parser.feed(text)
    parser.close()
    return Shown("".join(parser.text), tuple(parser.links), tuple(parser.code))


def _slack_shown(body: dict[str, Any]) -> Shown:
    texts = [b["text"]["text"] for b in body.get("blocks", []) if isinstance(b.get("text"), dict)
             and b["text"].get("type") == "mrkdwn"]
    texts += [e["text"] for b in body.get("blocks", []) for e in b.get("elements", []) if e.get("type") == "mrkdwn"]
    links: list[str] = []
    code: list[str] = []
    for t in texts:
        links += [html.unescape(m.group(1)) for m in re.finditer(r"<(https?://[^|>]+)(?:\|[^>]*)?>", t)]
        blocks = re.findall(r"```(.*?)```", t, re.S)
        code += [html.unescape(c) for c in blocks]
        code += [html.unescape(c) for c in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", t, flags=re.S))]
    links += [b["accessory"]["url"] for b in body.get("blocks", []) if "url" in b.get("accessory", {})]
    return Shown(html.unescape("\n".join(texts)), tuple(links), tuple(code))


def _discord_shown(content: str) -> Shown:
    links = re.findall(r"<(https?://[^>\s]+)>", content)
    links += re.findall(r"\]\(<?(https?://[^>)\s]+)>?\)", content)
    links += [u for u in _PLAIN_URL.findall(content) if u not in links]
    code = [c.strip() for c in re.findall(r"``(.+?)``", content)]
    code += re.findall(r"`([^`]+)`", re.sub(r"``.+?``", "", content))
    return Shown(content, tuple(links), tuple(code))


def _pagerduty_shown(body: dict[str, Any]) -> Shown:
    details = body.get("payload", {}).get("custom_details", {})
    silence = details.get("silence", [])
    links = [link["href"] for link in body.get("links", [])]
    commands = silence if isinstance(silence, list) else [silence]
    return Shown(json.dumps(details, indent=1), tuple(links), tuple(commands))


def shown(service: str, body: Any) -> Shown:
    """What ``service`` shows of a request ``body`` it accepted (see ``Shown``)."""
    if service == "pagerduty":
        return _pagerduty_shown(body)
    if service == "slack":
        return _slack_shown(body)
    if service == "telegram":
        return shown_html(body["text"]) if body.get("parse_mode") == "HTML" else shown_plain(body["text"])
    if service == "discord":
        return _discord_shown(body["content"])
    if service == "matrix":
        return shown_plain(body["body"])
    return shown_plain(json.dumps(body) if not isinstance(body, dict) else "\n".join(
        str(v) for v in body.values() if isinstance(v, str)))


@dataclass
class FakeServices:
    """The five services and a custom chat webhook (``/hooks/<name>``) on one loopback port, in a thread;
    ``script[service]`` answers first."""

    port: int = field(default_factory=free_port)
    script: dict[str, deque[Scripted]] = field(default_factory=dict)
    requests: list[ServiceRequest] = field(default_factory=list)
    matrix_events: dict[str, str] = field(default_factory=dict)  # txn id -> event id
    _server: ThreadedApp | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def fail_next(self, service: str, *answers: Scripted) -> None:
        with self._lock:
            self.script.setdefault(service, deque()).extend(answers)

    def of(self, service: str, ok_only: bool = True) -> list[ServiceRequest]:
        with self._lock:
            return [r for r in self.requests if r.service == service and (r.status < 300 or not ok_only)]

    async def _record(self, service: str, request: web.Request, problems: list[str], body: Any) -> Scripted | None:
        with self._lock:
            queued = self.script.get(service)
            scripted = queued.popleft() if queued else None
            status = scripted.status if scripted else (400 if problems else 0)
            self.requests.append(ServiceRequest(service, request.method, request.path, dict(request.headers), body,
                                                tuple(problems), status or 200))
        return scripted

    async def _json(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except ValueError:
            return None

    def _answer(self, scripted: Scripted) -> web.Response:
        return web.json_response(scripted.body, status=scripted.status, headers=scripted.headers) \
            if scripted.body is not None else web.Response(status=scripted.status, headers=scripted.headers)

    async def pagerduty(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        problems = [] if request.content_type == "application/json" else ["Content-Type must be application/json"]
        problems += check_pagerduty(body)
        scripted = await self._record("pagerduty", request, problems, body)
        if scripted:
            return self._answer(scripted)
        if problems:
            return web.json_response({"status": "invalid event", "message": "Event object is invalid",
                                      "errors": problems}, status=400)
        return web.json_response({"status": "success", "message": "Event processed",
                                  "dedup_key": body.get("dedup_key")}, status=202)

    async def slack(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        problems = check_slack(body)
        scripted = await self._record("slack", request, problems, body)
        if scripted:
            return self._answer(scripted)
        if problems:
            return web.Response(status=400, text="invalid_blocks" if "blocks" in problems[0] else problems[0])
        return web.Response(status=200, text="ok")

    async def telegram(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        problems = check_telegram(body)
        if request.match_info["token"] != TELEGRAM_TOKEN:
            problems.append("Unauthorized")
        scripted = await self._record("telegram", request, problems, body)
        if scripted:
            return self._answer(scripted)
        if problems:
            return web.json_response({"ok": False, "error_code": 400, "description": problems[0]}, status=400)
        return web.json_response({"ok": True, "result": {"message_id": len(self.requests), "text": body["text"]}})

    async def discord(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        problems = check_discord(body)
        scripted = await self._record("discord", request, problems, body)
        if scripted:
            return self._answer(scripted)
        if problems:
            return web.json_response({"code": 50035, "message": "Invalid Form Body", "errors": problems}, status=400)
        return web.Response(status=204)

    async def matrix(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        problems = check_matrix(body)
        if request.headers.get("Authorization") != f"Bearer {MATRIX_TOKEN}":
            problems.append("M_MISSING_TOKEN")
        scripted = await self._record("matrix", request, problems, body)
        if scripted:
            return self._answer(scripted)
        if problems:
            status = 401 if "M_MISSING_TOKEN" in problems else 400
            return web.json_response({"errcode": problems[0].split(":")[0], "error": problems[0]}, status=status)
        with self._lock:  # the same transaction id is the same event
            event = self.matrix_events.setdefault(request.match_info["txn"], f"$event{len(self.matrix_events)}")
        return web.json_response({"event_id": event})

    async def custom(self, request: web.Request) -> web.Response:
        """Any JSON chat webhook (a custom chat config's template): a JSON object is all it asks."""
        body = await self._json(request)
        problems = [] if isinstance(body, dict) else ["body must be a JSON object"]
        scripted = await self._record("custom", request, problems, body)
        if scripted:
            return self._answer(scripted)
        return web.json_response({"ok": not problems}, status=400 if problems else 200)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hooks/{name}", self.custom)
        app.router.add_post("/v2/enqueue", self.pagerduty)
        app.router.add_post("/services/{a}/{b}/{c}", self.slack)
        app.router.add_post("/bot{token}/sendMessage", self.telegram)
        app.router.add_post("/api/webhooks/{id}/{token}", self.discord)
        app.router.add_put("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}", self.matrix)
        return app

    def start(self) -> FakeServices:
        self._server = ThreadedApp("fake services", self.port, self._app)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        self._server = None
