"""HTTP endpoints: /metrics from cached snapshots, landing page, health, readiness, reload.

A scrape never waits on a collector: the exposition is rendered once per store change (per
format) and served from cache, the gzipped copy cached too, so many concurrent scrapers
cost almost nothing. Optional TLS, bcrypt basic auth, headers and a rate limit from an
exporter-toolkit web-config (mevwatch.daemon.webconfig), re-read on every reload.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import html
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import structlog

from mevwatch.daemon._httpd import Request, Response, Server
from mevwatch.daemon.exposition import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, render_openmetrics, render_text
from mevwatch.daemon.flags import Setting, settings_html
from mevwatch.daemon.landing import landing_html
from mevwatch.daemon.store import SampleStore, Snapshot, merge_families
from mevwatch.daemon.webconfig import WebConfigFile, WebSettings, web_settings
from mevwatch.daemon.yamlsource import ConfigError
from mevwatch.families import Metric, MetricSpec
from mevwatch.runbookdoc import RUNBOOKS_PATH, runbooks_html

__all__ = ["HTTP_METRICS", "BasicAuth", "HttpHooks", "HttpServer", "MetricsCache", "WebConfigFile"]

log = structlog.get_logger("mevwatch.http")


class MetricsCache:
    """The one render cache: each kind's text by the sequence numbers of its snapshots, and the body
    (per format, plain and gzipped) by the store's sequence number and its set of fresh snapshots.

    A scrape after one collector's run renders that collector's kind only; a scrape with no change
    since the last one renders nothing. Reading the store writes nothing to it.
    """

    def __init__(self, store: SampleStore) -> None:
        self.store = store
        self._key: tuple[int, frozenset[tuple[str, str]]] | None = None
        self._bodies: dict[tuple[bool, bool], bytes] = {}
        # (kind, openmetrics) -> (seq of the snapshots rendered, text)
        self._parts: dict[tuple[str, bool], tuple[tuple[int, ...], bytes]] = {}
        self.renders = 0  # kinds rendered (for tests and benchmarks)

    def get(self, openmetrics: bool, gzipped: bool) -> bytes:
        key = (self.store.seq, frozenset(k for k, _ in self.store.fresh_items()))
        if key != self._key:
            self._key = key
            self._bodies = {}
        fmt = (openmetrics, gzipped)
        body = self._bodies.get(fmt)
        if body is None:
            plain = self._bodies.get((openmetrics, False))
            if plain is None:
                plain = self._render(self.store.fresh_by_kind(), openmetrics)
                self._bodies[(openmetrics, False)] = plain
            body = gzip.compress(plain, compresslevel=5) if gzipped else plain
            self._bodies[fmt] = body
        return body

    def _render(self, groups: dict[str, list[tuple[tuple[str, str], Snapshot]]], openmetrics: bool) -> bytes:
        parts: list[bytes] = []
        for kind, items in groups.items():
            ident = tuple(snap.seq for _, snap in items)
            cached = self._parts.get((kind, openmetrics))
            if cached is None or cached[0] != ident:
                # one instance (the usual case): its families as they are, no merged copy
                families = items[0][1].families if len(items) == 1 else merge_families(snap for _, snap in items)
                text = render_openmetrics(families) if openmetrics else render_text(families)
                cached = (ident, text)
                self._parts[(kind, openmetrics)] = cached
                self.renders += 1
            parts.append(cached[1])
        for gone in [k for k in self._parts if k[0] not in groups]:
            del self._parts[gone]
        if openmetrics:
            parts.append(b"# EOF\n")
        return b"".join(parts)


# --- basic auth ---------------------------------------------------------------------------------

#: a bcrypt hash of a random password: unknown users cost a bcrypt check too, so timing does not reveal names
_DUMMY_HASH = "$2b$10$7a3Ymo0pCW0R5iZy3t2f6OAvlIF1gk.jMFL1BjkHy0LO0bAp1lVXa"
_BCRYPT_MAX = 72  # bytes bcrypt reads of a password; a longer one is refused (as Go's bcrypt does)
AUTH_CACHE_SIZE = 100  # successes kept (exporter-toolkit's cache size)
AUTH_FAILURE_TTL = 10.0  # seconds a failed user/password pair is answered 401 without bcrypt
AUTH_FAILURES_KEPT = 1000


class BasicAuth:
    """bcrypt basic auth that never runs bcrypt on the event loop.

    Checked in this order: a cached success (so a valid scrape never waits behind a flood of
    wrong passwords), a recent failure (answered at once for AUTH_FAILURE_TTL), then bcrypt in
    one worker thread at a time (exporter-toolkit holds a mutex around it for the same reason).
    Cache keys are sha256 digests of user, hash and password: no password is kept in memory.
    """

    def __init__(self, users: dict[str, str], pool: ThreadPoolExecutor) -> None:
        self.users = users
        self.pool = pool
        self._ok: dict[bytes, None] = {}
        self._failed: dict[bytes, float] = {}
        self.bcrypt_runs = 0

    def _parse(self, header: str | None) -> tuple[str, bytes] | None:
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, sep, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return (user, password.encode()) if sep else None

    def _key(self, user: str, password: bytes) -> bytes:
        hashed = self.users.get(user, _DUMMY_HASH)
        return hashlib.sha256(b"\0".join((user.encode(), hashed.encode(), password))).digest()

    def quick(self, header: str | None) -> bool | None:
        """True or False when known without bcrypt; None when bcrypt must decide."""
        creds = self._parse(header)
        if creds is None:
            return False
        user, password = creds
        if len(password) > _BCRYPT_MAX:
            return False
        key = self._key(user, password)
        if key in self._ok:
            return True
        expiry = self._failed.get(key)
        if expiry is not None:
            if expiry > time.monotonic():
                return False
            del self._failed[key]
        return None

    async def check(self, header: str | None) -> bool:
        verdict = self.quick(header)
        if verdict is not None:
            return verdict
        creds = self._parse(header)
        assert creds is not None
        user, password = creds
        hashed = self.users.get(user)
        self.bcrypt_runs += 1
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(
            self.pool, bcrypt.checkpw, password, (hashed or _DUMMY_HASH).encode()) and hashed is not None
        key = self._key(user, password)
        if ok:
            if len(self._ok) >= AUTH_CACHE_SIZE:
                del self._ok[next(iter(self._ok))]
            self._ok[key] = None
        else:
            if len(self._failed) >= AUTH_FAILURES_KEPT:
                del self._failed[next(iter(self._failed))]
            self._failed[key] = time.monotonic() + AUTH_FAILURE_TTL
        return ok


class RateLimiter:
    """exporter-toolkit's ``rate_limit``: a token bucket of ``burst`` requests refilled one per ``interval``."""

    def __init__(self, burst: int, interval: float) -> None:
        self.burst = burst
        self.interval = interval
        self.tokens = float(burst)
        self.at = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) / self.interval)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

