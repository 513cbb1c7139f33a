"""The disk collector: mountinfo parsing, time-to-full, watched directories, backups, hung and denied paths."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mevwatch.blocking import BlockingPool
from mevwatch.collectors import disk
from mevwatch.collectors.base import CollectorContext, CollectorError, Paths
from mevwatch.collectors.disk import (
    DEFAULT_FS_TYPES_EXCLUDE,
    DEFAULT_MOUNT_POINTS_EXCLUDE,
    DiskCollector,
    DiskOptions,
    FillTrend,
    find_newest_backup,
    linear_slope,
    parse_mountinfo,
    scan_tree,
    select_mounts,
)
from mevwatch.daemon.config import ConfigError, load_config_text
from mevwatch.daemon.docgen import declaration_problems
from mevwatch.families import Metric
from tests.support.peers import need_root

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "disk"
NOBODY = 65534


def samples(families: list[Metric] | Any, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in families:
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(families: Any, name: str, **labels: str) -> float | None:
    for key, v in samples(families, name).items():
        if all(dict(key).get(k) == val for k, val in labels.items()):
            return v
    return None


def state_of(families: Any, name: str, **labels: str) -> str | None:
    """The state label whose 0/1 series is 1."""
    hits = [dict(k)["status"] for k, v in samples(families, name).items()
            if v == 1.0 and all(dict(k).get(a) == b for a, b in labels.items())]
    assert len(hits) <= 1, hits
    return hits[0] if hits else None


def make(tmp: Path | None = None, procfs: Path = Path("/proc"), timeout: float = 5.0,
         pool: BlockingPool | None = None, **opts: Any) -> DiskCollector:
    opts.setdefault("watch_dirs", [])
    opts.setdefault("backups", [])
    ctx = CollectorContext("disk", "test", interval=1.0, timeout=timeout, paths=Paths(procfs=procfs), pool=pool)
    return DiskCollector(ctx, DiskOptions.model_validate(opts))


def only_mount(path: str) -> str:
    """A mount_points_exclude regex that keeps exactly one mount point."""
    return rf"^(?!{re.escape(path)}$)"


# --- parsing -------------------------------------------------------------------------------


def test_parse_mountinfo_fixture_unescapes_and_lets_the_later_mount_hide_the_earlier() -> None:
    mounts = parse_mountinfo((FIXTURES / "proc/self/mountinfo").read_text())
    by_point = {m.mountpoint: m for m in mounts}
    assert by_point["/mnt/nfs share"].fstype == "nfs4"
    assert by_point["/mnt/nfs share"].device == "10.0.0.5:/export/mev"
    assert by_point["/data"].device == "/dev/nvme2n1"  # mount 36 on top of mount 30
    assert sum(1 for m in mounts if m.mountpoint == "/data") == 1
    assert by_point["/backup"].readonly is True
    assert by_point["/"].readonly is False


def test_default_excludes_drop_pseudo_and_container_filesystems() -> None:
    mounts = parse_mountinfo((FIXTURES / "proc/self/mountinfo").read_text())
    kept = select_mounts(mounts, re.compile(DEFAULT_MOUNT_POINTS_EXCLUDE), re.compile(DEFAULT_FS_TYPES_EXCLUDE))
    assert [m.mountpoint for m in kept] == ["/run", "/", "/backup", "/mnt/nfs share", "/data"]


def test_select_mounts_under_rootfs_labels_them_relative_to_it() -> None:
    text = (
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "2 1 8:2 / /host rw - ext4 /dev/sda2 rw\n"
        "3 2 8:3 / /host/data rw - xfs /dev/sda3 rw\n"
    )
    kept = select_mounts(parse_mountinfo(text), re.compile("^$^"), re.compile("^$^"), rootfs="/host")
    assert [(m.mountpoint, m.stat_path) for m in kept] == [("/", "/host"), ("/data", "/host/data")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("26 1 259:2 / / rw,relatime shared:1 ext4 /dev/vda rw", "no ' - ' separator"),
        ("26 1 259:2 / / rw,relatime - ext4", "missing filesystem type or source"),
    ],
)
def test_parse_mountinfo_rejects_malformed_lines(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mountinfo("22 26 0:4 / /proc rw - proc proc rw\n" + line)


async def test_unparsable_mountinfo_fails_the_run_with_parse_error(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mountinfo").write_text("garbage line\n")
    with pytest.raises(CollectorError) as err:
        await make(procfs=tmp_path).collect()
    assert err.value.reason == "parse_error"
    assert "line 1" in err.value.message


async def test_mount_whose_statvfs_fails_is_reported_as_error_and_others_ok(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mountinfo").write_text(
        "26 1 259:2 / / rw - ext4 /dev/vda rw\n"
        "30 26 259:3 / /no/such/mount rw - xfs /dev/vdb rw\n"
    )
    fams = await make(procfs=tmp_path).collect()
    assert state_of(fams, "mevwatch_filesystem_status", mountpoint="/") == "ok"
    assert state_of(fams, "mevwatch_filesystem_status", mountpoint="/no/such/mount") == "error"
    assert value(fams, "mevwatch_filesystem_size_bytes", mountpoint="/no/such/mount") is None
    size = value(fams, "mevwatch_filesystem_size_bytes", mountpoint="/")
    st = os.statvfs("/")
    assert size == st.f_blocks * st.f_frsize


# --- time to full --------------------------------------------------------------------------


def test_linear_slope_of_literal_points() -> None:
    assert linear_slope([(0.0, 100.0), (1.0, 90.0), (2.0, 80.0)]) == pytest.approx(-10.0)
    assert linear_slope([(10.0, 5.0), (10.0, 6.0)]) is None
    assert linear_slope([(1.0, 5.0)]) is None


def test_fill_trend_absent_when_not_filling_and_finite_when_filling() -> None:
    trend = FillTrend(window=100.0)
    for t in range(5):
        trend.add(float(t), 1000.0)
    assert trend.time_to_full(1000.0) is None  # flat
    shrinking = FillTrend(window=100.0)
    for t in range(5):
        shrinking.add(float(t), 1000.0 - 100.0 * t)
    assert shrinking.time_to_full(600.0) == pytest.approx(6.0)
    growing = FillTrend(window=100.0)
    for t in range(5):
        growing.add(float(t), 1000.0 + 100.0 * t)
    assert growing.time_to_full(1400.0) is None


def test_fill_trend_forgets_points_outside_the_window_and_bounds_its_size() -> None:
    trend = FillTrend(window=10.0, max_points=5)
    for t in range(100):
        trend.add(float(t), 1000.0 - t)
    assert len(trend.points) <= 6
    assert trend.points[0][0] >= 89.0
    # A burst of samples closer than window/max_points apart keeps one point.
    burst = FillTrend(window=10.0, max_points=5)
    for i in range(50):
        burst.add(i * 0.01, 1.0)
    assert len(burst.points) == 1


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs mounted for the test."""
    need_root()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.root
