"""The integrity collector on real files with real inotify: every change kind, bursts, queue overflow, accept, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mevwatch.aio import wait_for
from mevwatch.blocking import BlockingPool
from mevwatch.collectors._integrity_baseline import BaselineStore, who_am_i
from mevwatch.collectors._integrity_scan import verify
from mevwatch.collectors._integrity_writers import UNSET_UID, user_name
from mevwatch.collectors.base import CollectorContext
from mevwatch.collectors.integrity import IntegrityCollector, IntegrityOptions, watch_set
from mevwatch.daemon.cli import main as cli_main
from mevwatch.daemon.state import StateDB
from mevwatch.families import Metric
from tests.support.daemon import RunningDaemon, sample_value
from tests.support.peers import need_binary, need_root

LATENCY_LIMIT_S = 1.0
MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")
MAX_USER_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")


class Harness:
    """One IntegrityCollector running in this event loop, with the families it last emitted."""

    def __init__(self, root: Path, state: Path, **options: Any) -> None:
        self.root = root
        self.db = StateDB.open_dir(state)
        self.pool = BlockingPool(4)
        body: dict[str, Any] = {"files": [], "globs": [], "directories": [{"path": str(root)}], "debounce": 0.02}
        body.update(options)
        self.options = IntegrityOptions.model_validate(body)
        self.ctx = CollectorContext("integrity", self.options.instance, interval=0.2, timeout=30.0,
                                    state=self.db, pool=self.pool)
        self.collector = IntegrityCollector(self.ctx, self.options)
        self.families: list[Metric] = []
        self.emits = 0
        self.states_seen: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    def baseline(self, key: bytes | None = None) -> None:
        ws = watch_set(self.options)
        records, _ = verify(ws, {})
        BaselineStore(self.db, self.options.instance, key).replace_all(records, who_am_i())

    def emit(self, families: Any) -> None:
        self.families = list(families)
        self.emits += 1
        self.states_seen.update(
            s.labels["state"] for fam in self.families if fam.name == "mevwatch_integrity_realtime_state"
            for s in fam.samples if s.value == 1.0
        )

    async def start(self) -> None:
        self.task = asyncio.create_task(self.collector.run(self.emit))
        await self.wait(lambda: self.emits > 0, 10.0, "first emit")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.pool.shutdown()
        self.db.close()

    def value(self, name: str, **labels: str) -> float | None:
        for fam in self.families:
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return None

    def violations(self) -> set[tuple[str, str]]:
        return {
            (s.labels["path"], s.labels["kind"])
            for fam in self.families if fam.name == "mevwatch_integrity_violation" for s in fam.samples
        }

    async def wait(self, pred: Callable[[], bool], timeout: float, what: str) -> float:
        """Seconds until ``pred`` holds (polled every 2 ms); fails after ``timeout``."""
        t0 = time.monotonic()
        while not pred():
            if self.task is not None and self.task.done():
                self.task.result()
                raise AssertionError("collector stopped")
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"not seen after {timeout}s: {what}; violations: {sorted(self.violations())}")
            await asyncio.sleep(0.002)
        return time.monotonic() - t0


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "etc-mev"
    (root / "keys").mkdir(parents=True)
    (root / "config.yaml").write_text("strategy: arbitrage\nmin_profit: 0.01\n")
    (root / "wallets.json").write_text('{"hot": "0xabc"}\n')
    (root / "keys" / "signer").write_text("secret\n")
    (root / "engine").write_bytes(os.urandom(64 << 10))
    os.chmod(root / "engine", 0o755)
    return root


@pytest.fixture
async def harness(tree: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tree, tmp_path / "state")
    h.baseline()
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


async def _detect(h: Harness, change: Callable[[], object], want: set[tuple[str, str]]) -> float:
    t0 = time.monotonic()
    change()
    await h.wait(lambda: want <= h.violations(), 5.0, str(want))
    latency = time.monotonic() - t0
    assert latency < LATENCY_LIMIT_S, f"{want} detected after {latency:.3f}s"
    return latency


# --- each change kind, for real, with its detection latency ----------------------------------


async def test_clean_start_exports_status(harness: Harness, tree: Path) -> None:
    assert harness.violations() == set()
    assert harness.value("mevwatch_integrity_baseline_present") == 1.0
    assert harness.value("mevwatch_integrity_baseline_tampered") == 0.0
    assert harness.value("mevwatch_integrity_files_watched") == 6.0  # the dir, keys/, and 4 files
    assert harness.value("mevwatch_integrity_watched_directories") == 2.0
    assert harness.value("mevwatch_integrity_realtime_state", state="ok") == 1.0
    assert (harness.value("mevwatch_integrity_last_verify_timestamp_seconds") or 0) > time.time() - 60


async def test_files_watched_follows_files_created_and_deleted(harness: Harness, tree: Path) -> None:
    def watched(n: float) -> Callable[[], bool]:
        return lambda: harness.value("mevwatch_integrity_files_watched") == n

    (tree / "extra.yaml").write_text("x: 1\n")
    await harness.wait(watched(7.0), 5.0, "a new file counted")
    (tree / "wallets.json").unlink()
    await harness.wait(watched(6.0), 5.0, "a deleted baseline file not counted")
    (tree / "extra.yaml").unlink()
    await harness.wait(watched(5.0), 5.0, "a deleted new file not counted")
    (tree / "wallets.json").write_text('{"hot": "0xabc"}\n')
    await harness.wait(watched(6.0), 5.0, "a baseline file back")
    await harness.collector._full_check(full=False)
    assert harness.collector._files_watched == 6


async def test_write_in_place(harness: Harness, tree: Path) -> None:
    cfg = tree / "config.yaml"

    def change() -> None:
        with open(cfg, "r+b") as f:  # same length, same inode: only the content differs
            f.write(b"STRATEGY")

    await _detect(harness, change, {(str(cfg), "content")})
    assert (str(cfg), "inode") not in harness.violations()


async def test_write_in_place_with_the_file_held_open(harness: Harness, tree: Path) -> None:
    cfg = tree / "config.yaml"
    f = cfg.open("r+b")
    try:
        f.write(b"x")
        f.flush()
        await _detect(harness, lambda: None, {(str(cfg), "content")})
    finally:
        f.close()


async def test_atomic_rename_replace_by_an_editor(harness: Harness, tree: Path) -> None:
    cfg = tree / "config.yaml"

    def change() -> None:
        tmp = tree / ".config.yaml.tmp"
        tmp.write_text("strategy: sandwich\n")
        os.chmod(tmp, 0o644)
        os.rename(tmp, cfg)

    await _detect(harness, change, {(str(cfg), "content"), (str(cfg), "inode")})
    # the editor's temporary file came and went: nothing left of it
    await harness.wait(lambda: not any(".tmp" in p for p, _ in harness.violations()), 2.0, "temp file gone")


async def test_sed_in_place(harness: Harness, tree: Path) -> None:
    sed = need_binary("sed")
    cfg = tree / "config.yaml"
    await _detect(
        harness, lambda: subprocess.run([sed, "-i", "s/0.01/0.0001/", str(cfg)], check=True),
        {(str(cfg), "content"), (str(cfg), "inode")},
    )
    # one change, one series (and so one alert), its info listing every kind that changed
    files = [s.labels for fam in harness.families if fam.name == "mevwatch_integrity_file_changed" for s in fam.samples]
    assert [lbl for lbl in files if lbl["path"] == str(cfg)] == [{"path": str(cfg)}]
    labels = _changed(harness, cfg) or {}
    assert labels["kinds"] == "content,inode"
    assert labels["change"].startswith("content: sha256="), labels


async def test_delete_then_recreate(harness: Harness, tree: Path) -> None:
    wallets = tree / "wallets.json"
    original = wallets.read_bytes()
    await _detect(harness, wallets.unlink, {(str(wallets), "missing")})
    t0 = time.monotonic()
    wallets.write_bytes(original)
    inode = wallets.stat().st_ino
    await harness.wait(lambda: (str(wallets), "missing") not in harness.violations(), LATENCY_LIMIT_S, "recreated")
    # The same bytes again: only the inode can differ (ext4 often hands out the freed number again).
    expected = {(str(wallets), "inode")} if inode != harness.collector.baseline.records[str(wallets)].inode else set()
    assert harness.violations() == expected
    assert time.monotonic() - t0 < LATENCY_LIMIT_S
    await _detect(harness, lambda: wallets.write_bytes(b"{}"), {(str(wallets), "content")})


async def test_chmod(harness: Harness, tree: Path) -> None:
    signer = tree / "keys" / "signer"
    await _detect(harness, lambda: os.chmod(signer, 0o666), {(str(signer), "mode")})
    await _detect(harness, lambda: os.chmod(tree / "engine", 0o4755), {(str(tree / "engine"), "mode")})


async def test_chmod_of_the_directory(harness: Harness, tree: Path) -> None:
    await _detect(harness, lambda: os.chmod(tree / "keys", 0o777), {(str(tree / "keys"), "mode")})


async def test_chown(harness: Harness, tree: Path) -> None:
    need_root()
    signer = tree / "keys" / "signer"
    await _detect(harness, lambda: os.chown(signer, 65534, 65534), {(str(signer), "owner")})


async def test_new_file_and_new_directory(harness: Harness, tree: Path) -> None:
    new = tree / "backdoor.sh"
    await _detect(harness, lambda: new.write_text("#!/bin/sh\n"), {(str(new), "new")})

    def nested() -> None:
        (tree / "plugins" / "x").mkdir(parents=True)
        (tree / "plugins" / "x" / "evil.so").write_bytes(b"\x7fELF")

    await _detect(harness, nested, {(str(tree / "plugins" / "x" / "evil.so"), "new")})
    # the new directory is watched now: a later file inside is seen too
    later = tree / "plugins" / "x" / "later.so"
    await _detect(harness, lambda: later.write_bytes(b"x"), {(str(later), "new")})


async def test_file_replaced_by_directory_and_by_fifo(harness: Harness, tree: Path) -> None:
    cfg, wallets = tree / "config.yaml", tree / "wallets.json"

    def to_dir() -> None:
        cfg.unlink()
        cfg.mkdir()

    await _detect(harness, to_dir, {(str(cfg), "type")})

    def to_fifo() -> None:
        wallets.unlink()
        os.mkfifo(wallets)

    await _detect(harness, to_fifo, {(str(wallets), "type")})
    # the collector is still alive and checking (a FIFO opened for reading would have blocked a thread)
    await _detect(harness, lambda: os.chmod(tree / "engine", 0o700), {(str(tree / "engine"), "mode")})


async def test_dangling_symlink_swapped_in(harness: Harness, tree: Path) -> None:
    engine = tree / "engine"

    def swap() -> None:
        engine.unlink()
        engine.symlink_to("/nonexistent/mev-engine")

    await _detect(harness, swap, {(str(engine), "type")})


async def test_vanished_directory_tree(harness: Harness, tree: Path) -> None:
    import shutil

    signer = tree / "keys" / "signer"
    await _detect(harness, lambda: shutil.rmtree(tree / "keys"),
                  {(str(signer), "missing"), (str(tree / "keys"), "missing")})
    assert harness.value("mevwatch_integrity_watched_directories") == 1.0


async def test_revert_clears_the_violation(harness: Harness, tree: Path) -> None:
    signer = tree / "keys" / "signer"
    mode = signer.stat().st_mode & 0o7777
    await _detect(harness, lambda: os.chmod(signer, 0o600 if mode != 0o600 else 0o640), {(str(signer), "mode")})
    os.chmod(signer, mode)
    await harness.wait(lambda: (str(signer), "mode") not in harness.violations(), LATENCY_LIMIT_S, "cleared")
    assert harness.value("mevwatch_integrity_changes_detected_total", source="realtime") == 2.0


async def test_missing_explicit_file_parent_created_later(tmp_path: Path) -> None:
    root = tmp_path / "etc"
    root.mkdir()
    target = root / "mev" / "config.yaml"
    h = Harness(root, tmp_path / "state", files=[str(target)], directories=[])
    h.baseline()
    await h.start()
    try:
        assert h.violations() == set()  # absent at baseline and now: nothing to report

        def create() -> None:
            target.parent.mkdir()
            target.write_text("x")

        await _detect(h, create, {(str(target), "new")})
    finally:
        await h.stop()


# --- volume, overflow, caps -----------------------------------------------------------------


@pytest.mark.slow
async def test_burst_of_10000_changes(tmp_path: Path) -> None:
    root = tmp_path / "burst"
    root.mkdir()
    files = [root / f"f{i:05d}" for i in range(10_000)]
    for f in files:
        f.write_bytes(b"v1")
    h = Harness(root, tmp_path / "state", max_violation_series=500, hash_threads=2)
    h.baseline()
    await h.start()
    try:
        t0 = time.monotonic()
        _append_to_each(files, b"+")
        await h.wait(lambda: h.value("mevwatch_integrity_violations", kind="content") == 10_000.0, 60.0,
                     "10000 content violations")
        elapsed = time.monotonic() - t0
        assert len(h.violations()) == 500
        assert h.value("mevwatch_integrity_violation_series_overflow") == 9_500.0
        assert {k for _, k in h.violations()} == {"content"}
        print(f"10000 changes detected in {elapsed:.2f}s")
    finally:
        await h.stop()


@pytest.mark.slow
async def test_hashing_a_2gib_file_never_blocks_the_loop(harness: Harness, tree: Path) -> None:
    big = tree / "mev-engine-2g"
    big.touch()
    os.truncate(big, 2 << 30)  # sparse: reads as zeros at memory speed, still 2 GiB through sha256
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            worst = max(worst, time.monotonic() - t0 - 0.01)

    tick = asyncio.create_task(ticker())
    try:
        await harness.wait(lambda: (str(big), "new") in harness.violations(), 60.0, "2 GiB file seen")
    finally:
        done = True
        await tick
    (new,) = harness.collector._violations[str(big)]
    # sha256 of 2 GiB of zeros
    assert "sha256=a7c744c13cc101ed66c29f672f92455547889cc586ce6d44fe76ae824958ea51" in new.found
    # The hash ran in the pool: the loop kept its 10 ms ticks (a blocking hash would stall it for seconds).
    assert worst < 0.5, f"event loop stalled {worst:.3f}s while hashing"
    print(f"worst event-loop stall while hashing 2 GiB: {worst * 1000:.1f} ms")


@contextlib.contextmanager
def _sysctl(path: Path, value: Callable[[], str]) -> Iterator[None]:
    """Set a kernel limit for the block; always restored."""
    need_root()
    old = path.read_text()
    path.write_text(value())
    try:
        yield
    finally:
        path.write_text(old)


def _append_to_each(files: list[Path], data: bytes) -> None:
    for f in files:
        with open(f, "ab") as fh:
            fh.write(data)


async def test_queue_overflow_leads_to_a_full_verify_that_finds_every_change(tmp_path: Path) -> None:
    root = tmp_path / "ovf"
    root.mkdir()
    files = [root / f"f{i:03d}" for i in range(300)]
    for f in files:
        f.write_bytes(b"v1")
    h = Harness(root, tmp_path / "state")
    h.baseline()
    with _sysctl(MAX_QUEUED, lambda: "16"):
        # The limit is read when the inotify instance is created, so only this collector is affected.
        await h.start()
    try:
        assert h.value("mevwatch_integrity_verifies_total", mode="full") == 0.0
        # Changing files without yielding to the loop: the collector cannot read, the queue overflows.
        for f in files:
            f.write_bytes(b"v2")
        for f in files[:10]:
            os.chmod(f, 0o600)
        await h.wait(lambda: (h.value("mevwatch_integrity_queue_overflows_total") or 0) >= 1, 5.0, "overflow")
        await h.wait(lambda: h.value("mevwatch_integrity_violations", kind="content") == 300.0, 10.0,
                     "every content change")
        assert h.value("mevwatch_integrity_violations", kind="mode") == 10.0
        assert (h.value("mevwatch_integrity_verifies_total", mode="full") or 0) >= 1
        await h.wait(lambda: h.value("mevwatch_integrity_realtime_state", state="ok") == 1.0, 5.0, "state ok")
        assert "overflow" in h.states_seen  # exported while the forced full verify ran
    finally:
        await h.stop()


async def test_watch_limit_falls_back_to_verify(tmp_path: Path, tree: Path) -> None:
    need_root()
    limit = MAX_USER_WATCHES
    h = Harness(tree, tmp_path / "state")
    h.baseline()
    # The watch limit is per user and counted live: set to what is in use now, any new watch fails.
    # Restored as soon as the collector has tried, to keep the window for other inotify users short.
    with _sysctl(limit, lambda: str(max(_inotify_watches_in_use(), 1))):
        await h.start()
    try:
        assert h.value("mevwatch_integrity_realtime_state", state="watch_limit") == 1.0
        assert h.value("mevwatch_integrity_files_watched") == 6.0
    finally:
        await h.stop()


def _inotify_watches_in_use() -> int:
    n = 0
    for fdinfo in Path("/proc").glob("[0-9]*/fdinfo/*"):
        try:
            n += fdinfo.read_text().count("inotify wd:")
        except OSError:
            continue
    return n


# --- baseline states and accept --------------------------------------------------------------


async def test_no_baseline_is_a_status_not_a_flood(tree: Path, tmp_path: Path) -> None:
    h = Harness(tree, tmp_path / "state")
    await h.start()
    try:
        assert h.value("mevwatch_integrity_baseline_present") == 0.0
        assert h.violations() == set()
        assert h.value("mevwatch_integrity_files_watched") == 6.0
    finally:
        await h.stop()


async def test_auto_baseline(tree: Path, tmp_path: Path) -> None:
    h = Harness(tree, tmp_path / "state", auto_baseline=True)
    await h.start()
    try:
        assert h.value("mevwatch_integrity_baseline_present") == 1.0
        cfg = tree / "config.yaml"
        await _detect(h, lambda: cfg.write_text("changed"), {(str(cfg), "content")})
    finally:
        await h.stop()


async def test_tampered_baseline_is_flagged(tree: Path, tmp_path: Path) -> None:
    key = tmp_path / "hmac.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    h = Harness(tree, tmp_path / "state", hmac_key_file=str(key))
    h.baseline(key=b"0123456789abcdef0123456789abcdef")
    await h.start()
    try:
        assert h.value("mevwatch_integrity_baseline_tampered") == 0.0
        # An attacker changes a file and edits the baseline row to match, bumping the generation.
        (tree / "config.yaml").write_text("evil")
        evil, _ = verify(watch_set(h.options), {})
        db = sqlite3.connect(str(h.db.path))
        db.execute("UPDATE integrity_baseline SET sha256 = ?, size = ?, mtime_ns = ?, ctime_ns = ? WHERE path = ?",
                   (evil[str(tree / "config.yaml")].sha256, 4, evil[str(tree / "config.yaml")].mtime_ns,
                    evil[str(tree / "config.yaml")].ctime_ns, str(tree / "config.yaml")))
        db.execute("UPDATE integrity_meta SET value = value + 1 WHERE key = 'generation'")
        db.commit()
        db.close()
        await h.wait(lambda: h.value("mevwatch_integrity_baseline_tampered") == 1.0, 5.0, "tampered flag")
    finally:
        await h.stop()


async def test_corrupt_baseline_is_flagged(harness: Harness, tree: Path) -> None:
    db = sqlite3.connect(str(harness.db.path))
    db.execute("UPDATE integrity_baseline SET ftype = 'garbage' WHERE path = ?", (str(tree / "config.yaml"),))
    db.execute("UPDATE integrity_meta SET value = value + 1 WHERE key = 'generation'")
    db.commit()
    db.close()
    await harness.wait(lambda: harness.value("mevwatch_integrity_baseline_corrupt") == 1.0, 5.0, "corrupt flag")
    # the undecodable row reads as absent from the baseline: the file shows as new
    assert (str(tree / "config.yaml"), "new") in harness.violations()


def _config(tmp_path: Path, tree: Path, **extra: Any) -> Path:
    body: dict[str, Any] = {"files": [], "globs": [f"{tree}/**"], "directories": []}
    body.update(extra)
    cfg = tmp_path / "mevwatch.yaml"
    cfg.write_text(json.dumps({"state_dir": str(tmp_path / "state"), "collectors": [{"integrity": body}]}))
    return cfg


async def test_accept_clears_exactly_the_accepted_paths(tree: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, tree)
    assert cli_main(["integrity", "baseline", "-c", str(cfg)]) == 0
    h = Harness(tree, tmp_path / "state", globs=[f"{tree}/**"], directories=[])
    await h.start()
    try:
        a, b, c = tree / "config.yaml", tree / "wallets.json", tree / "keys" / "signer"
        a.write_text("new config")
        os.chmod(b, 0o600)
        c.write_text("rotated")
        want = {(str(a), "content"), (str(b), "mode"), (str(c), "content")}
        await h.wait(lambda: want <= h.violations(), 5.0, "three changes")
        assert cli_main(["integrity", "accept", "-c", str(cfg), str(a), str(b)]) == 0
        await h.wait(lambda: h.violations() == {(str(c), "content")}, 5.0, "only the unaccepted path left")
    finally:
        await h.stop()
    db = StateDB.open_dir(tmp_path / "state")
    try:
        (entry, *_) = BaselineStore(db, "default").accept_log()
        assert (entry.action, entry.paths, entry.uid) == ("accept", sorted([str(a), str(b)]), os.getuid())
    finally:
        db.close()


async def test_report_changes_keeps_copies_of_baseline_text_versions_only(tree: Path, tmp_path: Path) -> None:
    """Copies of the text files report_changes covers (never nodiff or binary files); the diff of a change;
    an accept moves the copy to the new version."""
    cfg = tree / "config.yaml"
    h = Harness(tree, tmp_path / "state", report_changes=[f"{tree}/**"], writers=False)
    h.baseline()
    await h.start()
    try:
        assert h.collector.copies is not None
        copies = h.collector.copies
        # wallets.json and keys/signer are in the default nodiff; engine is a binary
        assert set(copies.hashes()) == {str(cfg)}
        old_sha = copies.hashes()[str(cfg)]
        cfg.write_text("strategy: arbitrage\nmin_profit: 0.02\n")
        await h.wait(lambda: _changed(h, cfg) is not None, 5.0, "the change")
        assert (_changed(h, cfg) or {})["diff"] == (
            f"--- {cfg} (baseline)\n+++ {cfg} (now)\n@@ -1,2 +1,2 @@\n strategy: arbitrage\n"
            "-min_profit: 0.01\n+min_profit: 0.02")
        signer = tree / "keys" / "signer"
        signer.write_text("rotated\n")
        await h.wait(lambda: _changed(h, signer) is not None, 5.0, "the key's change")
        assert (_changed(h, signer) or {})["diff"].startswith("no diff: the file is in nodiff")
        assert copies.hashes()[str(cfg)] == old_sha  # the copy stays the baseline version
        BaselineStore(h.db, h.options.instance).update(
            {str(cfg): verify(watch_set(h.options), {})[0][str(cfg)]}, who_am_i())
        await h.wait(lambda: copies.hashes().get(str(cfg), old_sha) != old_sha, 5.0, "the copy of the accepted one")
        assert copies.get(str(cfg), copies.hashes()[str(cfg)]) == cfg.read_text()
        assert set(copies.hashes()) == {str(cfg)}
    finally:
        await h.stop()


async def test_a_second_change_shows_the_file_now_against_the_baseline(tree: Path, tmp_path: Path) -> None:
    """The series an alert is made of keeps its labels while the file differs; what the difference is (the diff
    of the file now against the baseline, the kinds, when it last changed, how many changes) follows each
    change; a file back at its baseline starts over."""
    cfg = tree / "config.yaml"
    h = Harness(tree, tmp_path / "state", report_changes=[f"{tree}/*"], writers=False)
    h.baseline()
    await h.start()
    try:
        def now() -> dict[str, str]:
            return _changed(h, cfg) or {}

        cfg.write_text("strategy: arbitrage\nmin_profit: 0.02\n")
        await h.wait(lambda: "+min_profit: 0.02" in now().get("diff", ""), 5.0, "the first change")
        first = now()
        assert first["kinds"] == "content"
        assert h.value("mevwatch_integrity_file_changes", path=str(cfg)) == 1
        series = [s.labels for fam in h.families for s in fam.samples if s.name == "mevwatch_integrity_file_changed"]
        await asyncio.sleep(1.1)  # the next change's ctime is a later second
        cfg.write_text("strategy: sandwich\nmin_profit: 0.03\n")
        await h.wait(lambda: "+min_profit: 0.03" in now().get("diff", ""), 5.0, "the second change")
        second = now()
        assert second["diff"] == (f"--- {cfg} (baseline)\n+++ {cfg} (now)\n@@ -1,2 +1,2 @@\n-strategy: arbitrage\n"
                                  "-min_profit: 0.01\n+strategy: sandwich\n+min_profit: 0.03")
        assert second["changed_at"] > first["changed_at"]
        assert second["change"] != first["change"]  # the sha256 found is the file's now
        assert h.value("mevwatch_integrity_file_changes", path=str(cfg)) == 2
        assert [s.labels for fam in h.families for s in fam.samples
                if s.name == "mevwatch_integrity_file_changed"] == series  # the alert stays the same one
        cfg.write_text("strategy: arbitrage\nmin_profit: 0.01\n")  # back at the baseline
        await h.wait(lambda: _changed(h, cfg) is None, 5.0, "the revert")
        assert h.value("mevwatch_integrity_file_changes", path=str(cfg)) is None
        cfg.write_text("strategy: arbitrage\nmin_profit: 0.05\n")
        await h.wait(lambda: "+min_profit: 0.05" in now().get("diff", ""), 5.0, "a change after the revert")
        assert h.value("mevwatch_integrity_file_changes", path=str(cfg)) == 1
    finally:
        await h.stop()


# --- CLI ------------------------------------------------------------------------------------


def _cli(
    *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "mevwatch", "integrity", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_cli_exit_codes_and_json(tree: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, tree)
    r = _cli("verify", "-c", str(cfg))
    assert r.returncode == 2
    assert "no baseline" in r.stderr
    assert _cli("baseline", "-c", str(cfg)).returncode == 0
    r = _cli("baseline", "-c", str(cfg))
    assert (r.returncode, "exists already" in r.stderr) == (2, True)
    r = _cli("verify", "-c", str(cfg))
    assert (r.returncode, r.stdout) == (0, "")
    (tree / "config.yaml").write_text("changed")
    os.chmod(tree / "wallets.json", 0o640)
    for quick in ((), ("--quick",)):
        r = _cli("verify", "-c", str(cfg), *quick)
        assert r.returncode == 1
        lines = sorted(r.stdout.splitlines())
        assert lines[0].startswith(f"{tree}/config.yaml\tcontent\texpected: sha256=")
        assert lines[1] == f"{tree}/wallets.json\tmode\texpected: 0644\tfound: 0640"
    r = _cli("verify", "-c", str(cfg), "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1
    assert doc["clean"] is False
    assert {(v["path"], v["kind"]) for v in doc["violations"]} == {
        (f"{tree}/config.yaml", "content"), (f"{tree}/wallets.json", "mode")}
    r = _cli("accept", "-c", str(cfg), env={"SUDO_USER": "alice"})
    assert r.returncode == 0
    assert _cli("verify", "-c", str(cfg)).returncode == 0
    # a file removed on purpose: accepting its path drops it from the baseline
    (tree / "keys" / "signer").unlink()
    assert _cli("verify", "-c", str(cfg)).returncode == 1
    r = _cli("accept", "-c", str(cfg), str(tree / "keys" / "signer"))
    assert (r.returncode, "(missing)" in r.stdout) == (0, True)
    assert _cli("verify", "-c", str(cfg)).returncode == 0
    r = _cli("log", "-c", str(cfg))
    assert "accept by" in r.stdout
    assert "sudo_user=alice" in r.stdout


def test_cli_verify_prints_the_masked_diff_of_a_report_changes_file(tree: Path, tmp_path: Path) -> None:
    """The copy of the baseline version is made by ``integrity baseline`` itself; verify shows the change as the
    daemon's page does (the same code), secrets masked, and says why a nodiff file has none."""
    (tree / "config.yaml").write_text("strategy: arbitrage\ndb_password: hunter2-old\nmin_profit: 0.01\n")
    cfg = _config(tmp_path, tree, report_changes=[f"{tree}/*", f"{tree}/keys/*"])
    assert _cli("baseline", "-c", str(cfg)).returncode == 0
    (tree / "config.yaml").write_text("strategy: sandwich\ndb_password: hunter3-new\nmin_profit: 0.01\n")
    (tree / "keys" / "signer").write_text("rotated\n")
    r = _cli("verify", "-c", str(cfg))
    assert r.returncode == 1
    config = f"{tree}/config.yaml"
    diff = (f"--- {config} (baseline)\n+++ {config} (now)\n@@ -1,3 +1,3 @@\n-strategy: arbitrage\n"
            "-db_password: ***\n+strategy: sandwich\n+db_password: ***\n min_profit: 0.01")
    assert diff in r.stdout, r.stdout
    assert f"{tree}/keys/signer\tno diff: the file is in nodiff" in r.stdout
    assert "hunter" not in r.stdout + r.stderr
    doc = json.loads(_cli("verify", "-c", str(cfg), "--json").stdout)
    assert doc["diffs"][config] == diff
    assert doc["diffs"][f"{tree}/keys/signer"].startswith("no diff: the file is in nodiff")
    assert set(doc["diffs"]) == {config, f"{tree}/keys/signer"}  # the binary engine did not change
    # without report_changes: no diff, no copy read
    plain = _config(tmp_path, tree)
    assert "diffs" in (doc := json.loads(_cli("verify", "-c", str(plain), "--json").stdout))
    assert doc["diffs"] == {}