# --- server ------------------------------------------------------------------------------------

#: the HTTP server's self-metrics (docs/metrics.md)
WEB_CONFIG_LAST_RELOAD_SUCCESSFUL = MetricSpec(
    "mevwatch_web_config_last_reload_successful", "gauge",
    "1 if the web config file (TLS, basic auth) last loaded, 0 if the server runs an older one")
WEB_CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS = MetricSpec(
    "mevwatch_web_config_last_reload_success_timestamp_seconds", "gauge", "Unix time the web config file last loaded")
HTTP_METRICS: tuple[MetricSpec, ...] = (
    WEB_CONFIG_LAST_RELOAD_SUCCESSFUL, WEB_CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS)

Handler = Callable[[Request], Response | Awaitable[Response]]


@dataclass
class HttpHooks:
    """What the server asks the daemon: status for the landing page and health, and reload."""

    status: Callable[[], list[dict[str, Any]]]
    ready: Callable[[], bool]
    reload: Callable[[], Awaitable[tuple[bool, str]]]
    settings: Callable[[], Sequence[Setting]] | None = None  # running settings and their sources (landing page)
    alerting: Callable[[], dict[str, Any]] | None = None  # the alerting mode and host, for / and /health
    #: the alert engine's verdicts (alerts, rules, silences, verdict; see alerts/api.py), None without one
    alerts: Callable[[], dict[str, Any] | None] | None = None


