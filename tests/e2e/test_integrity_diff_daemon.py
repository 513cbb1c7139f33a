"""report_changes for real: ``sed -i`` on a watched config file pages with a unified diff of what changed, its
secrets masked, and a wallet file (nodiff) pages without one; no secret value is on the page, in /metrics, in the
daemon log or in diagnose, and the wallet's content is nowhere in the state directory. A second ``sed -i`` keeps
the alert and shows the file now against the baseline on every screen."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.daemon import RunningDaemon
from tests.support.screens import mevwatch_cli, paged_daemon, screens_agree, screens_cleared

DB_PASSWORD, NEW_DB_PASSWORD = "S3cretHunter2-pass", "N3wHunter3-pass"
SIGNING_KEY = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
RPC_KEY = "9aa3d95b3bc440fa88ea12eaa4456161"
WALLET_KEY, NEW_WALLET_KEY = "ab" * 32, "cd" * 32
CONFIG = f"""strategy: conservative
max_gas_gwei: 80
rpc_url: https://mainnet.infura.io/v3/{RPC_KEY}
db_password: {DB_PASSWORD}
signing_key: 0x{SIGNING_KEY}
min_profit_eth: 0.01
"""
# what the page may carry (the config's secrets stay in the state DB's copy of the baseline version only)
SECRETS = (DB_PASSWORD, NEW_DB_PASSWORD, SIGNING_KEY, RPC_KEY, WALLET_KEY, NEW_WALLET_KEY)


def _sed() -> str:
    sed = shutil.which("sed")
    if sed is None:
        pytest.skip("no sed")
    return sed


def _watched_config(tmp_path: Path) -> Path:
    """``config.yaml`` (CONFIG) in a directory of its own."""
    watched = tmp_path / "etc-mev"
    watched.mkdir()
    config = watched / "config.yaml"
    config.write_text(CONFIG)
    return config


def test_sed_in_place_pages_a_masked_diff_and_a_nodiff_file_none(tmp_path: Path) -> None:
    sed = _sed()
    config = _watched_config(tmp_path)
    watched, wallets = config.parent, config.parent / "wallets.json"
    wallets.write_text(json.dumps({"hot": "0x" + WALLET_KEY}) + "\n")
    collectors = (f"collectors:\n  - integrity: {{interval: 1s, files: ['{config}', '{wallets}'], auto_baseline: true,"
                  f" debounce: 20ms, report_changes: ['{watched}/*']}}\n")
    with paged_daemon(tmp_path, collectors) as (d, hook):
        d.wait_value("mevwatch_integrity_baseline_present", 1)
        d.wait_value("mevwatch_integrity_files_watched", 2)
        subprocess.run([sed, "-i", f"s/conservative/aggressive/; s/{DB_PASSWORD}/{NEW_DB_PASSWORD}/", str(config)],
                       check=True)
        subprocess.run([sed, "-i", f"s/{WALLET_KEY}/{NEW_WALLET_KEY}/", str(wallets)], check=True)

        seen = screens_agree(d, hook, "IntegrityViolation", path=str(config))
        diff = seen.page["annotations"]["diff"]
        assert diff.startswith(f"--- {config} (baseline)\n+++ {config} (now)\n@@ "), diff
        for line in ("-strategy: conservative", "+strategy: aggressive", "-db_password: ***", "+db_password: ***",
                     " max_gas_gwei: 80", " rpc_url: https://mainnet.infura.io/v3/***", " signing_key: ***"):
            assert line in diff.splitlines(), (line, diff)
        assert diff in seen.page["annotations"]["description"]
        # diagnose, asking the daemon, shows the same diff on a line of its own
        assert [(ln["status"], ln["value"]) for ln in seen.diagnose["lines"] if ln["check"] == f"diff {config}"] \
            == [("INFO", diff)]

        wallet = screens_agree(d, hook, "IntegrityViolation", path=str(wallets))
        assert wallet.page["annotations"]["diff"] == (
            "no diff: the file is in nodiff (its content is never stored or shown)")

        # diagnose running the collector here, without the daemon, tells the same
        local = mevwatch_cli(d, "diagnose", "--json", "--no-daemon", "--section", "integrity")
        lines = {ln["check"]: ln["value"] for ln in json.loads(local.stdout)["lines"]}
        assert lines.get(f"diff {config}") == diff, (lines, local.stderr[-2000:])
        assert lines.get(f"diff {wallets}", "").startswith("no diff: the file is in nodiff")

        shown = {
            "pages": json.dumps([r.json() for r in hook.delivered()]),
            "metrics": d.get(),
            "alerts api": d.get("/api/v1/alerts"),
            "landing page": d.get("/"),
            "diagnose": json.dumps(seen.diagnose) + local.stdout + local.stderr,
        }
    shown["log"] = d.log.read_text(errors="replace")
    for where, text in shown.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} in the {where}"

    # the state directory: 0600 files; the wallet's content (old or new) in none of them
    state = tmp_path / "state"
    files = [p for p in state.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert p.stat().st_uid == state.stat().st_uid
        data = p.read_bytes()
        for secret in (WALLET_KEY, NEW_WALLET_KEY, NEW_DB_PASSWORD):
            assert secret.encode() not in data, f"{secret!r} in {p}"
    # the baseline version of the config file is what the copy holds (that is where the diff comes from)
    assert any(DB_PASSWORD.encode() in p.read_bytes() for p in files)
    assert os.stat(state).st_mode & 0o077 == 0


def _landing_diff(d: RunningDaemon, fingerprint: str) -> str:
    row = re.search(rf'<tr id="alert-{re.escape(fingerprint)}">.*?</tr>', d.get("/"))
    assert row is not None, f"no row for {fingerprint} on /"
    pre = re.search(r'<pre class="muted">(.*?)</pre>', row.group(0))
    return html.unescape(pre.group(1)) if pre else ""


def test_a_second_sed_shows_the_file_now_against_the_baseline_on_every_screen(tmp_path: Path) -> None:
    sed = _sed()
    config = _watched_config(tmp_path)
    collectors = (f"collectors:\n  - integrity: {{interval: 1s, files: ['{config}'], auto_baseline: true,"
                  f" debounce: 20ms, report_changes: ['{config.parent}/*']}}\n")
    # the alert's next repeat is due 4 s after the first page: it carries what the screens show then
    with paged_daemon(tmp_path, collectors, extra="  repeat_interval: 4s\n") as (d, hook):
        d.wait_value("mevwatch_integrity_baseline_present", 1)
        subprocess.run([sed, "-i", "s/conservative/aggressive/", str(config)], check=True)
        first = screens_agree(d, hook, "IntegrityViolation", path=str(config))
        assert "+strategy: aggressive" in first.page["annotations"]["diff"].splitlines()
        fingerprint = first.alert["fingerprint"]

        subprocess.run([sed, "-i", "s/max_gas_gwei: 80/max_gas_gwei: 200/", str(config)], check=True)
        diff = "\n".join([
            f"--- {config} (baseline)", f"+++ {config} (now)", "@@ -1,4 +1,4 @@",
            "-strategy: conservative", "-max_gas_gwei: 80", "+strategy: aggressive", "+max_gas_gwei: 200",
            " rpc_url: https://mainnet.infura.io/v3/***", " db_password: ***"])
        deadline = time.monotonic() + 15
        while True:  # the screens follow the second change: the file now against the baseline
            [alert] = [a for a in json.loads(d.get("/api/v1/alerts"))["data"]["alerts"]
                       if a["labels"]["alertname"] == "IntegrityViolation"]
            if alert["annotations"]["diff"] == diff:
                break
            assert time.monotonic() < deadline, alert["annotations"]
            time.sleep(0.2)
        assert alert["fingerprint"] == fingerprint  # the same alert: it did not resolve and fire again
        assert alert["labels"] == first.alert["labels"]
        assert alert["startsAt"] == first.alert["startsAt"]
        assert "2 change(s) seen" in alert["annotations"]["description"], alert["annotations"]
        assert alert["annotations"]["diff"] in alert["annotations"]["description"]
        assert _landing_diff(d, fingerprint) == alert["annotations"]["diff"]
        lines = json.loads(mevwatch_cli(d, "diagnose", "--json", "--url", d.url).stdout)["lines"]
        assert [ln["value"] for ln in lines if ln["check"] == f"diff {config}"] == [alert["annotations"]["diff"]]

        # not paged again for it (one alert per changed file); its next repeat carries the latest
        deadline = time.monotonic() + 15
        while not any(a["annotations"].get("diff") == alert["annotations"]["diff"]
                      for r in hook.delivered() for a in r.json()["alerts"] if a["fingerprint"] == fingerprint):
            assert time.monotonic() < deadline, "the repeat did not carry the second change"
            time.sleep(0.2)
        pages = [a for r in hook.delivered() for a in r.json()["alerts"]
                 if a["fingerprint"] == fingerprint and a["status"] == "firing"]
        assert pages[0]["annotations"]["diff"] == first.page["annotations"]["diff"]
        assert not [a for r in hook.delivered() for a in r.json()["alerts"] if a["status"] == "resolved"]

        # accepted as intended: the alert resolves
        accepted = mevwatch_cli(d, "integrity", "accept", str(config))
        assert accepted.returncode == 0, accepted.stderr
        screens_cleared(d, hook, "IntegrityViolation", path=str(config))