async def test_real_tmpfs_filled_step_by_step_shows_ratio_and_finite_time_to_full(tmpfs: Path) -> None:
    mnt = tmpfs
    coll = make(mount_points_exclude=only_mount(str(mnt)), fill_window="2s")
    t_first = time.monotonic()
    fams = await coll.collect()
    assert value(fams, "mevwatch_filesystem_size_bytes", mountpoint=str(mnt)) == 8 * 1024 * 1024
    assert value(fams, "mevwatch_filesystem_used_ratio", mountpoint=str(mnt)) == 0.0
    assert value(fams, "mevwatch_filesystem_time_to_full_seconds", mountpoint=str(mnt)) is None
    ratios = []
    for step in range(1, 6):
        (mnt / f"fill{step}").write_bytes(b"\1" * (1024 * 1024))
        await asyncio.sleep(0.05)
        t_last = time.monotonic()
        fams = await coll.collect()
        ratios.append(value(fams, "mevwatch_filesystem_used_ratio", mountpoint=str(mnt)))
    assert ratios == pytest.approx([i / 8 for i in range(1, 6)], abs=0.01)
    ttf = value(fams, "mevwatch_filesystem_time_to_full_seconds", mountpoint=str(mnt))
    assert ttf is not None
    # 5 MiB written at an even pace, 3 MiB left: the fit predicts 3/5 of the time filling took.
    expected = 3 / 5 * (t_last - t_first)
    assert expected / 2 < ttf < expected * 2, (ttf, expected)
    assert state_of(fams, "mevwatch_filesystem_status", mountpoint=str(mnt)) == "ok"
    assert value(fams, "mevwatch_filesystem_inodes", mountpoint=str(mnt)) is not None
    # Freed again and steady for a whole window: no longer filling, so no time-to-full.
    for step in range(1, 6):
        (mnt / f"fill{step}").unlink()
    for _ in range(4):
        await asyncio.sleep(0.7)
        fams = await coll.collect()
    assert value(fams, "mevwatch_filesystem_time_to_full_seconds", mountpoint=str(mnt)) is None
    assert value(fams, "mevwatch_filesystem_readonly", mountpoint=str(mnt)) == 0.0
    remount = await asyncio.create_subprocess_exec("mount", "-o", "remount,ro", str(mnt))
    assert await remount.wait() == 0
    fams = await coll.collect()
    assert value(fams, "mevwatch_filesystem_readonly", mountpoint=str(mnt)) == 1.0


