"""HTTP endpoints: /metrics from cached snapshots, landing page, health, readiness, reload.

A scrape never waits on a collector: the exposition is rendered once per store change (per
format) and served from cache, the gzipped copy cached too, so many concurrent scrapers
cost almost nothing. Optional TLS and bcrypt basic auth from an exporter-toolkit web-config.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mevwatch.daemon._httpd import Request, Response, Server
from mevwatch.daemon.exposition import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, render_openmetrics, render_text
from mevwatch.daemon.flags import Setting, settings_html
from mevwatch.daemon.landing import landing_html
from mevwatch.daemon.store import SampleStore, Snapshot, merge_families

__all__ = ["HttpHooks", "HttpServer", "MetricsCache", "WebConfigFile", "load_web_config", "ssl_context"]

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


# --- exporter-toolkit web-config -------------------------------------------------------------


class _TLSServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"


class WebConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tls_server_config: _TLSServerConfig | None = None
    basic_auth_users: dict[str, str] = Field(default_factory=dict)
    http_server_config: dict[str, Any] = Field(default_factory=dict)


def load_web_config(path: Path) -> WebConfigFile:
    """Parse a web-config file; ValueError with the file and field on any problem."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        cfg = WebConfigFile.model_validate(data)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read web config: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: YAML syntax error: {exc}") from None
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {msgs}") from None
    for user, h in cfg.basic_auth_users.items():
        if not h.startswith(("$2a$", "$2b$", "$2y$")):
            raise ValueError(f"{path}: basic_auth_users.{user}: not a bcrypt hash")
    return cfg


def ssl_context(cfg: WebConfigFile) -> ssl.SSLContext | None:
    tls = cfg.tls_server_config
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                           "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}.get(
        tls.min_version, ssl.TLSVersion.TLSv1_2)
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.client_ca_file is not None:
        ctx.load_verify_locations(str(tls.client_ca_file))
        if tls.client_auth_type == "RequireAndVerifyClientCert":
            ctx.verify_mode = ssl.CERT_REQUIRED
        elif tls.client_auth_type in ("VerifyClientCertIfGiven", "RequestClientCert"):
            ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


@dataclass
class _BasicAuth:
    users: dict[str, str]
    _ok: set[str] = field(default_factory=set)  # sha256 of "user:password" that verified

    def check(self, header: str | None) -> bool:
        import base64

        import bcrypt

        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        digest = hashlib.sha256(f"{user}:{password}".encode()).hexdigest()
        if digest in self._ok:
            return True
        hashed = self.users.get(user)
        # verify against a fixed hash for unknown users too, so timing does not reveal names
        ok = bcrypt.checkpw(password.encode(), (hashed or _DUMMY_HASH).encode()) and hashed is not None
        if ok:
            self._ok.add(digest)
        return ok


_DUMMY_HASH = "$2b$10$7a3Ymo0pCW0R5iZy3t2f6OAvlIF1gk.jMFL1BjkHy0LO0bAp1lVXa"


# --- server ------------------------------------------------------------------------------------


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
        web_config: WebConfigFile | None = None,
        *,
        telemetry_path: str = "/metrics",
        header_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        tls_handshake_timeout: float = 10.0,
        max_connections: int = 512,
    ) -> None:
        self.cache = MetricsCache(store)
        self.hooks = hooks
        self.addresses: tuple[str, ...] = (listen,) if isinstance(listen, str) else tuple(listen)
        if not self.addresses:
            raise ValueError("no listen address")
        self.listen = self.addresses[0]
        self.enable_lifecycle = enable_lifecycle
        self.web_config = web_config or WebConfigFile()
        self._auth = _BasicAuth(dict(self.web_config.basic_auth_users)) if self.web_config.basic_auth_users else None
        # one server per listen address (--web.listen-address repeated), all answering the same routes
        self.servers = [
            Server(self.dispatch, header_timeout=header_timeout, idle_timeout=idle_timeout,
                   tls_handshake_timeout=tls_handshake_timeout, max_connections=max_connections)
            for _ in self.addresses
        ]
        self.server = self.servers[0]
        self.telemetry_path = telemetry_path
        self._started = False
        self.scrapes_total = 0
        self._routes: dict[str, dict[str, Callable[[Request], Response | Awaitable[Response]]]] = {
            "/": {"GET": self.landing},
            "/api/v1/alerts": {"GET": self.api_alerts},
            "/api/v1/rules": {"GET": self.api_rules},
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

    def dispatch(self, request: Request) -> Response | Awaitable[Response]:
        if self._auth is not None and not self._auth.check(request.headers.get("authorization")):
            return Response.text(401, "Unauthorized\n", ("WWW-Authenticate", 'Basic realm="mevwatch"'))
        methods = self._routes.get(request.path)
        if methods is None:
            return Response.text(404, "404: Not Found\n")
        handler = methods.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            allow = sorted({*methods, "HEAD"} if "GET" in methods else methods)
            return Response.text(405, "405: Method Not Allowed\n", ("Allow", ", ".join(allow)))
        return handler(request)

    async def start(self) -> None:
        tls = ssl_context(self.web_config)
        try:
            for address, server in zip(self.addresses, self.servers, strict=True):
                host, _, port = address.rpartition(":")
                await server.start(host.strip("[]") or "127.0.0.1", int(port), tls)
                self._started = True
        except OSError:
            await self.stop()
            raise
        log.info("http_listening", address=", ".join(self.addresses),
                 tls=self.web_config.tls_server_config is not None, basic_auth=self._auth is not None)

    async def stop(self) -> None:
        if self._started:
            self._started = False
            for server in self.servers:
                await server.stop()

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
        page = landing_html(self.hooks.status(), self._alerts_view(), links,
                            settings_html(self.hooks.settings()) if self.hooks.settings else "")
        return Response(200, page.encode(), "text/html; charset=utf-8")

    def _alerts_view(self) -> dict[str, Any] | None:
        return self.hooks.alerts() if self.hooks.alerts is not None else None

    def _api(self, key: str) -> Response:
        view = self._alerts_view()
        body: dict[str, Any] = {"status": "success", "data": {key: view[key] if view is not None else []}}
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
