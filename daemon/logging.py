"""Structured logging: JSON lines off a TTY, readable console on one; secrets never logged."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

__all__ = ["configure_logging", "redact", "redact_url"]

# userinfo in URLs, credentials in query strings, and long key-like path segments (Infura/Alchemy keys)
_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@\s:]*)(?::[^/@\s]*)?@")
_QUERY_SECRET_RE = re.compile(
    r"(?P<key>[?&;](?:api[-_]?key|apikey|key|token|access[-_]?token|secret|password|passwd|pwd|auth)=)[^&\s#]*",
    re.IGNORECASE,
)
_PATH_KEY_RE = re.compile(r"(?P<pre>://[^/\s]+(?:/[^/\s?#]*)*?/)(?P<key>[A-Za-z0-9_-]{24,})(?=[/?#\s]|$)")
_KV_SECRET_RE = re.compile(r"(?P<key>\b(?:password|passwd|pwd|secret|token)\s*=\s*)(?P<q>['\"]?)[^\s'\"]+",
                           re.IGNORECASE)


def redact(text: str) -> str:
    """Remove passwords, tokens and API keys from any string (URLs, DSNs, error messages)."""
    text = _USERINFO_RE.sub(lambda m: f"{m.group('scheme')}{m.group('user') and '***'}@", text)
    text = _QUERY_SECRET_RE.sub(lambda m: f"{m.group('key')}***", text)
    text = _PATH_KEY_RE.sub(lambda m: f"{m.group('pre')}***", text)
    return _KV_SECRET_RE.sub(lambda m: f"{m.group('key')}{m.group('q')}***", text)


def redact_url(url: str) -> str:
    """A URL fit for labels and logs: no userinfo, no key-like path segment, no secret query values."""
    return redact(url)


def _redact_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k, v in list(event.items()):
        if isinstance(v, str) and ("://" in v or "=" in v):
            event[k] = redact(v)
    return event


def configure_logging(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
