"""The exporter-toolkit web config: every file it refuses is refused with file, line and field; TLS
client-certificate policies over real TLS connections; re-reading the file on reload."""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import structlog

from mevwatch.aio import wait_for
from mevwatch.daemon.http import HttpHooks, HttpServer
from mevwatch.daemon.store import SampleStore
from mevwatch.daemon.webconfig import web_settings
from mevwatch.daemon.yamlsource import ConfigError
from tests.support.peers import free_port, need_binary

WAIT = 5.0


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # signed by the CA, SAN DNS:prom.example
    client_key: Path
    other_cert: Path  # signed by the CA, SAN DNS:other.example
    other_key: Path
    rogue_cert: Path  # self-signed, SAN DNS:prom.example
    rogue_key: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and client certificates (openssl, P-256 keys)."""
    openssl = need_binary("openssl")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60, cwd=d)

    def key(name: str) -> None:
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key")

    key("ca")
    run("req", "-x509", "-key", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA")
    for name, san in (("server", "IP:127.0.0.1"), ("client", "DNS:prom.example"), ("other", "DNS:other.example")):
        key(name)
        run("req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    key("rogue")
    run("req", "-x509", "-key", "rogue.key", "-out", "rogue.pem", "-days", "2", "-subj", "/CN=rogue",
        "-addext", "subjectAltName=DNS:prom.example")
    return Pki(d, d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key",
               d / "other.pem", d / "other.key", d / "rogue.pem", d / "rogue.key")


def write(tmp_path: Path, text: str, name: str = "web.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def tls_head(pki: Pki, **fields: str) -> str:
    extra = "".join(f"  {k}: {v}\n" for k, v in fields.items())
    return f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n{extra}"


# --- files exporter-toolkit refuses at start (its web/testdata/*.bad.yml and the fail-open cases) --------

BAD_FILES: list[tuple[str, str, int, str, str]] = [
    # id, file body (after the certificate lines when it starts with "+"), line, field path, message part;
    # a field that is missing is reported at the line of the section it belongs in
    ("client CA without policy", "+  client_ca_file: {ca}\n", 4, "tls_server_config.client_ca_file",
     "without a client_auth_type"),
    ("client CA file missing", "+  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: nofile\n", 5,
     "tls_server_config.client_ca_file", "cannot load client CAs"),
    ("verify without a CA", "+  client_auth_type: RequireAndVerifyClientCert\n", 2,
     "tls_server_config.client_ca_file", "needs client_ca_file"),
    ("any cert without a CA", "+  client_auth_type: RequireAnyClientCert\n", 2,
     "tls_server_config.client_ca_file", "needs client_ca_file"),
    ("policy typo", "+  client_auth_type: RequireAndVerifyClientCrt\n", 4, "tls_server_config.client_auth_type",
     "Input should be"),
    ("invalid min_version", "+  min_version: TLS111\n", 4, "tls_server_config.min_version", "Input should be"),
    ("min above max", "+  min_version: TLS13\n  max_version: TLS12\n", 4, "tls_server_config.min_version",
     "above max_version"),
    ("invented cipher", "+  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA2048]\n", 4,
     "tls_server_config.cipher_suites", "unknown cipher"),
    ("invented curve", "+  curve_preferences: [CurveP257]\n", 4, "tls_server_config.curve_preferences[0]",
     "Input should be"),
    ("no HTTP/2 cipher with http2 on", "+  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n"
     "  max_version: TLS12\n", 4, "tls_server_config.cipher_suites", "http2"),
    ("cert path empty", "tls_server_config:\n  cert_file: ''\n  key_file: {key}\n", 2,
     "tls_server_config.cert_file", "missing one of cert or cert_file"),
    ("key path empty", "tls_server_config:\n  cert_file: {cert}\n  key_file: ''\n", 3,
     "tls_server_config.key_file", "missing one of key or key_file"),
    ("policy but no cert", "tls_server_config:\n  client_auth_type: x\n", 2, "tls_server_config.client_auth_type",
     "Input should be"),
    ("cert file missing", "tls_server_config:\n  cert_file: nofile\n  key_file: {key}\n", 2,
     "tls_server_config.cert_file", "cannot read"),
    ("key of another cert", "tls_server_config:\n  cert_file: {cert}\n  key_file: {other_key}\n", 3,
     "tls_server_config.key_file", "do not load as a pair"),
    ("SANs without verification", "+  client_allowed_sans: [prom.example]\n", 4,
     "tls_server_config.client_allowed_sans", "verifies certificates"),
    ("plain-text password", "basic_auth_users:\n  john: doe\n", 2, "basic_auth_users.john", "not a bcrypt hash"),
    ("unknown header", "http_server_config:\n  headers:\n    Content-Type: foo\n", 3,
     "http_server_config.headers", "can not be configured"),
    ("bad X-Frame-Options", "http_server_config:\n  headers:\n    X-Frame-Options: foo\n", 3,
     "http_server_config.headers", "expected one of"),
    ("bad X-Content-Type-Options", "http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n", 3,
     "http_server_config.headers", "expected one of"),
    ("unknown key", "tls_server_config:\n  cert_fil: x\n", 2, "tls_server_config.cert_fil", "unknown key"),
    ("junk", "this is not yaml: [\n", 2, "", "YAML syntax error"),
    ("rate limit interval", "rate_limit:\n  burst: 5\n  interval: 1x\n", 3, "rate_limit.interval", "invalid duration"),
]


@pytest.mark.parametrize(("body", "line", "path", "message"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_each_file_exporter_toolkit_refuses_is_an_error_with_line_and_field(
    tmp_path: Path, pki: Pki, body: str, line: int, path: str, message: str
) -> None:
    text = body.format(ca=pki.ca, key=pki.server_key, cert=pki.server_cert, other_key=pki.other_key)
    if text.startswith("+"):
        text = tls_head(pki) + text[1:]  # three lines: tls_server_config, cert_file, key_file
    file = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        web_settings(file)
    [issue] = exc.value.issues
    assert (issue.file, issue.path) == (str(file), path)
    assert issue.line == line, str(issue)
    assert message in issue.message


def test_a_bad_web_config_is_exit_2_with_file_line_and_field(tmp_path: Path, pki: Pki) -> None:
    import sys

    file = write(tmp_path, tls_head(pki, client_auth_type="RequireAndVerifyClientCert"))
    proc = subprocess.run([sys.executable, "-m", "mevwatch", "run", "--web.listen-address", f"127.0.0.1:{free_port()}",
                           "--web.config.file", str(file)], capture_output=True, text=True, timeout=60,
                          env={"STATE_DIRECTORY": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    assert f"{file}:2: tls_server_config.client_ca_file: RequireAndVerifyClientCert needs client_ca_file" \
        in proc.stderr


def test_every_good_setting_loads(tmp_path: Path, pki: Pki) -> None:
    file = write(tmp_path, tls_head(
        pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki.ca),
        cipher_suites="[TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]",
        curve_preferences="[X25519, CurveP256]", min_version="TLS12", max_version="TLS13",
        prefer_server_cipher_suites="false", client_allowed_sans="[prom.example]",
    ) + "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n"
        "    Strict-Transport-Security: max-age=31536000\n"
        "rate_limit:\n  burst: 10\n  interval: 100ms\n"
        f"basic_auth_users:\n  prom: '{bcrypt.hashpw(b'pw', bcrypt.gensalt(4)).decode()}'\n")
    settings = web_settings(file)
    assert settings.ssl_context is not None
    assert settings.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert settings.peer_check is not None
    assert settings.headers == (("Strict-Transport-Security", "max-age=31536000"), ("X-Frame-Options", "deny"))
    assert settings.config.rate_limit.interval == 0.1


# --- TLS client certificates over real connections -------------------------------------------------


def hooks() -> HttpHooks:
    async def reload() -> tuple[bool, str]:
        return True, "reloaded"

    return HttpHooks(status=list, ready=lambda: True, reload=reload)


Start = Callable[..., Awaitable[HttpServer]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[HttpServer] = []

    async def _start(file: Path, **kw: Any) -> HttpServer:
        srv = HttpServer(SampleStore(), hooks(), "127.0.0.1:0", web_config_file=file, **kw)
        await srv.start()
        servers.append(srv)
        return srv

    yield _start
    for srv in servers:
        await srv.stop()


async def fetch(port: int, ctx: ssl.SSLContext | None, path: str = "/-/healthy", *headers: str) -> int | None:
    """The status of one GET, or None when the server refused the client (TLS alert, reset, or closed)."""
    try:
        reader, writer = await wait_for(asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1" if ctx else None), WAIT)
    except (ssl.SSLError, ConnectionError):
        return None
    try:
        extra = "".join(f"{h}\r\n" for h in headers)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
        line = await wait_for(reader.readline(), WAIT)
        return int(line.split()[1]) if line else None
    except (ssl.SSLError, ConnectionError):
        return None
    finally:
        writer.close()


def client_ctx(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


# policy -> (no certificate, CA-signed certificate, self-signed certificate) admitted?
POLICIES = {
    "NoClientCert": (True, True, True),
    "RequestClientCert": (True, True, True),
    "VerifyClientCertIfGiven": (True, True, False),
    "RequireAnyClientCert": (False, True, False),
    "RequireClientCert": (False, True, False),
    "RequireAndVerifyClientCert": (False, True, False),
}


@pytest.mark.parametrize("policy", list(POLICIES))
async def test_client_certificate_policies_admit_and_refuse_as_configured(
    start: Start, tmp_path: Path, pki: Pki, policy: str
) -> None:
    ca = {} if policy in ("NoClientCert", "RequestClientCert") else {"client_ca_file": str(pki.ca)}
    srv = await start(write(tmp_path, tls_head(pki, client_auth_type=policy, **ca)))
    none, signed, rogue = POLICIES[policy]
    assert (await fetch(srv.port, client_ctx(pki)) == 200) is none
    assert (await fetch(srv.port, client_ctx(pki, pki.client_cert, pki.client_key)) == 200) is signed
    assert (await fetch(srv.port, client_ctx(pki, pki.rogue_cert, pki.rogue_key)) == 200) is rogue
    assert await fetch(srv.port, None) is None  # plain HTTP on the TLS port


async def test_client_allowed_sans_refuses_a_valid_certificate_without_them(
    start: Start, tmp_path: Path, pki: Pki
) -> None:
    srv = await start(write(tmp_path, tls_head(pki, client_auth_type="RequireAndVerifyClientCert",
                                               client_ca_file=str(pki.ca), client_allowed_sans="[prom.example]")))
    assert await fetch(srv.port, client_ctx(pki, pki.client_cert, pki.client_key)) == 200
    assert await fetch(srv.port, client_ctx(pki, pki.other_cert, pki.other_key)) is None
    assert await fetch(srv.port, client_ctx(pki)) is None


async def test_min_version_and_headers_apply(start: Start, tmp_path: Path, pki: Pki) -> None:
    srv = await start(write(tmp_path, tls_head(pki, min_version="TLS13")
                            + "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"))
    old = client_ctx(pki)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await fetch(srv.port, old) is None
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, ssl=client_ctx(pki))
    writer.write(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert b" 404 " in head
    assert b"\r\nX-Content-Type-Options: nosniff\r\n" in head
    writer.close()


# --- re-read on reload -------------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def users(**passwords: str) -> str:
    return "basic_auth_users:\n" + "".join(
        f"  {u}: '{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}'\n" for u, p in passwords.items())


async def test_reload_applies_new_passwords_and_a_bad_file_keeps_the_old_one(start: Start, tmp_path: Path) -> None:
    file = write(tmp_path, users(prom="old"))
    srv = await start(file)
    port = srv.port
    assert await fetch(port, None, "/-/healthy", basic("prom", "old")) == 200
    file.write_text(users(prom="new"))
    assert srv.reload_web_config() == (True, "web config reloaded")
    assert await fetch(port, None, "/-/healthy", basic("prom", "old")) == 401  # revoked at once
    assert await fetch(port, None, "/-/healthy", basic("prom", "new")) == 200
    file.write_text("basic_auth_users:\n  prom: plaintext\n")
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            ok, message = srv.reload_web_config()
            assert not ok
            assert "basic_auth_users.prom: not a bcrypt hash" in message
    assert [e["event"] for e in logs] == ["web_config_reload_rejected"]  # once for the failing streak
    assert await fetch(port, None, "/-/healthy", basic("prom", "new")) == 200  # the running config stays
    [ok_family, _] = srv.meta_families()
    assert ok_family.samples[0].value == 0.0
    file.write_text("{}\n")  # basic auth off
    assert srv.reload_web_config()[0]
    assert srv.meta_families()[0].samples[0].value == 1.0
    assert await fetch(port, None) == 200
