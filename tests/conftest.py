"""Shared fixtures: a fresh state DB per test, a self-signed certificate for TLS tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mevwatch.daemon.state import StateDB
from tests.support.peers import need_binary

pytest.register_assert_rewrite("tests.support.screens")


@pytest.fixture
def state_db(tmp_path: Path) -> Iterator[StateDB]:
    db = StateDB.open_dir(tmp_path / "state")
    yield db
    db.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A key and a self-signed certificate for 127.0.0.1 (openssl)."""
    openssl = need_binary("openssl")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return d / "cert.pem", d / "key.pem"
