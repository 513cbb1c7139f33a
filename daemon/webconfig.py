"""The exporter-toolkit web-config file (``--web.config.file``): TLS, basic auth, headers, rate limit.

The schema is exporter-toolkit's (web/tls_config.go); every value it refuses at start is
refused here with the file, line and field path, and so is every setting Python's ssl module
cannot honour as written (docs/security.md lists them), so a policy never fails open.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from mevwatch.daemon.yamlsource import ConfigError, ConfigIssue, read_yaml
from mevwatch.fields import Duration

__all__ = ["WebConfigFile", "WebSettings", "load_web_config", "web_settings"]

#: Go's crypto/tls CipherSuites() names -> OpenSSL's; TLS 1.3 suites are fixed (as in Go): None
_CIPHERS: dict[str, str | None] = {
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
}
#: Go's net/http refuses HTTP/2 over TLS 1.2 without one of these (http2.ConfigureServer)
_HTTP2_REQUIRED = ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")
_CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
             "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
#: the headers exporter-toolkit lets a web config set, and their allowed values (None: any)
_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
_BCRYPT = re.compile(r"\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}")

ClientAuth = Literal["", "NoClientCert", "RequestClientCert", "RequireAnyClientCert", "RequireClientCert",
                     "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
Curve = Literal["CurveP256", "CurveP384", "CurveP521", "X25519"]


def _bcrypt_hash(v: str) -> str:
    m = _BCRYPT.fullmatch(v)
    if m is None or not 4 <= int(m.group(1)) <= 31:
        raise ValueError("not a bcrypt hash ($2a$/$2b$/$2y$, cost 4-31, 60 characters)")
    return v


BcryptHash = Annotated[str, AfterValidator(_bcrypt_hash)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSServerConfig(_Strict):
    cert: str = ""
    key: str = ""
    client_ca: str = ""
    cert_file: str = ""
    key_file: str = ""
    client_auth_type: ClientAuth = ""
    client_ca_file: str = ""
    cipher_suites: list[str] = Field(default_factory=list)
    curve_preferences: list[Curve] = Field(default_factory=list)
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"
    prefer_server_cipher_suites: bool = True
    client_allowed_sans: list[str] | None = None

    @field_validator("cipher_suites")
    @classmethod
    def _known_ciphers(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in _CIPHERS:
                raise ValueError(f"unknown cipher: {name} (Go's crypto/tls names, e.g. "
                                 "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)")
        return v

    @property
    def enabled(self) -> bool:
        """exporter-toolkit's IsEnabled: any certificate, key, CA or policy set turns TLS on."""
        return any((self.cert, self.key, self.client_ca, self.cert_file, self.key_file, self.client_ca_file,
                    self.client_auth_type))


class HTTPServerConfig(_Strict):
    http2: bool = True
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _known_headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if name not in _HEADERS:
                raise ValueError(f"HTTP header {name!r} can not be configured")
            allowed = _HEADERS[name]
            if allowed is not None and value not in allowed:
                raise ValueError(f"invalid value for {name}: expected one of {list(allowed)}, got {value!r}")
        return v


class RateLimitConfig(_Strict):
    burst: int = Field(0, ge=0)
    interval: Duration = 0.0


