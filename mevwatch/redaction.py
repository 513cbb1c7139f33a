"""Secrets out of every output: logs, labels, error messages, the state DB, check-config.

Two layers. Patterns catch what looks like a secret anywhere (userinfo, key-like query values,
long key-like path segments, the chat webhooks' token paths). And the URLs of alert sinks are
secrets as a whole: a Slack, Discord or Telegram webhook URL *is* its credential, so only
``scheme://host[:port]`` of a sink URL is ever shown, and each sink URL's path and query are
registered here so that any text quoting them (an HTTP library's error, a receiver's answer) is
scrubbed too.
"""

from __future__ import annotations

import re
import threading
import urllib.parse

__all__ = ["has_registered_secret", "redact", "redact_sink_url", "redact_url", "register_secret", "register_sink_url"]

MASK = "***"

# userinfo in URLs, credentials in query strings, and long key-like path segments (Infura/Alchemy keys)
_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@\s:]*)(?::[^/@\s]*)?@")
_QUERY_SECRET_RE = re.compile(
    r"(?P<key>[?&;](?:api[-_]?key|apikey|key|token|access[-_]?token|secret|password|passwd|pwd|auth)=)[^&\s#]*",
    re.IGNORECASE,
)
_PATH_KEY_RE = re.compile(r"(?P<pre>://[^/\s]+(?:/[^/\s?#]*)*?/)(?P<key>[A-Za-z0-9_-]{24,})(?=[/?#\s]|$)")
_KV_SECRET_RE = re.compile(r"(?P<key>\b(?:password|passwd|pwd|secret|token)\s*=\s*)(?P<q>['\"]?)[^\s'\"]+",
                           re.IGNORECASE)
# The chat services' webhook paths carry the token itself: Telegram /bot<id>:<token>/, Slack
# /services/T../B../<secret>, Discord (and Slack-compatible) /api/webhooks/<id>/<token>.
# Their shapes are specific enough that a file path (/etc/services/...) is left alone.
_WEBHOOK_PATH_RE = re.compile(
    r"(?P<pre>/)(?:bot\d+:[A-Za-z0-9_-]+|services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+|api/webhooks/\d+/[A-Za-z0-9_-]+)"
)

_lock = threading.Lock()
_secrets: dict[str, str] = {}  # secret -> what is shown instead
_secrets_re: re.Pattern[str] | None = None
_MAX_SECRETS = 4096  # a config holds a few dozen sink URLs; this only caps a runaway
_MIN_SECRET = 6  # shorter strings ("/", "/hook") are too common to mean anything alone


def register_secret(text: str, shown: str = MASK) -> None:
    """Show ``shown`` instead of ``text`` in every string :func:`redact` sees from now on."""
    global _secrets_re
    if len(text) < _MIN_SECRET or text in _secrets:
        return
    with _lock:
        if len(_secrets) >= _MAX_SECRETS:
            return
        _secrets[text] = shown
        # longest first: a URL is replaced whole before its own path is
        _secrets_re = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def has_registered_secret(text: str) -> bool:
    pattern = _secrets_re
    return pattern is not None and pattern.search(text) is not None


def redact(text: str) -> str:
    """Remove passwords, tokens, API keys and registered sink URLs from any string."""
    pattern = _secrets_re
    if pattern is not None:
        text = pattern.sub(lambda m: _secrets.get(m.group(0), MASK), text)
    text = _USERINFO_RE.sub(lambda m: f"{m.group('scheme')}{m.group('user') and MASK}@", text)
    text = _QUERY_SECRET_RE.sub(lambda m: f"{m.group('key')}{MASK}", text)
    text = _WEBHOOK_PATH_RE.sub(lambda m: f"{m.group('pre')}{MASK}", text)
    text = _PATH_KEY_RE.sub(lambda m: f"{m.group('pre')}{MASK}", text)
    return _KV_SECRET_RE.sub(lambda m: f"{m.group('key')}{m.group('q')}{MASK}", text)


def redact_url(url: str) -> str:
    """A URL fit for labels and logs: no userinfo, no key-like path segment, no secret query values."""
    return redact(url)


def redact_sink_url(url: str) -> str:
    """A sink URL as it may be shown anywhere: ``scheme://host[:port]``, its path and query masked."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    if ":" in host:
        host = f"[{host}]"
    shown = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        shown += "/" + MASK
    return shown


def register_sink_url(url: str) -> str:
    """Register a sink URL (whole, and its path and query) as a secret; returns it as it may be shown.
    Quoted whole, it reads as that (the host stays visible); its path or query alone reads ``/***``."""
    shown = redact_sink_url(url)
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        # Quoted inside a longer URL (a probe of the same server), a registered URL ending in "/" keeps it
        # ("http://am:9093/-/healthy" read "http://am:9093-/healthy"); one with nothing secret in it is
        # not registered at all.
        register_secret(url, shown + "/" if url.endswith("/") and not shown.endswith("/") else shown)
    tail = url.split(parts.netloc, 1)[1] if parts.netloc else ""
    if tail.strip("/"):
        register_secret(tail, "/" + MASK)  # the path with its query, as an error message may quote it
    if parts.query:
        register_secret(parts.query)
    return shown
