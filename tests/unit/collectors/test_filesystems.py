"""The filesystems collector: mountinfo parsing, time-to-full, real tmpfs, hung and network mounts."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mevwatch.blocking import BlockingPool
from mevwatch.collectors import filesystems
from mevwatch.collectors.base import CollectorContext, CollectorError, Paths
from mevwatch.collectors.filesystems import (
    DEFAULT_FS_TYPES_EXCLUDE,
    DEFAULT_MOUNT_POINTS_EXCLUDE,
    FilesystemsCollector,
    FilesystemsOptions,
    FillTrend,
    current_fill,
    linear_slope,
    parse_mountinfo,
    select_mounts,
)
from mevwatch.daemon.cli import main as cli_main
from mevwatch.daemon.config import ConfigError, load_config_text
from mevwatch.daemon.docgen import declaration_problems
from tests.support.families import family_state, family_value
from tests.support.peers import need_root

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "disk"


def make(procfs: Path = Path("/proc"), timeout: float = 5.0, pool: BlockingPool | None = None,
         **opts: Any) -> FilesystemsCollector:
    ctx = CollectorContext("filesystems", "test", interval=1.0, timeout=timeout, paths=Paths(procfs=procfs), pool=pool)
    return FilesystemsCollector(ctx, FilesystemsOptions.model_validate(opts))


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
    assert family_state(fams, "mevwatch_filesystem_status", mountpoint="/") == "ok"
    assert family_state(fams, "mevwatch_filesystem_status", mountpoint="/no/such/mount") == "error"
    assert family_value(fams, "mevwatch_filesystem_size_bytes", mountpoint="/no/such/mount") is None
    size = family_value(fams, "mevwatch_filesystem_size_bytes", mountpoint="/")
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
    assert family_value(fams, "mevwatch_filesystem_size_bytes", mountpoint=str(mnt)) == 8 * 1024 * 1024
    assert family_value(fams, "mevwatch_filesystem_used_ratio", mountpoint=str(mnt)) == 0.0
    assert family_value(fams, "mevwatch_filesystem_time_to_full_seconds", mountpoint=str(mnt)) is None
    ratios = []
    for step in range(1, 6):
        (mnt / f"fill{step}").write_bytes(b"\1" * (1024 * 1024))
        await asyncio.sleep(0.05)
        t_last = time.monotonic()
        fams = await coll.collect()
        ratios.append(family_value(fams, "mevwatch_filesystem_used_ratio", mountpoint=str(mnt)))
    assert ratios == pytest.approx([i / 8 for i in range(1, 6)], abs=0.01)
    ttf = family_value(fams, "mevwatch_filesystem_time_to_full_seconds", mountpoint=str(mnt))
    assert ttf is not None
    # 5 MiB written at an even pace, 3 MiB left: the fit predicts 3/5 of the time filling took.
    expected = 3 / 5 * (t_last - t_first)
    assert expected / 2 < ttf < expected * 2, (ttf, expected)
    assert family_state(fams, "mevwatch_filesystem_status", mountpoint=str(mnt)) == "ok"
    assert family_value(fams, "mevwatch_filesystem_inodes", mountpoint=str(mnt)) is not None
    # Freed again and steady for a whole window: no longer filling, so no time-to-full.
    for step in range(1, 6):
        (mnt / f"fill{step}").unlink()
    for _ in range(4):
        await asyncio.sleep(0.7)
        fams = await coll.collect()
    assert family_value(fams, "mevwatch_filesystem_time_to_full_seconds", mountpoint=str(mnt)) is None
    assert family_value(fams, "mevwatch_filesystem_readonly", mountpoint=str(mnt)) == 0.0
    remount = await asyncio.create_subprocess_exec("mount", "-o", "remount,ro", str(mnt))
    assert await remount.wait() == 0
    fams = await coll.collect()
    assert family_value(fams, "mevwatch_filesystem_readonly", mountpoint=str(mnt)) == 1.0


@pytest.mark.root
async def test_mounts_and_umounts_after_the_first_runs_are_seen_at_the_next_run(tmp_path: Path) -> None:
    need_root()
    mnt = tmp_path / "late"
    mnt.mkdir()
    coll = make(mount_points_exclude=only_mount(str(mnt)))
    for _ in range(3):  # mountinfo read, then kept open and polled for changes
        fams = await coll.collect()
        assert family_value(fams, "mevwatch_filesystem_size_bytes", mountpoint=str(mnt)) is None
    assert coll._watch is not None
    mount = await asyncio.create_subprocess_exec("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt))
    assert await mount.wait() == 0
    try:
        fams = await coll.collect()
        assert family_value(fams, "mevwatch_filesystem_size_bytes", mountpoint=str(mnt)) == 4 * 1024 * 1024
        fams = await coll.collect()
        assert family_value(fams, "mevwatch_filesystem_size_bytes", mountpoint=str(mnt)) == 4 * 1024 * 1024
    finally:
        umount = await asyncio.create_subprocess_exec("umount", "-l", str(mnt))
        await umount.wait()
    fams = await coll.collect()
    assert family_value(fams, "mevwatch_filesystem_size_bytes", mountpoint=str(mnt)) is None
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

    monkeypatch.setattr(filesystems, "_statvfs", fake)
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
    assert family_state(fams, "mevwatch_filesystem_status", mountpoint="/hung") == "stalled"
    assert family_state(fams, "mevwatch_filesystem_status", mountpoint="/") == "ok"
    assert family_value(fams, "mevwatch_filesystem_size_bytes", mountpoint="/hung") is None
    assert calls.count("/hung") == 1

    fams = await coll.collect()
    assert family_state(fams, "mevwatch_filesystem_status", mountpoint="/hung") == "stalled"
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
    assert family_state(fams, "mevwatch_filesystem_status", mountpoint="/hung") == "ok"
    assert family_value(fams, "mevwatch_filesystem_size_bytes", mountpoint="/hung") is not None
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
    assert family_state(fams, "mevwatch_filesystem_status", mountpoint="/hung") == "stalled"
    assert family_state(fams, "mevwatch_filesystem_status", mountpoint="/") == "ok"
    assert family_state(fams, "mevwatch_filesystem_status", mountpoint="/tmp") == "ok"
    assert family_state(fams, "mevwatch_filesystem_status", mountpoint="/run") == "ok"
    # ext4 inline first; then the pool batch, which goes on with the mounts after the hung one
    assert calls == ["/", "/hung", "/tmp", "/run"]
    assert declaration_problems(fams, FilesystemsCollector.metrics) == []
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
    assert family_state(fams, "mevwatch_filesystem_status", mountpoint="/") == "ok"
    assert family_state(fams, "mevwatch_filesystem_status", mountpoint="/tmp") == "ok"
    assert family_value(fams, "mevwatch_filesystem_size_bytes", mountpoint="/") == (
        os.statvfs("/").f_blocks * os.statvfs("/").f_frsize
    )


async def test_network_mounts_and_mounts_below_them_go_to_the_pool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pooled: list[str] = []
    real = filesystems._stat_mount

    def stat_mount(path: str) -> object:
        if threading.current_thread() is not threading.main_thread():
            pooled.append(path)
        return real("/")

    monkeypatch.setattr(filesystems, "_stat_mount", stat_mount)
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mountinfo").write_text(_LOCAL_AND_REMOTE)
    pool = BlockingPool(2)
    fams = await make(procfs=tmp_path, pool=pool).collect()
    assert sorted(pooled) == ["/mnt/nfs", "/mnt/nfs/local"]  # xfs, but its path resolves through NFS
    for mp in ("/", "/tmp", "/mnt/nfs", "/mnt/nfs/local"):
        assert family_state(fams, "mevwatch_filesystem_status", mountpoint=mp) == "ok"

    pooled.clear()
    fams = await make(procfs=tmp_path, pool=pool, statvfs_inline_fs_types="").collect()
    assert sorted(pooled) == ["/", "/mnt/nfs", "/mnt/nfs/local", "/tmp"]  # empty option: all in the pool
    for mp in ("/", "/tmp", "/mnt/nfs", "/mnt/nfs/local"):
        assert family_state(fams, "mevwatch_filesystem_status", mountpoint=mp) == "ok"
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
        "  - filesystems: {interval: 300ms, timeout: 500ms, statvfs_timeout: 100ms}\n"
        "  - process: {interval: 100ms}\n"
    )
    store = SampleStore()
    sup = Supervisor(config, store)
    await sup.start()
    try:
        await asyncio.sleep(1.5)
        st_fs, st_proc = sup.status[("filesystems", "default")], sup.status[("process", "default")]
        assert st_proc.runs >= 8
        assert st_proc.success is True
        assert st_fs.runs >= 3
        assert st_fs.success is True
        snap = store.get(("filesystems", "default"))
        assert snap is not None
        assert family_state(snap.families, "mevwatch_filesystem_status", mountpoint="/hung") == "stalled"
        assert family_state(snap.families, "mevwatch_filesystem_status", mountpoint="/") == "ok"
        assert hung_statvfs[1].count("/hung") == 1  # one stuck call however many runs went by
        assert hung_statvfs[1].count("/") >= 3
    finally:
        hung_statvfs[0].set()
        await sup.shutdown()


# --- options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        ("{mount_points_exclude: '(['}", "collectors[0].filesystems.mount_points_exclude",
         "invalid regular expression"),
        ("{statvfs_inline_fs_types: 'ext('}", "collectors[0].filesystems.statvfs_inline_fs_types",
         "invalid regular expression"),
        ("{statvfs_timeout: 0s}", "collectors[0].filesystems.statvfs_timeout", "greater than 0"),
        ("{fill_window: soon}", "collectors[0].filesystems.fill_window", "invalid duration"),
        ("{watch_dirs: [/x]}", "collectors[0].filesystems.watch_dirs", "unknown key"),
    ],
)
def test_bad_options_are_config_errors_with_field_path(body: str, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text(f"collectors:\n  - filesystems: {body}\n")
    text = str(err.value)
    assert path in text, text
    assert message in text, text


def test_the_old_disk_kind_is_refused_with_where_each_option_went(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "collectors:\n  - memory: {}\n  - disk:\n      watch_dirs: [/var/log/mev]\n"
    with pytest.raises(ConfigError) as err:
        load_config_text(text, "m.yaml")
    [issue] = err.value.issues
    assert (issue.file, issue.line, issue.path) == ("m.yaml", 3, "collectors[1].disk")
    for named in ("filesystems", "directories", "backups", "watch_dirs (renamed paths)", "backups (renamed patterns)"):
        assert named in issue.message
    old = tmp_path / "old.yaml"
    old.write_text(text)
    assert cli_main(["check-config", str(old)]) == 2
    assert f"{old}:3: collectors[1].disk: the disk kind is split into three kinds" in capsys.readouterr().err


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


def test_fill_trend_first_estimate_after_a_flat_past_is_the_fills_rate() -> None:
    trend = FillTrend(window=3600.0)
    for t in range(10):  # flat, sampled every second
        trend.add(float(t), 10_000.0)
    assert trend.time_to_full(10_000.0) is None
    avail = 10_000.0
    for t in range(10, 14):  # then 500 bytes a second: from the first sample on, the estimate is the real 20, 19, ...
        avail -= 500.0
        trend.add(float(t), avail)
        assert trend.time_to_full(avail) == pytest.approx(avail / 500.0)
    # the fill stops: the estimate grows as the flat tail enters the recent points, then the fill is over
    for t in range(14, 19):
        trend.add(float(t), avail)
    assert trend.time_to_full(avail) is None


def test_current_fill_is_the_shrinking_run_from_where_it_began() -> None:
    assert current_fill([(0, 9.0), (1, 9.0), (2, 9.0), (3, 8.0)]) == [(2, 9.0), (3, 8.0)]
    assert current_fill([(0, 5.0), (1, 9.0), (2, 8.0), (3, 8.0), (4, 7.0)]) == [(1, 9.0), (2, 8.0), (3, 8.0),
                                                                                  (4, 7.0)]
    assert current_fill([(0, 9.0), (1, 8.0), (2, 9.5)]) == [(2, 9.5)]  # space freed: no fill under way
    assert current_fill([(0, 9.0), (1, 9.0)]) == [(1, 9.0)]
    assert current_fill([]) == []