def test_cli_errors_exit_2(tree: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, tree)
    r = _cli("verify", "-c", str(tmp_path / "absent.yaml"))
    assert (r.returncode, "cannot read config" in r.stderr) == (2, True)
    r = _cli("verify", "-c", str(cfg), "--instance", "other")
    assert (r.returncode, "no integrity collector with instance 'other'" in r.stderr) == (2, True)
    empty = tmp_path / "empty.yaml"
    empty.write_text("collectors: []\n")
    r = _cli("verify", "-c", str(empty))
    assert (r.returncode, "no integrity collector" in r.stderr) == (2, True)
    keyed = _config(tmp_path, tree, hmac_key_file=str(tmp_path / "no-key"))
    r = _cli("baseline", "-c", str(keyed))
    assert (r.returncode, "cannot read secret file" in r.stderr) == (2, True)
    cfg = _config(tmp_path, tree)
    assert _cli("baseline", "-c", str(cfg)).returncode == 0
    r = _cli("accept", "-c", str(cfg), "/etc/passwd")
    assert (r.returncode, "not in the watched set" in r.stderr) == (2, True)
    db = sqlite3.connect(str(tmp_path / "state" / "state.db"))
    db.execute("UPDATE integrity_baseline SET sha256 = 'nothex' WHERE ftype = 'file'")
    db.commit()
    db.close()
    r = _cli("verify", "-c", str(cfg))
    assert (r.returncode, "baseline is corrupt" in r.stderr) == (2, True)
    (tmp_path / "state" / "state.db").write_bytes(b"garbage" * 1000)
    for name in ("state.db-wal", "state.db-shm"):
        (tmp_path / "state" / name).unlink(missing_ok=True)
    r = _cli("verify", "-c", str(cfg))
    assert (r.returncode, "state DB" in r.stderr) == (2, True)