@pytest.mark.root
async def test_mounts_and_umounts_after_the_first_runs_are_seen_at_the_next_run(tmp_path: Path) -> None:
    need_root()
    mnt = tmp_path / "late"
    mnt.mkdir()
    coll = make(mount_points_exclude=only_mount(str(mnt)))
    for _ in range(3):  # mountinfo read, then kept open and polled for changes
        fams = await coll.collect()
        assert value(fams, "mevwatch_filesystem_size_bytes", mountpoint=str(mnt)) is None
    assert coll._watch is not None
    mount = await asyncio.create_subprocess_exec("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt))
    assert await mount.wait() == 0
    try:
        fams = await coll.collect()
        assert value(fams, "mevwatch_filesystem_size_bytes", mountpoint=str(mnt)) == 4 * 1024 * 1024
        fams = await coll.collect()
        assert value(fams, "mevwatch_filesystem_size_bytes", mountpoint=str(mnt)) == 4 * 1024 * 1024
    finally:
        umount = await asyncio.create_subprocess_exec("umount", "-l", str(mnt))
        await umount.wait()
    fams = await coll.collect()
    assert value(fams, "mevwatch_filesystem_size_bytes", mountpoint=str(mnt)) is None
    await coll.close()
    assert coll._watch is None


# --- hung statvfs --------------------------------------------------------------------------


@pytest.fixture
def hung_statvfs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[threading.Event, list[str]]]:
    """statvfs of /hung blocks until the event is set, like a dead hard-mounted NFS server."""
    release = threading.Event()
    calls: list[str] = []
    real = os.statvfs

    def fake(path: str) -> os.statvfs_result:
        calls.append(path)
        if path == "/hung":
            release.wait(30)
            return real("/")
        return real(path)

    monkeypatch.setattr(disk, "_statvfs", fake)
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "mountinfo").write_text(
        "26 1 259:2 / / rw - ext4 /dev/vda rw\n"
        "40 26 0:50 / /hung rw - nfs4 10.0.0.5:/dead rw\n"
    )
    try:
        yield release, calls
    finally:
        release.set()


