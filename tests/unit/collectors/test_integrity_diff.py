"""report_changes: masking secrets line for line, the bounded diff, reading only small text files, the copies."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mevwatch.collectors._integrity_diff import CopyStore, mask_lines, masked_diff, read_text
from mevwatch.daemon.state import StateDB

KEY64 = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"


@pytest.mark.parametrize(("line", "shown"), [
    ("db_password: hunter2", "db_password: ***"),
    ("  - password: 'x y'", "  - password: '***'"),
    ("export AWS_SECRET_ACCESS_KEY=abc", "export AWS_SECRET_ACCESS_KEY=***"),
    ("API_KEY = zzz # comment", "API_KEY = ***"),
    ('  "private_key": "0xabc",', '  "private_key": "***",'),
    ('{"hot": "0x1234", "token": "t0k"}', '{"hot": "0x1234", "token": "***"}'),
    (f"hot: 0x{KEY64}", "hot: ***"),
    (f"- {KEY64}", "- ***"),
    ("id: Zx9fK2mQ7pL4vB8nR1tY6wE3sD5gH0jA", "id: ***"),
    ("project: 9aa3d95b3bc440fa88ea12eaa4456161", "project: ***"),
    ("rpc: https://alice:pw@rpc.example.org/v3/9aa3d95b3bc440fa88ea12ea", "rpc: https://***@rpc.example.org/v3/***"),
    ("abandon ability able about above absent absorb abstract absurd abuse access accident", "***"),
])
def test_secret_values_are_masked(line: str, shown: str) -> None:
    assert mask_lines([line]) == [shown]


@pytest.mark.parametrize("line", [
    "strategy: aggressive",
    "max_gas_gwei: 80",
    "owner: 0x52908400098527886E0F7030069857D2E4169EE7",  # an address is no secret
    "engine: /usr/local/bin/mev-engine",
    "keyboard_layout: us",
    "# min_profit is in ETH",
])
def test_what_is_not_secret_is_left_alone(line: str) -> None:
    assert mask_lines([line]) == [line]


def test_pem_blocks_and_yaml_blocks_under_a_secret_key_are_masked_whole() -> None:
    lines = ["tls:", "  cert: |", "    -----BEGIN CERTIFICATE-----", "    MIIBszCCAVmgAwIBAgIU",
             "    -----END CERTIFICATE-----",
             "signer:", "  seed: |", "    correct horse battery", "    staple", "  name: hot",
             "-----BEGIN PRIVATE KEY-----", "abc", "-----END PRIVATE KEY-----", "after: 1"]
    assert mask_lines(lines) == [
        "tls:", "  cert: |", "    -----BEGIN CERTIFICATE-----", "***", "    -----END CERTIFICATE-----",
        "signer:", "  seed: |", "    ***", "    ***", "  name: hot",
        "-----BEGIN PRIVATE KEY-----", "***", "-----END PRIVATE KEY-----", "after: 1"]


def test_a_changed_secret_shows_as_a_changed_line_with_its_values_masked() -> None:
    old = "strategy: conservative\ndb_password: hunter2\nmax_gas_gwei: 80\n"
    new = "strategy: conservative\ndb_password: hunter3\nmax_gas_gwei: 80\n"
    assert masked_diff(old, new, "/etc/mev/config.yaml") == (
        "--- /etc/mev/config.yaml (baseline)\n+++ /etc/mev/config.yaml (now)\n@@ -1,3 +1,3 @@\n"
        " strategy: conservative\n-db_password: ***\n+db_password: ***\n max_gas_gwei: 80")
    assert masked_diff("a\n", "a", "/x") == ""  # only the final newline differs


def test_the_diff_is_cut_with_a_note_of_what_was_left_out() -> None:
    old = "".join(f"line {i}: a\n" for i in range(200))
    new = "".join(f"line {i}: b\n" for i in range(200))
    text = masked_diff(old, new, "/x", max_lines=40, max_chars=2000)
    lines = text.splitlines()
    assert len(lines) == 41
    assert lines[-1] == f"[diff cut: {2 + 1 + 400 - 40} more lines not shown]"
    short = masked_diff(old, new, "/x", max_lines=1000, max_chars=300)
    assert len(short) <= 300 + len("\n[diff cut: 999 more lines not shown]")
    assert short.splitlines()[-1].startswith("[diff cut: ")


def test_only_small_utf8_text_files_are_read(tmp_path: Path) -> None:
    text = tmp_path / "config.yaml"
    text.write_text("a: 1\n")
    assert read_text(str(text), 64) == (hashlib.sha256(b"a: 1\n").hexdigest(), "a: 1\n")
    big = tmp_path / "big"
    big.write_text("x" * 65)
    assert read_text(str(big), 64) == "larger than 64 bytes"
    binary = tmp_path / "engine"
    binary.write_bytes(b"\x7fELF\x00\x01")
    assert read_text(str(binary), 64) == "not a text file"
    latin = tmp_path / "latin"
    latin.write_bytes("café".encode("latin-1"))
    assert read_text(str(latin), 64) == "not a text file (not UTF-8)"
    link = tmp_path / "link"
    link.symlink_to(text)
    assert read_text(str(link), 64) == "the file is a symlink"
    assert read_text(str(link), 64, follow_symlinks=True) == read_text(str(text), 64)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_text(str(fifo), 64) == "not a regular file"  # opened without blocking
    assert read_text(str(tmp_path / "gone"), 64) == "the file is gone"


def test_a_copy_is_used_only_at_its_version_and_while_it_hashes_to_it(state_db: StateDB) -> None:
    copies = CopyStore(state_db, "default")
    digest = hashlib.sha256(b"a: 1\n").hexdigest()
    copies.put("/etc/mev/config.yaml", digest, "a: 1\n")
    assert copies.get("/etc/mev/config.yaml", digest) == "a: 1\n"
    assert copies.get("/etc/mev/config.yaml", "0" * 64) is None  # the baseline moved on
    assert CopyStore(state_db, "other").get("/etc/mev/config.yaml", digest) is None
    state_db.execute("UPDATE integrity_copy SET content = ?", (b"a: 2\n",))  # edited in the DB
    assert copies.get("/etc/mev/config.yaml", digest) is None
    assert copies.hashes() == {"/etc/mev/config.yaml": digest}
    copies.drop(["/etc/mev/config.yaml"])
    assert copies.hashes() == {}
