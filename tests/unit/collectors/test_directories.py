"""The directories collector: walks within budgets, globs, hard links, hung walks, denied directories."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mevwatch.collectors import directories
from mevwatch.collectors.backups import BackupsCollector, BackupsOptions
from mevwatch.collectors.base import CollectorContext, Paths
from mevwatch.collectors.directories import DirectoriesCollector, DirectoriesOptions, scan_tree
from mevwatch.daemon.config import ConfigError, load_config_text
from mevwatch.daemon.docgen import declaration_problems
from tests.support.families import family_state, family_value
from tests.support.peers import need_root

NOBODY = 65534


def make(rootfs: Path = Path("/"), **opts: Any) -> DirectoriesCollector:
    ctx = CollectorContext("directories", "test", interval=1.0, timeout=5.0, paths=Paths(rootfs=rootfs))
    return DirectoriesCollector(ctx, DirectoriesOptions.model_validate(opts))


def make_backups(**opts: Any) -> BackupsCollector:
    ctx = CollectorContext("backups", "test", interval=1.0, timeout=5.0)
    return BackupsCollector(ctx, BackupsOptions.model_validate(opts))


# --- watched directories -------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """100,000 files in 100 directories, five of them larger than the rest.

    On a tmpfs when root: creating (and later deleting) 100k inodes on a shared disk can take a minute.
    """
    root = tmp_path_factory.mktemp("bigtree")
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=200k", "tmpfs", str(root)], check=False
    ).returncode == 0
    try:
        _fill_big_tree(root)
        yield root
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], check=False)


def _fill_big_tree(root: Path) -> None:
    for d in range(100):
        sub = root / f"d{d:03}"
        sub.mkdir()
        base = str(sub) + "/f"
        for i in range(1000):
            os.close(os.open(base + str(i), os.O_CREAT | os.O_WRONLY, 0o644))
    for rank, size in enumerate([50_000, 40_000, 30_000, 20_000, 10_000, 5_000]):
        (root / f"d{rank:03}" / "f0").write_bytes(b"x" * size)


def test_walk_of_100k_files_counts_all_within_budget(big_tree: Path) -> None:
    t0 = time.monotonic()
    scan = scan_tree(str(big_tree), top_n=5, max_files=1_000_000, time_budget=30.0)
    elapsed = time.monotonic() - t0
    assert scan.status == "ok", scan.message
    assert scan.files == 100_000
    assert scan.dirs == 101
    assert [n for n, _ in scan.largest] == [50_000, 40_000, 30_000, 20_000, 10_000]
    assert scan.largest[0][1] == str(big_tree / "d000" / "f0")
    assert scan.duration <= elapsed


def test_walk_of_100k_files_stops_at_the_file_budget(big_tree: Path) -> None:
    scan = scan_tree(str(big_tree), top_n=5, max_files=10_000, time_budget=30.0)
    assert scan.status == "truncated"
    assert scan.files == 10_000
    assert "budget" in scan.message


def test_walk_of_100k_files_stops_at_the_time_budget(big_tree: Path) -> None:
    budget = 0.05
    t0 = time.monotonic()
    scan = scan_tree(str(big_tree), top_n=5, max_files=1_000_000, time_budget=budget)
    elapsed = time.monotonic() - t0
    assert scan.status == "truncated"
    assert 0 < scan.files < 100_000
    # The clock is read every 256 entries: the overrun is a few hundred stat calls at most.
    assert elapsed < budget + 0.25, elapsed


def test_walk_of_glob_sums_every_match_and_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "mev_a").mkdir()
    (tmp_path / "mev_a" / "x").write_bytes(b"a" * 8192)
    os.link(tmp_path / "mev_a" / "x", tmp_path / "mev_a" / "x-link")
    (tmp_path / "mev_b").write_bytes(b"b" * 100)
    (tmp_path / "other").write_bytes(b"c" * 100_000)
    scan = scan_tree(str(tmp_path / "mev_*"), top_n=5)
    assert scan.status == "ok"
    assert scan.matched == 2
    assert scan.files == 2
    assert [n for n, _ in scan.largest] == [8192, 100]
    assert scan.disk_usage >= 8192


def test_walk_of_glob_without_match_is_ok_and_empty(tmp_path: Path) -> None:
    scan = scan_tree(str(tmp_path / "mev_*"))
    assert (scan.status, scan.files, scan.matched) == ("ok", 0, 0)


def test_walk_of_missing_directory_says_missing(tmp_path: Path) -> None:
    scan = scan_tree(str(tmp_path / "nope"))
    assert scan.status == "missing"
    assert "does not exist" in scan.message


async def test_collector_reports_watched_dirs_with_largest_files_in_details(tmp_path: Path) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "engine.log").write_bytes(b"e" * 3000)
    coll = make(paths=[str(logs), str(tmp_path / "missing")])
    fams = await coll.collect()
    assert family_state(fams, "mevwatch_dir_status", path=str(logs)) == "ok"
    assert family_state(fams, "mevwatch_dir_status", path=str(tmp_path / "missing")) == "missing"
    assert family_value(fams, "mevwatch_dir_files", path=str(logs)) == 1.0
    assert family_value(fams, "mevwatch_dir_largest_file_bytes", path=str(logs), rank="1") == 3000.0
    assert ("largest file 1 under " + str(logs), f"2.9 KiB  {logs / 'engine.log'}") in await coll.details()
    assert family_value(fams, "mevwatch_dir_files", path=str(tmp_path / "missing")) is None
    first_ts = family_value(fams, "mevwatch_dir_scan_timestamp_seconds", path=str(logs))
    (logs / "other.log").write_bytes(b"o")
    fams = await coll.collect()  # every run walks: the kind's interval is the walk interval
    assert family_value(fams, "mevwatch_dir_files", path=str(logs)) == 2.0
    second_ts = family_value(fams, "mevwatch_dir_scan_timestamp_seconds", path=str(logs))
    assert first_ts is not None
    assert second_ts is not None
    assert second_ts >= first_ts
    assert declaration_problems(fams, DirectoriesCollector.metrics) == []


async def test_watched_dirs_and_backups_are_read_under_rootfs_and_labelled_without_it(tmp_path: Path) -> None:
    (tmp_path / "var" / "log" / "mev").mkdir(parents=True)
    (tmp_path / "var" / "log" / "mev" / "engine.log").write_bytes(b"e" * 700)
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "mev-full-1.tar.gz").write_bytes(b"b" * 300)
    coll = make(rootfs=tmp_path, paths=["/var/log/mev"])
    fams = await coll.collect()
    assert family_value(fams, "mevwatch_dir_largest_file_bytes", path="/var/log/mev", rank="1") == 700.0
    assert ("largest file 1 under /var/log/mev", "700 B  /var/log/mev/engine.log") in await coll.details()
    ctx = CollectorContext("backups", "test", interval=1.0, timeout=5.0, paths=Paths(rootfs=tmp_path))
    fams = await BackupsCollector(ctx, BackupsOptions(patterns=["/backup/mev-full-*"])).collect()
    assert family_value(fams, "mevwatch_backup_size_bytes", pattern="/backup/mev-full-*") == 300.0


async def test_hung_directory_walk_is_stalled_and_not_restarted_while_hung(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    release = threading.Event()
    walks: list[str] = []
    real = directories.scan_tree

    def hanging(path: str, *args: Any) -> directories.DirScan:
        walks.append(path)
        release.wait(30)
        return real(path, *args)

    monkeypatch.setattr(directories, "scan_tree", hanging)
    try:
        coll = make(paths=[str(tmp_path)], scan_time_budget="100ms")
        fams = await coll.collect()  # waits the budget plus 1 s, then gives the walk up
        assert family_state(fams, "mevwatch_dir_status", path=str(tmp_path)) == "stalled"
        assert family_value(fams, "mevwatch_dir_files", path=str(tmp_path)) is None
        fams = await coll.collect()
        assert family_state(fams, "mevwatch_dir_status", path=str(tmp_path)) == "stalled"
        assert len(walks) == 1
        release.set()
        for _ in range(50):
            fams = await coll.collect()
            if family_state(fams, "mevwatch_dir_status", path=str(tmp_path)) == "ok":
                break
            await asyncio.sleep(0.02)
        assert family_state(fams, "mevwatch_dir_status", path=str(tmp_path)) == "ok"
        assert len(walks) == 2
    finally:
        release.set()


def _as_nobody(code: str, *args: str) -> Any:
    """Run ``code`` (defining ``result``) in a forked child that dropped root, like a hardened unit."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            scope: dict[str, Any] = {"args": args}
            exec(code, globals(), scope)
            os.write(w, json.dumps(scope["result"]).encode())
        except BaseException as exc:  # report anything to the parent, then leave without cleanup
            os.write(w, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    out = json.loads(data)
    assert not (isinstance(out, dict) and "error" in out), out
    return out


@pytest.fixture
def denied_tree() -> Iterator[Path]:
    """A world-readable dir holding a root-only dir; under /tmp so an unprivileged user can reach it."""
    need_root()
    base = Path(tempfile.mkdtemp(prefix="mevwatch-denied-", dir="/tmp"))
    try:
        base.chmod(0o755)
        (base / "open").mkdir(mode=0o755)
        (base / "open" / "a.log").write_bytes(b"a" * 500)
        (base / "open" / "secret").mkdir(mode=0o700)
        (base / "open" / "secret" / "s.log").write_bytes(b"s" * 500)
        (base / "closed").mkdir(mode=0o700)
        (base / "closed" / "mev-full-1.tar.gz").write_bytes(b"b" * 500)
        yield base
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.mark.root
def test_permission_denied_dirs_and_backups_give_a_clear_status_as_unprivileged_user(denied_tree: Path) -> None:
    code = (
        "import asyncio\n"
        "fams = list(asyncio.run(make(paths=[args[0] + '/open', args[0] + '/closed']).collect()))\n"
        "fams += asyncio.run(make_backups(patterns=[args[0] + '/closed/mev-full-*']).collect())\n"
        "result = {\n"
        " 'open': family_state(fams, 'mevwatch_dir_status', path=args[0] + '/open'),\n"
        " 'open_files': family_value(fams, 'mevwatch_dir_files', path=args[0] + '/open'),\n"
        " 'unreadable': family_value(fams, 'mevwatch_dir_unreadable_entries', path=args[0] + '/open'),\n"
        " 'closed': family_state(fams, 'mevwatch_dir_status', path=args[0] + '/closed'),\n"
        " 'backup': family_state(fams, 'mevwatch_backup_status', pattern=args[0] + '/closed/mev-full-*'),\n"
        " 'uid': os.getuid(),\n"
        "}\n"
    )
    out = _as_nobody(code, str(denied_tree))
    assert out["uid"] == NOBODY
    assert out["open"] == "partial"  # readable, but one subdirectory is not: figures are a lower bound
    assert out["open_files"] == 1.0
    assert out["unreadable"] == 1.0
    assert out["closed"] == "permission_denied"
    assert out["backup"] == "permission_denied"
    # Root reads all of it: same collector, complete figures.
    fams = list(asyncio.run(make(paths=[str(denied_tree / "open")]).collect()))
    fams += asyncio.run(make_backups(patterns=[str(denied_tree / "closed" / "mev-full-*")]).collect())
    assert family_state(fams, "mevwatch_dir_status", path=str(denied_tree / "open")) == "ok"
    assert family_value(fams, "mevwatch_dir_files", path=str(denied_tree / "open")) == 2.0
    assert family_state(fams, "mevwatch_backup_status", pattern=str(denied_tree / "closed" / "mev-full-*")) == "ok"


# --- options -------------------------------------------------------------------------------


def test_defaults_validate_and_cover_the_runbook_paths() -> None:
    opts = DirectoriesOptions()
    assert opts.paths == ["/var/log/mev", "/data/blockchain", "/tmp/mev_*"]
    assert opts.top_files == 5


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ("{paths: [var/log]}", "collectors[0].directories.paths", "not an absolute path"),
        ("{top_files: 500}", "collectors[0].directories.top_files", "less than or equal to 50"),
        ("{scan_time_budget: 0s}", "collectors[0].directories.scan_time_budget", "greater than 0"),
        ("{watch_dirs: [/x]}", "collectors[0].directories.watch_dirs", "unknown key"),
    ],
)
def test_bad_options_are_config_errors_with_field_path(body: str, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text(f"collectors:\n  - directories: {body}\n")
    text = str(err.value)
    assert path in text, text
    assert message in text, text