async def test_hung_statvfs_is_stalled_not_retried_while_hung_and_retried_after(
    hung_statvfs: tuple[threading.Event, list[str]], tmp_path: Path
) -> None:
    release, calls = hung_statvfs
    pool = BlockingPool(4)
    coll = make(procfs=tmp_path / "proc", statvfs_timeout="200ms", pool=pool)
    t0 = time.monotonic()
    fams = await coll.collect()
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0  # the hung mount cost its timeout, not the run
    assert state_of(fams, "mevwatch_filesystem_status", mountpoint="/hung") == "stalled"
    assert state_of(fams, "mevwatch_filesystem_status", mountpoint="/") == "ok"
    assert value(fams, "mevwatch_filesystem_size_bytes", mountpoint="/hung") is None
    assert calls.count("/hung") == 1

    fams = await coll.collect()
    assert state_of(fams, "mevwatch_filesystem_status", mountpoint="/hung") == "stalled"
    assert calls.count("/hung") == 1  # its first call still hangs: no second thread stuck behind it
    assert calls.count("/") == 2
    assert pool.busy == 1  # one thread stuck in the dead mount, however many runs go by

    release.set()
    for _ in range(50):
        if pool.busy == 0:
            break
        await asyncio.sleep(0.02)
    fams = await coll.collect()
    assert calls.count("/hung") == 2
    assert state_of(fams, "mevwatch_filesystem_status", mountpoint="/hung") == "ok"
    assert value(fams, "mevwatch_filesystem_size_bytes", mountpoint="/hung") is not None
    pool.shutdown()


async def test_mounts_after_a_hung_one_are_still_measured(
    hung_statvfs: tuple[threading.Event, list[str]], tmp_path: Path
) -> None:
    release, calls = hung_statvfs
    (tmp_path / "proc" / "self" / "mountinfo").write_text(
        "40 26 0:50 / /hung rw - nfs4 10.0.0.5:/dead rw\n"
        "26 1 259:2 / / rw - ext4 /dev/vda rw\n"
        "41 26 0:51 / /tmp rw - cifs //10.0.0.6/tmp rw\n"
        "42 26 0:52 / /run rw - fuse.sshfs host:/run rw\n"
    )
    coll = make(procfs=tmp_path / "proc", statvfs_timeout="200ms", mount_points_exclude="^$^")
    t0 = time.monotonic()
    fams = await coll.collect()
    assert time.monotonic() - t0 < 2.0
    assert state_of(fams, "mevwatch_filesystem_status", mountpoint="/hung") == "stalled"
    assert state_of(fams, "mevwatch_filesystem_status", mountpoint="/") == "ok"
    assert state_of(fams, "mevwatch_filesystem_status", mountpoint="/tmp") == "ok"
    assert state_of(fams, "mevwatch_filesystem_status", mountpoint="/run") == "ok"
    # ext4 inline first; then the pool batch, which goes on with the mounts after the hung one
    assert calls == ["/", "/hung", "/tmp", "/run"]
    assert declaration_problems(fams, DiskCollector.metrics) == []
    release.set()


class _NoPool(BlockingPool):
    """A pool that fails the test when anything is handed to it."""

    async def run(self, fn: Any, *args: Any, timeout: float) -> Any:
        raise AssertionError(f"the pool was used for {fn!r}")


_LOCAL_AND_REMOTE = (
    "26 1 259:2 / / rw - ext4 /dev/vda rw\n"
    "41 26 0:51 / /tmp rw - tmpfs tmpfs rw\n"
    "40 26 0:50 / /mnt/nfs rw - nfs4 10.0.0.5:/share rw\n"
    "43 40 259:3 / /mnt/nfs/local rw - xfs /dev/vdb rw\n"
)


async def test_local_filesystems_are_statted_without_the_pool(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mountinfo").write_text(
        "26 1 259:2 / / rw - ext4 /dev/vda rw\n41 26 0:51 / /tmp rw - tmpfs tmpfs rw\n"
    )
    pool = _NoPool(1)
    coll = make(procfs=tmp_path, pool=pool)
    fams = await coll.collect()
    pool.shutdown()
    assert state_of(fams, "mevwatch_filesystem_status", mountpoint="/") == "ok"
    assert state_of(fams, "mevwatch_filesystem_status", mountpoint="/tmp") == "ok"
    assert value(fams, "mevwatch_filesystem_size_bytes", mountpoint="/") == (
        os.statvfs("/").f_blocks * os.statvfs("/").f_frsize
    )