def test_cli_tampered_baseline_exits_1(tree: Path, tmp_path: Path) -> None:
    key = tmp_path / "hmac.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    cfg = _config(tmp_path, tree, hmac_key_file=str(key))
    assert _cli("baseline", "-c", str(cfg)).returncode == 0
    assert _cli("verify", "-c", str(cfg)).returncode == 0
    db = sqlite3.connect(str(tmp_path / "state" / "state.db"))
    db.execute("UPDATE integrity_baseline SET mode = 511")
    db.commit()
    db.close()
    r = _cli("verify", "-c", str(cfg), "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["baseline_tampered"] is True


# Root bypasses file permissions; without these capabilities it is refused like any user.
NO_DAC = ("--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search")


def test_permission_denied_is_an_unreadable_violation(tree: Path, tmp_path: Path) -> None:
    need_root()
    setpriv = need_binary("setpriv")
    cfg = _config(tmp_path, tree)
    assert _cli("baseline", "-c", str(cfg)).returncode == 0
    signer = tree / "keys" / "signer"
    os.chmod(signer, 0o000)
    r = _cli("verify", "-c", str(cfg), "--json", prefix=(setpriv, *NO_DAC))
    assert r.returncode == 1, r.stderr
    got = {(v["path"], v["kind"], v["found"]) for v in json.loads(r.stdout)["violations"]}
    assert got == {(str(signer), "unreadable", "permission denied"), (str(signer), "mode", "0000")}


def test_daemon_exports_violations_in_realtime(tree: Path, tmp_path: Path) -> None:
    """The whole daemon, without permission override, over /metrics: realtime change and an unreadable file."""
    need_root()
    setpriv = need_binary("setpriv")
    cfg = _config(tmp_path, tree, debounce="20ms", interval="1s")
    assert _cli("baseline", "-c", str(cfg)).returncode == 0
    d = RunningDaemon(tmp_path, cfg.read_text())
    d.argv = [setpriv, *NO_DAC, *d.argv]
    with d:
        assert d.wait_for("mevwatch_integrity_baseline_present") == 1.0
        cfg_file, signer = tree / "config.yaml", tree / "keys" / "signer"
        cfg_file.write_text("changed")
        os.chmod(signer, 0)
        assert d.wait_for("mevwatch_integrity_violation", path=str(cfg_file), kind="content") == 1.0
        assert d.wait_for("mevwatch_integrity_violation", path=str(signer), kind="unreadable") == 1.0
        text = d.get()
        assert sample_value(text, "mevwatch_collector_success", collector="integrity") == 1.0
        assert sample_value(text, "mevwatch_integrity_violations", kind="content") == 1.0


# --- who wrote it: fanotify names the writer (as root), else unknown -----------------------------

_WRITER = """
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, b"mev-writer", 0, 0, 0)  # PR_SET_NAME: the comm the page must show
fd = int(sys.argv[1])
os.write(fd, b"strategy: drain-everything\\n")
os.close(fd)
print("written", flush=True)
sys.stdin.read()  # stays alive until the test has read the page
"""


def _changed(h: Harness, path: Path) -> dict[str, str] | None:
    """What the changed file's info series says (kinds, change, writer, diff, changed_at), None while unchanged."""
    for fam in h.families:
        for s in fam.samples:
            if s.name == "mevwatch_integrity_file_change_info" and s.labels["path"] == str(path):
                return dict(s.labels)
    return None


SYSTEM_PYTHON = "/usr/bin/python3"  # one that another user (nobody) may run
_PYTHON_EXE = os.path.realpath(SYSTEM_PYTHON)
_LOGIN_UID = int(Path("/proc/self/loginuid").read_text())  # a child inherits it
_LOGIN = f", login uid {_LOGIN_UID} ({user_name(_LOGIN_UID)})" if _LOGIN_UID != UNSET_UID else ""


async def test_the_page_names_the_writer_and_what_changed(harness: Harness, tree: Path) -> None:
    need_root()
    cfg = tree / "config.yaml"
    before = cfg.stat().st_size
    fd = os.open(cfg, os.O_WRONLY | os.O_APPEND)
    try:  # another user (nobody) appends through a descriptor it was handed
        proc = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON, "-c", _WRITER, str(fd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(fd,),
            user=65534, group=65534, extra_groups=[])
    finally:
        os.close(fd)
    try:
        assert proc.stdout is not None
        assert await wait_for(proc.stdout.readline(), 10) == b"written\n"
        await harness.wait(lambda: _changed(harness, cfg) is not None, 5.0, "the change")
        labels = _changed(harness, cfg)
        assert labels is not None
        # the login uid and the program, as /proc tells them while the writer runs
        assert labels["writer"] == f"pid {proc.pid} (mev-writer), uid 65534 (nobody){_LOGIN}, {_PYTHON_EXE}", labels
        assert labels["kinds"] == "content"
        after = cfg.stat().st_size
        change = labels["change"]
        assert change.startswith("content: sha256="), change
        assert f"size={before} -> sha256=" in change
        assert change.endswith(f"size={after}")
        assert len(change) < 120
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        await wait_for(proc.wait(), 10)


async def test_without_the_privilege_the_writer_is_unknown(tree: Path, tmp_path: Path) -> None:
    h = Harness(tree, tmp_path / "state", writers=False)
    h.baseline()
    await h.start()
    try:
        cfg = tree / "config.yaml"
        cfg.write_text("strategy: other\n")
        await h.wait(lambda: _changed(h, cfg) is not None, 5.0, "the change")
        assert (_changed(h, cfg) or {})["writer"] == "unknown"
    finally:
        await h.stop()
    # a process that is not root cannot listen: it says why, and attributes nothing
    module = Path(__file__).parents[2] / "collectors" / "_integrity_writers.py"
    probe = (f"import importlib.util as u, sys; s = u.spec_from_file_location('w', {str(module)!r}); "
             "m = sys.modules['w'] = u.module_from_spec(s); s.loader.exec_module(m); w = m.WriterLog(); "
             "print(w.open(), w.error)")
    root = os.geteuid() == 0
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON if root else sys.executable, "-c", probe, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        user=65534 if root else None, group=65534 if root else None, extra_groups=[] if root else None)
    out, err = await wait_for(proc.communicate(), 30)
    assert out.decode().strip() == "False not root", err.decode()