class HttpServer:
    """The daemon's endpoints on the small asyncio HTTP/1.1 server in mevwatch.daemon._httpd."""

    def __init__(
        self,
        store: SampleStore,
        hooks: HttpHooks,
        listen: str | Sequence[str],
        enable_lifecycle: bool = False,
        web_config: WebConfigFile | WebSettings | None = None,
        *,
        web_config_file: str | Path | None = None,
        telemetry_path: str = "/metrics",
        header_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        tls_handshake_timeout: float = 10.0,
        max_connections: int = 512,
        max_incomplete_per_source: int = 64,
    ) -> None:
        self.cache = MetricsCache(store)
        self.hooks = hooks
        self.addresses: tuple[str, ...] = (listen,) if isinstance(listen, str) else tuple(listen)
        if not self.addresses:
            raise ValueError("no listen address")
        self.listen = self.addresses[0]
        self.enable_lifecycle = enable_lifecycle
        self.web_config_file = Path(web_config_file) if web_config_file else None
        # one server per listen address (--web.listen-address repeated), all answering the same routes
        self.servers = [
            Server(self.dispatch, header_timeout=header_timeout, idle_timeout=idle_timeout,
                   tls_handshake_timeout=tls_handshake_timeout, max_connections=max_connections,
                   max_incomplete_per_source=max_incomplete_per_source)
            for _ in self.addresses
        ]
        self.server = self.servers[0]
        self.telemetry_path = telemetry_path
        self._bcrypt_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mevwatch-bcrypt")
        self._auth: BasicAuth | None = None
        self._limiter: RateLimiter | None = None
        self.web_config = WebConfigFile()
        self.web_reload_ok = True
        self.web_reload_wall = time.time()
        self._web_error = ""  # the last rejection logged, so a failing streak logs once
        if isinstance(web_config, WebConfigFile):
            web_config = _settings_of(web_config)
        if web_config is None and self.web_config_file is not None:
            web_config = web_settings(self.web_config_file)  # ConfigError: the caller exits 2
        if web_config is not None:
            self._apply(web_config)
        self._started = False
        self.scrapes_total = 0
        # path -> method -> handler; HEAD is served by the GET handler
        self._routes: dict[str, dict[str, Handler]] = {
            "/": {"GET": self.landing},
            "/api/v1/alerts": {"GET": self.api_alerts},
            "/api/v1/rules": {"GET": self.api_rules},
            RUNBOOKS_PATH: {"GET": self.runbooks},
            "/health": {"GET": self.health},
            "/-/healthy": {"GET": self.healthy},
            "/-/ready": {"GET": self.ready},
            "/-/reload": {"POST": self.reload, "PUT": self.reload},
        }
        if telemetry_path in self._routes:
            raise ValueError(f"telemetry path {telemetry_path} is taken by another endpoint")
        self._routes[telemetry_path] = {"GET": self.metrics}

    @property
    def port(self) -> int:
        """The bound port (useful with a listen address ending in ``:0``)."""
        return self.server.port

    # --- web config -----------------------------------------------------------------------------

    def _apply(self, settings: WebSettings) -> None:
        cfg = settings.config
        users = dict(cfg.basic_auth_users)
        if not users:
            self._auth = None
        elif self._auth is None or self._auth.users != users:
            self._auth = BasicAuth(users, self._bcrypt_pool)  # new users: no cached verdict carries over
        rl = cfg.rate_limit
        self._limiter = RateLimiter(rl.burst, rl.interval) if rl.interval > 0 else None
        for server in self.servers:
            server.ssl_context = settings.ssl_context
            server.peer_check = settings.peer_check
            server.extra_headers = settings.headers
        self.web_config = cfg

    def reload_web_config(self) -> tuple[bool, str]:
        """Read the web config file again; a bad file keeps the running settings (logged once per streak)."""
        if self.web_config_file is None:
            return True, "no web config file"
        try:
            settings = web_settings(self.web_config_file)
        except ConfigError as exc:
            self.web_reload_ok = False
            text = str(exc)
            if text != self._web_error:
                self._web_error = text
                for issue in exc.issues:
                    log.error("web_config_reload_rejected", error=str(issue))
            return False, "web config rejected, running web config kept:\n" + text
        self._apply(settings)
        self.web_reload_ok = True
        self.web_reload_wall = time.time()
        self._web_error = ""
        log.info("web_config_reloaded", tls=settings.ssl_context is not None, basic_auth=self._auth is not None)
        return True, "web config reloaded"

    def meta_families(self) -> list[Metric]:
        return [WEB_CONFIG_LAST_RELOAD_SUCCESSFUL.gauge(1.0 if self.web_reload_ok else 0.0),
                WEB_CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS.gauge(self.web_reload_wall)]

    # --- dispatch -------------------------------------------------------------------------------

    def dispatch(self, request: Request) -> Response | Awaitable[Response]:
        if self._limiter is not None and not self._limiter.allow():
            return Response.text(429, "Too Many Requests\n")
        auth = self._auth
        if auth is not None:
            verdict = auth.quick(request.headers.get("authorization"))
            if verdict is None:
                return self._after_bcrypt(auth, request)
            if not verdict:
                return _UNAUTHORIZED
        return self.route(request)

    async def _after_bcrypt(self, auth: BasicAuth, request: Request) -> Response:
        if not await auth.check(request.headers.get("authorization")):
            return _UNAUTHORIZED
        result = self.route(request)
        return result if isinstance(result, Response) else await result

    def route(self, request: Request) -> Response | Awaitable[Response]:
        methods = self._routes.get(request.path)
        if methods is None:
            return Response.text(404, "404: Not Found\n")
        handler = methods.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            allow = sorted({*methods, "HEAD"} if "GET" in methods else methods)
            return Response.text(405, "405: Method Not Allowed\n", ("Allow", ", ".join(allow)))
        return handler(request)

    async def start(self) -> None:
        try:
            for address, server in zip(self.addresses, self.servers, strict=True):
                host, _, port = address.rpartition(":")
                await server.start(host.strip("[]") or "127.0.0.1", int(port), server.ssl_context)
                self._started = True
        except OSError:
            await self.stop()
            raise
        log.info("http_listening", address=", ".join(self.addresses), tls=self.server.ssl_context is not None,
                 basic_auth=self._auth is not None)

    async def stop(self) -> None:
        if self._started:
            self._started = False
            for server in self.servers:
                await server.stop()
        self._bcrypt_pool.shutdown(wait=False, cancel_futures=True)

    def metrics(self, request: Request) -> Response:
        self.scrapes_total += 1
        openmetrics = "application/openmetrics-text" in request.headers.get("accept", "")
        gzipped = "gzip" in request.headers.get("accept-encoding", "")
        body = self.cache.get(openmetrics, gzipped)
        ctype = CONTENT_TYPE_OPENMETRICS if openmetrics else CONTENT_TYPE_TEXT
        return Response(200, body, ctype, _GZIP if gzipped else ())

    def landing(self, _: Request) -> Response:
        alerting = self.hooks.alerting() if self.hooks.alerting is not None else None
        links = (f'<a href="{html.escape(self.telemetry_path)}">Metrics</a> · <a href="/health">Health</a> · '
                 '<a href="/api/v1/alerts">Alerts (JSON)</a> · <a href="/api/v1/rules">Rules (JSON)</a>')
        if alerting:
            links += (f"<br>Alerting: {html.escape(alerting['mode'])} mode on host "
                      f"{html.escape(alerting['host'])}")
        links += f' · <a href="{RUNBOOKS_PATH}">Runbooks</a>'
        page = landing_html(self.hooks.status(), self._alerts_view(), links,
                            settings_html(self.hooks.settings()) if self.hooks.settings else "",
                            own_url=alerting["external_url"] if alerting else "")
        return Response(200, page.encode(), "text/html; charset=utf-8")

    def runbooks(self, _: Request) -> Response:
        """The runbooks every alert's runbook_url points to by default (docs/runbooks.md as shipped)."""
        return Response(200, runbooks_html().encode(), "text/html; charset=utf-8")

    def _alerts_view(self) -> dict[str, Any] | None:
        return self.hooks.alerts() if self.hooks.alerts is not None else None

    def _api(self, key: str) -> Response:
        view = self._alerts_view()
        body: dict[str, Any] = {"status": "success", "data": {key: view[key] if view is not None else []}}
        if key == "alerts" and view is not None and view["silence_source"] is not None:
            # whether the alerts' silence states could be told, and from which read of Alertmanager
            body["data"]["alertmanagerSilences"] = view["silence_source"]
        if view is None:
            body["warnings"] = ["the alert engine does not run (alerts.enabled: false)"]
        return Response(200, json.dumps(body, indent=1).encode(), "application/json; charset=utf-8")

    def api_alerts(self, _: Request) -> Response:
        """Pending and firing alerts, Prometheus' /api/v1/alerts envelope with Alertmanager's alert fields."""
        return self._api("alerts")

    def api_rules(self, _: Request) -> Response:
        """Every rule with its state and last values (what `mevwatch diagnose` shows from a running daemon)."""
        return self._api("rules")

    def health(self, _: Request) -> Response:
        collectors = self.hooks.status()
        body: dict[str, Any] = {
            "status": "ok" if all(c["success"] is not False for c in collectors) else "degraded",
            "ready": self.hooks.ready(),
            "time": time.time(),
            "collectors": collectors,
        }
        if self.hooks.alerting is not None:
            body["alerting"] = self.hooks.alerting()
        return Response(200, json.dumps(body, indent=1).encode(), "application/json; charset=utf-8")

    def healthy(self, _: Request) -> Response:
        return Response.text(200, "mevwatch is Healthy.\n")

    def ready(self, _: Request) -> Response:
        if self.hooks.ready():
            return Response.text(200, "mevwatch is Ready.\n")
        return Response.text(503, "mevwatch is not ready: first collection round not done.\n")

    async def reload(self, _: Request) -> Response:
        if not self.enable_lifecycle:
            return Response.text(403, "Lifecycle API is not enabled (--web.enable-lifecycle).\n")
        ok, message = await self.hooks.reload()
        return Response.text(200 if ok else 500, message + "\n")


_GZIP = (("Content-Encoding", "gzip"),)
_UNAUTHORIZED = Response.text(401, "Unauthorized\n", ("WWW-Authenticate", 'Basic realm="mevwatch"'))


def _settings_of(cfg: WebConfigFile) -> WebSettings:
    """Settings from an already validated model (tests; no TLS files are read)."""
    if cfg.tls_server_config.enabled:
        raise ValueError("a web config with TLS is loaded from its file: web_settings(path)")
    return WebSettings(cfg, None, None, tuple(sorted(cfg.http_server_config.headers.items())))