async def test_network_mounts_and_mounts_below_them_go_to_the_pool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pooled: list[str] = []
    real = disk._stat_mount

    def stat_mount(path: str) -> object:
        if threading.current_thread() is not threading.main_thread():
            pooled.append(path)
        return real("/")

    monkeypatch.setattr(disk, "_stat_mount", stat_mount)
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mountinfo").write_text(_LOCAL_AND_REMOTE)
    pool = BlockingPool(2)
    fams = await make(procfs=tmp_path, pool=pool).collect()
    assert sorted(pooled) == ["/mnt/nfs", "/mnt/nfs/local"]  # xfs, but its path resolves through NFS
    for mp in ("/", "/tmp", "/mnt/nfs", "/mnt/nfs/local"):
        assert state_of(fams, "mevwatch_filesystem_status", mountpoint=mp) == "ok"

    pooled.clear()
    fams = await make(procfs=tmp_path, pool=pool, statvfs_inline_fs_types="").collect()
    assert sorted(pooled) == ["/", "/mnt/nfs", "/mnt/nfs/local", "/tmp"]  # empty option: all in the pool
    for mp in ("/", "/tmp", "/mnt/nfs", "/mnt/nfs/local"):
        assert state_of(fams, "mevwatch_filesystem_status", mountpoint=mp) == "ok"
    pool.shutdown()


async def test_hung_statvfs_does_not_stop_other_collectors(
    hung_statvfs: tuple[threading.Event, list[str]], tmp_path: Path
) -> None:
    from mevwatch.daemon.store import SampleStore
    from mevwatch.daemon.supervisor import Supervisor

    config = load_config_text(
        f"paths: {{procfs: {tmp_path / 'proc'}}}\n"
        "blocking_threads: 4\n"
        "collectors:\n"
        "  - disk: {interval: 300ms, timeout: 1s, statvfs_timeout: 100ms, watch_dirs: [], backups: []}\n"
        "  - process: {interval: 100ms}\n"
    )
    store = SampleStore()
    sup = Supervisor(config, store)
    await sup.start()
    try:
        await asyncio.sleep(1.5)
        st_disk, st_proc = sup.status[("disk", "default")], sup.status[("process", "default")]
        assert st_proc.runs >= 8
        assert st_proc.success is True
        assert st_disk.runs >= 3
        assert st_disk.success is True
        snap = store.get(("disk", "default"))
        assert snap is not None
        assert state_of(snap.families, "mevwatch_filesystem_status", mountpoint="/hung") == "stalled"
        assert state_of(snap.families, "mevwatch_filesystem_status", mountpoint="/") == "ok"
        assert hung_statvfs[1].count("/hung") == 1  # one stuck call however many runs went by
        assert hung_statvfs[1].count("/") >= 3
    finally:
        hung_statvfs[0].set()
        await sup.shutdown()


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


async def test_collector_reports_watched_dirs_and_rescans_only_after_scan_interval(tmp_path: Path) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "engine.log").write_bytes(b"e" * 3000)
    coll = make(mount_points_exclude=".*", watch_dirs=[str(logs), str(tmp_path / "missing")], scan_interval="1h")
    fams = await coll.collect()
    assert state_of(fams, "mevwatch_dir_status", path=str(logs)) == "ok"
    assert state_of(fams, "mevwatch_dir_status", path=str(tmp_path / "missing")) == "missing"
    assert value(fams, "mevwatch_dir_files", path=str(logs)) == 1.0
    assert value(fams, "mevwatch_dir_largest_file_bytes", path=str(logs), rank="1") == 3000.0
    assert ("largest file 1 under " + str(logs), f"2.9 KiB  {logs / 'engine.log'}") in await coll.details()
    assert value(fams, "mevwatch_dir_files", path=str(tmp_path / "missing")) is None
    first_ts = value(fams, "mevwatch_dir_scan_timestamp_seconds", path=str(logs))
    (logs / "other.log").write_bytes(b"o")
    fams = await coll.collect()
    # Within scan_interval the last walk's figures are served, with the time they were taken.
    assert value(fams, "mevwatch_dir_files", path=str(logs)) == 1.0
    assert value(fams, "mevwatch_dir_scan_timestamp_seconds", path=str(logs)) == first_ts
    assert declaration_problems(fams, DiskCollector.metrics) == []


