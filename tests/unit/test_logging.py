"""Secrets never reach logs: URLs with keys, userinfo, DSN passwords, key=value pairs."""

from __future__ import annotations

import json

import pytest
import structlog

from mevwatch.daemon.logging import configure_logging, redact, redact_url


@pytest.mark.parametrize(
    ("raw", "secret"),
    [
        ("https://mainnet.infura.io/v3/9aa3d95b3bc440fa88ea12eaa4456161", "9aa3d95b3bc440fa88ea12eaa4456161"),
        ("https://eth-mainnet.g.alchemy.com/v2/AbCdEfGhIjKlMnOpQrStUvWxYz012345", "AbCdEfGhIjKlMnOpQrStUvWxYz012345"),
        ("http://user:hunter2@10.0.0.5:8545/", "hunter2"),
        ("wss://node.example/ws?apikey=topsecret&x=1", "topsecret"),
        ("postgresql://mev:pgpass123@127.0.0.1:5432/mev", "pgpass123"),
        ("connect failed: password=s3cr3t host=db", "s3cr3t"),
        ("https://rpc.example/?token=abc.def.ghi", "abc.def.ghi"),
    ],
)
def test_redact_removes_the_secret(raw: str, secret: str) -> None:
    out = redact(raw)
    assert secret not in out
    assert "***" in out


def test_redact_keeps_what_identifies_the_endpoint() -> None:
    assert redact_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    assert redact_url("http://user:pw@10.0.0.5:8545/").startswith("http://***@10.0.0.5:8545")
    assert "mainnet.infura.io" in redact_url("https://mainnet.infura.io/v3/9aa3d95b3bc440fa88ea12eaa4456161")


def test_json_log_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")  # binds the captured stderr: restore the defaults after
    try:
        structlog.get_logger("t").warning("rpc_failed", url="http://u:hunter2@node:8545", error="x")
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        structlog.reset_defaults()
    event = json.loads(line)
    assert event["event"] == "rpc_failed"
    assert "hunter2" not in line
    assert event["level"] == "warning"