class WebConfigFile(_Strict):
    tls_server_config: TLSServerConfig = Field(default_factory=TLSServerConfig)
    http_server_config: HTTPServerConfig = Field(default_factory=HTTPServerConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    basic_auth_users: dict[str, BcryptHash] = Field(default_factory=dict)



@dataclass(frozen=True, slots=True)
class WebSettings:
    """What the HTTP server applies from one web config: the TLS context (None: plain HTTP), the
    client-SAN check, the extra response headers, the users and the rate limit."""

    config: WebConfigFile
    ssl_context: ssl.SSLContext | None
    peer_check: Callable[[ssl.SSLObject], bool] | None
    headers: tuple[tuple[str, str], ...]


def load_web_config(path: str | Path) -> WebConfigFile:
    """Parse and validate the file; ConfigError with file, line and field path of every problem."""
    return web_settings(path).config


def web_settings(path: str | Path) -> WebSettings:
    """Everything the server needs from the file, certificates loaded; ConfigError on any problem."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
        text = raw.decode("utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(file, None, "", f"cannot read web config: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue(file, line, "", "the file is not valid UTF-8")]) from None
    doc = read_yaml(text, file)
    data = {} if doc.data is None else doc.data
    issues = list(doc.issues)
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(file, 1, "", "the top level must be a mapping")])
    try:
        cfg = WebConfigFile.model_validate(data)
    except ValidationError as exc:
        issues.extend(doc.validation_issues(exc))
        raise ConfigError(sorted(issues, key=lambda i: (i.line or 0, i.path))) from None
    if issues:
        raise ConfigError(issues)

    def issue(field: str, message: str) -> ConfigError:
        return ConfigError([doc.issue(("tls_server_config", field) if field else ("tls_server_config",), message)])

    tls = cfg.tls_server_config
    ctx = None
    check = None
    if tls.enabled:
        ctx, check = _tls_context(tls, Path(path).parent, issue)
        if (cfg.http_server_config.http2 and tls.cipher_suites and tls.min_version != "TLS13"
                and not any(c in tls.cipher_suites for c in _HTTP2_REQUIRED)):
            raise issue("cipher_suites", "with http2 on (http_server_config.http2), cipher_suites must include "
                        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 or TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, "
                        "as Go's net/http requires")
    headers = tuple(sorted(cfg.http_server_config.headers.items()))
    return WebSettings(cfg, ctx, check, headers)


def _tls_context(
    tls: TLSServerConfig, base: Path, issue: Callable[[str, str], ConfigError]
) -> tuple[ssl.SSLContext, Callable[[ssl.SSLObject], bool] | None]:
    if not tls.cert and not tls.cert_file:
        raise issue("cert_file", "missing one of cert or cert_file")
    if not tls.key and not tls.key_file:
        raise issue("key_file", "missing one of key or key_file")
    if _VERSIONS[tls.min_version] > _VERSIONS[tls.max_version]:
        raise issue("min_version", f"min_version {tls.min_version} is above max_version {tls.max_version}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.minimum_version = _VERSIONS[tls.min_version]
        ctx.maximum_version = _VERSIONS[tls.max_version]
    except ValueError as exc:
        raise issue("min_version", f"not supported by this OpenSSL: {exc}") from None
    with _pem_files(tls, base) as (cert, key):
        try:
            ctx.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise issue("key_file" if tls.key_file else "key",
                        f"certificate and key do not load as a pair: {exc.reason or exc}") from None
        except OSError as exc:
            field = "cert_file" if not Path(cert).exists() else "key_file"
            raise issue(field, f"cannot read {field} {exc.filename or ''}: {exc.strerror or exc}") from None
    names = [_CIPHERS[c] for c in tls.cipher_suites]
    tls12 = [n for n in names if n is not None]
    if tls.cipher_suites and tls.min_version != "TLS13":
        if not tls12:
            raise issue("cipher_suites", "only TLS 1.3 suites are listed, which cannot be chosen (as in Go): "
                        "list TLS 1.2 suites or set min_version: TLS13")
        try:
            ctx.set_ciphers(":".join(tls12))
        except ssl.SSLError as exc:
            raise issue("cipher_suites", f"not supported by this OpenSSL: {exc.reason or exc}") from None
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.curve_preferences:
        # Python's ssl sets one group: the first preferred curve
        ctx.set_ecdh_curve(_CURVES[tls.curve_preferences[0]])
    has_ca = bool(tls.client_ca or tls.client_ca_file)
    policy = tls.client_auth_type or "NoClientCert"
    if has_ca and policy == "NoClientCert":
        raise issue("client_ca_file", "client CAs are configured without a client_auth_type policy")
    if has_ca:
        try:
            if tls.client_ca_file:
                ctx.load_verify_locations(cafile=str(_resolve(base, tls.client_ca_file)))
            else:
                ctx.load_verify_locations(cadata=tls.client_ca)
        except (OSError, ssl.SSLError) as exc:
            field = "client_ca_file" if tls.client_ca_file else "client_ca"
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            raise issue(field, f"cannot load client CAs: {reason}") from None
    if policy in ("RequireAnyClientCert", "RequireClientCert", "RequireAndVerifyClientCert"):
        if not has_ca:
            raise issue("client_ca_file", f"{policy} needs client_ca_file (or client_ca): mevwatch verifies every "
                        "client certificate it requires against them; it never trusts the system CAs for clients")
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif policy == "VerifyClientCertIfGiven":
        if not has_ca:
            raise issue("client_ca_file", "VerifyClientCertIfGiven needs client_ca_file (or client_ca)")
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:  # NoClientCert, RequestClientCert: every client is let in; no certificate is asked for
        ctx.verify_mode = ssl.CERT_NONE
    check = None
    if tls.client_allowed_sans is not None:
        if ctx.verify_mode == ssl.CERT_NONE:
            raise issue("client_allowed_sans", f"needs a client_auth_type that verifies certificates, not {policy}")
        check = _san_check(frozenset(tls.client_allowed_sans))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx, check


def _san_check(allowed: frozenset[str]) -> Callable[[ssl.SSLObject], bool]:
    """The client's certificate must carry one of ``allowed`` as a SAN (DNS, e-mail, IP or URI), as in
    exporter-toolkit's VerifyPeerCertificate; a client without a certificate is refused."""

    def check(sslobj: ssl.SSLObject) -> bool:
        cert = sslobj.getpeercert()
        if not cert:
            return False
        sans: Any = cert.get("subjectAltName", ())
        return any(entry[1] in allowed for entry in sans)

    return check


def _resolve(base: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else base / p  # relative to the web config file, as exporter-toolkit


@contextlib.contextmanager
def _pem_files(tls: TLSServerConfig, base: Path) -> Iterator[tuple[str, str]]:
    """Paths of the certificate and key; an inline ``cert``/``key`` goes through a 0600 temporary file."""
    made: list[str] = []

    def path_of(inline: str, name: str) -> str:
        if name:
            return str(_resolve(base, name))
        fd, tmp = tempfile.mkstemp(prefix="mevwatch-tls-", suffix=".pem")
        made.append(tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(inline)
        return tmp

    try:
        yield path_of(tls.cert, tls.cert_file), path_of(tls.key, tls.key_file)
    finally:
        for tmp in made:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