async def test_watched_dirs_and_backups_are_read_under_rootfs_and_labelled_without_it(tmp_path: Path) -> None:
    (tmp_path / "var" / "log" / "mev").mkdir(parents=True)
    (tmp_path / "var" / "log" / "mev" / "engine.log").write_bytes(b"e" * 700)
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "mev-full-1.tar.gz").write_bytes(b"b" * 300)
    ctx = CollectorContext("disk", "test", interval=1.0, timeout=5.0, paths=Paths(rootfs=tmp_path))
    coll = DiskCollector(ctx, DiskOptions(mount_points_exclude=".*", watch_dirs=["/var/log/mev"]))
    fams = await coll.collect()
    assert value(fams, "mevwatch_dir_largest_file_bytes", path="/var/log/mev", rank="1") == 700.0
    assert ("largest file 1 under /var/log/mev", "700 B  /var/log/mev/engine.log") in await coll.details()
    assert value(fams, "mevwatch_backup_size_bytes", pattern="/backup/mev-full-*") == 300.0


async def test_hung_directory_walk_is_stalled_and_not_restarted_while_hung(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    release = threading.Event()
    walks: list[str] = []
    real = disk.scan_tree

    def hanging(path: str, *args: Any) -> disk.DirScan:
        walks.append(path)
        release.wait(30)
        return real(path, *args)

    monkeypatch.setattr(disk, "scan_tree", hanging)
    try:
        coll = make(mount_points_exclude=".*", watch_dirs=[str(tmp_path)], scan_interval=0, scan_time_budget="100ms")
        fams = await coll.collect()  # waits the budget plus 1 s, then gives the walk up
        assert state_of(fams, "mevwatch_dir_status", path=str(tmp_path)) == "stalled"
        assert value(fams, "mevwatch_dir_files", path=str(tmp_path)) is None
        fams = await coll.collect()
        assert state_of(fams, "mevwatch_dir_status", path=str(tmp_path)) == "stalled"
        assert len(walks) == 1
        release.set()
        for _ in range(50):
            fams = await coll.collect()
            if state_of(fams, "mevwatch_dir_status", path=str(tmp_path)) == "ok":
                break
            await asyncio.sleep(0.02)
        assert state_of(fams, "mevwatch_dir_status", path=str(tmp_path)) == "ok"
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
        "coll = make(mount_points_exclude='.*', watch_dirs=[args[0] + '/open', args[0] + '/closed'],"
        " backups=[args[0] + '/closed/mev-full-*'])\n"
        "fams = asyncio.run(coll.collect())\n"
        "result = {\n"
        " 'open': state_of(fams, 'mevwatch_dir_status', path=args[0] + '/open'),\n"
        " 'open_files': value(fams, 'mevwatch_dir_files', path=args[0] + '/open'),\n"
        " 'unreadable': value(fams, 'mevwatch_dir_unreadable_entries', path=args[0] + '/open'),\n"
        " 'closed': state_of(fams, 'mevwatch_dir_status', path=args[0] + '/closed'),\n"
        " 'backup': state_of(fams, 'mevwatch_backup_status', pattern=args[0] + '/closed/mev-full-*'),\n"
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
    fams = asyncio.run(
        make(mount_points_exclude=".*", watch_dirs=[str(denied_tree / "open")],
             backups=[str(denied_tree / "closed" / "mev-full-*")]).collect()
    )
    assert state_of(fams, "mevwatch_dir_status", path=str(denied_tree / "open")) == "ok"
    assert value(fams, "mevwatch_dir_files", path=str(denied_tree / "open")) == 2.0
    assert state_of(fams, "mevwatch_backup_status", pattern=str(denied_tree / "closed" / "mev-full-*")) == "ok"


# --- backups -------------------------------------------------------------------------------


def test_newest_backup_is_chosen_by_mtime_with_its_size(tmp_path: Path) -> None:
    now = time.time()
    for name, age, size in [("mev-full-a.tar.gz", 86400 * 3, 10), ("mev-full-b.tar.gz", 3600, 20),
                            ("mev-full-c.tar.gz", 86400, 30)]:
        p = tmp_path / name
        p.write_bytes(b"x" * size)
        os.utime(p, (now - age, now - age))
    (tmp_path / "mev-full-dir").mkdir()  # not a regular file: ignored
    info = find_newest_backup(str(tmp_path / "mev-full-*"))
    assert info.status == "ok"
    assert info.files == 3
    assert info.newest_path.endswith("mev-full-b.tar.gz")
    assert info.newest_size == 20
    assert info.newest_mtime == pytest.approx(now - 3600, abs=1)


async def test_backup_metrics_and_missing_backups(tmp_path: Path) -> None:
    p = tmp_path / "mev-full-1"
    p.write_bytes(b"x" * 1234)
    old = time.time() - 7200
    os.utime(p, (old, old))
    good, none_yet, no_dir = str(tmp_path / "mev-full-*"), str(tmp_path / "mev-none-*"), "/no/such/dir/mev-full-*"
    fams = await make(mount_points_exclude=".*", backups=[good, none_yet, no_dir]).collect()
    assert value(fams, "mevwatch_backup_size_bytes", pattern=good) == 1234.0
    age = value(fams, "mevwatch_backup_age_seconds", pattern=good)
    assert age is not None
    assert 7199 < age < 7300
    assert value(fams, "mevwatch_backup_last_modified_timestamp_seconds", pattern=good) == pytest.approx(old)
    assert state_of(fams, "mevwatch_backup_status", pattern=good) == "ok"
    assert state_of(fams, "mevwatch_backup_status", pattern=none_yet) == "missing"
    assert state_of(fams, "mevwatch_backup_status", pattern=no_dir) == "missing"
    assert value(fams, "mevwatch_backup_age_seconds", pattern=none_yet) is None
    assert declaration_problems(fams, DiskCollector.metrics) == []


# --- options -------------------------------------------------------------------------------


def test_defaults_validate_and_cover_the_runbook_paths() -> None:
    opts = DiskOptions()
    assert opts.watch_dirs == ["/var/log/mev", "/data/blockchain", "/tmp/mev_*"]
    assert opts.backups == ["/backup/mev-full-*"]
    assert opts.top_files == 5


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ("{mount_points_exclude: '(['}", "collectors[0].disk.mount_points_exclude", "invalid regular expression"),
        ("{statvfs_inline_fs_types: 'ext('}", "collectors[0].disk.statvfs_inline_fs_types",
         "invalid regular expression"),
        ("{watch_dirs: [var/log]}", "collectors[0].disk.watch_dirs", "not an absolute path"),
        ("{backups: [/b/x, /b/x]}", "collectors[0].disk.backups", "duplicate path"),
        ("{top_files: 500}", "collectors[0].disk.top_files", "less than or equal to 50"),
        ("{statvfs_timeout: 0s}", "collectors[0].disk.statvfs_timeout", "greater than 0"),
        ("{fill_window: soon}", "collectors[0].disk.fill_window", "invalid duration"),
        ("{watch: [/x]}", "collectors[0].disk.watch", "unknown key"),
    ],
)
def test_bad_options_are_config_errors_with_field_path(body: str, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text(f"collectors:\n  - disk: {body}\n")
    text = str(err.value)
    assert path in text, text
    assert message in text, text


def test_fill_trend_reports_a_sudden_fill_at_once_not_diluted_by_the_flat_window() -> None:
    trend = FillTrend(window=3600.0)  # points 30 s apart over the hour
    for t in range(0, 1800, 30):
        trend.add(float(t), 10_000.0)
    avail = 10_000.0
    for t in range(1800, 1805):  # then 500 bytes a second, sampled every second
        avail -= 500.0
        trend.add(float(t), avail)
    ttf = trend.time_to_full(avail)
    assert ttf == pytest.approx(avail / 500.0)  # 15 s, as the disk really goes (the hour's fit said minutes)
    flat_again = FillTrend(window=3600.0)
    for t in range(0, 1800, 30):
        flat_again.add(float(t), 10_000.0 - (500.0 if t > 900 else 0.0))
    assert flat_again.time_to_full(9_500.0) is not None  # the window's fit still sees the earlier drop
