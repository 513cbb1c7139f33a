"""Host incidents of the runbook played for real and judged by a real daemon: a process filling its cgroup up
to near MemoryMax, an OOM kill in a cgroup, a host without swap, swap filling up (a swap file of the test's
own, filled by a cgroup over its memory limit), a run queue longer than the CPUs, a tmpfs out of inodes, a
filesystem remounted read-only, a disk filling past 95 % fast, a burst of WARN lines in a service log, and
journal entries at priority err (a journald of the test's own, in a private mount namespace). Each page must
tell what /api/v1/alerts, the landing page and ``mevwatch diagnose`` tell."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mevwatch.collectors.memory import detect_memory_cgroup
from tests.support.daemon import RunningDaemon, sample_value
from tests.support.fullstack import memory_cgroup, oom_kill, remove_cgroup
from tests.support.journal import journald_namespace
from tests.support.peers import need_root
from tests.support.screens import (
    Screens,
    firing_alert,
    paged_daemon,
    pager_alerts_config,
    screens_agree,
    screens_cleared,
)
from tests.support.webhook import WebhookReceiver


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An empty directory to mount a tmpfs on; whatever is mounted there is unmounted afterwards."""
    need_root()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield mnt
    while subprocess.run(["mountpoint", "-q", str(mnt)]).returncode == 0:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def _mount(mnt: Path, options: str) -> None:
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


def _filesystems(mnt: Path, extra: str = "") -> str:
    # only the test's mount: the host's own filesystems are whatever they are
    return (f"collectors:\n  - filesystems: {{interval: 1s, mount_points_exclude: '^(?!{re.escape(str(mnt))}$)'"
            f"{extra}}}\n")


# --- memory ------------------------------------------------------------------------------------

# Holds memory 4 MiB at a time, one step per line read, answering each so the test knows it is charged.
_GROWER = """
import sys
held = []
print("ready", flush=True)
for _ in sys.stdin:
    held.append(b"\\x01" * (4 << 20))
    print(len(held), flush=True)
"""
CGROUP_LIMIT = 96 << 20


@pytest.fixture
def cgroup() -> Iterator[Path]:
    need_root()
    layout = detect_memory_cgroup(Path("/sys"))
    with memory_cgroup(CGROUP_LIMIT) as name:
        if layout is None or name is None:
            pytest.skip("cannot create a memory cgroup here")
        yield layout.root / name


def _charged(cgroup: Path) -> float:
    usage = cgroup / ("memory.current" if (cgroup / "memory.current").exists() else "memory.usage_in_bytes")
    return int(usage.read_text()) / CGROUP_LIMIT


def test_a_unit_near_its_memory_max_pages(cgroup: Path, tmp_path: Path) -> None:
    name = "/" + cgroup.name  # the cgroup label: its path below the hierarchy's root
    collectors = f"collectors:\n  - memory: {{interval: 1s, cgroups: ['{name}']}}\n"
    grower = subprocess.Popen([sys.executable, "-c", _GROWER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert grower.stdin is not None
        assert grower.stdout is not None
        assert grower.stdout.readline() == "ready\n"
        (cgroup / "cgroup.procs").write_text(str(grower.pid))
        with paged_daemon(tmp_path, collectors, ["CgroupMemoryNearLimit"]) as (d, hook):
            for _ in range(CGROUP_LIMIT >> 22):  # bounded: never more than the limit itself
                if _charged(cgroup) > 0.92:
                    break
                grower.stdin.write("more\n")
                grower.stdin.flush()
                grower.stdout.readline()
            assert _charged(cgroup) > 0.9
            screens = screens_agree(d, hook, "CgroupMemoryNearLimit", cgroup=name)
            assert screens.alert["labels"]["unit"] == ""  # a cgroup, not a unit: the page names the cgroup
            assert screens.alert["annotations"]["summary"].startswith(f"{name} uses 9")
            assert "of its MemoryMax on mev-host-1" in screens.alert["annotations"]["summary"]
            assert screens.alert["annotations"]["runbook_url"].endswith("#memory-high")
            grower.stdin.close()  # the process exits: its memory is uncharged
            grower.wait(10)
            screens_cleared(d, hook, "CgroupMemoryNearLimit", cgroup=name)
    finally:
        if grower.poll() is None:
            grower.kill()
            grower.wait()


def test_a_host_without_swap_is_told(tmp_path: Path) -> None:
    if Path("/proc/swaps").read_text().strip().count("\n") > 0:
        pytest.skip("this host has swap")
    with paged_daemon(tmp_path, "collectors:\n  - memory: {interval: 1s}\n", ["SwapAbsent"]) as (d, hook):
        screens = screens_agree(d, hook, "SwapAbsent")
        assert screens.alert["labels"]["severity"] == "info"
        assert screens.alert["annotations"]["summary"] == "No swap on mev-host-1"
        assert screens.line["status"] == "INFO"
        assert "mevwatch_memory_swap_used_ratio" not in d.get()  # no ratio of nothing: SwapExhausted has no data


SWAP_SIZE = 32 << 20
SWAP_CGROUP_LIMIT = 16 << 20


@pytest.fixture
def swap_file(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB swap file switched on for the test, and off again afterwards, whatever happened."""
    need_root()
    for tool in ("mkswap", "swapon", "swapoff"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    path = tmp_path / "swapfile"
    with open(path, "wb") as f:  # written, not sparse: swapon refuses a file with holes
        f.write(bytes(SWAP_SIZE))
    path.chmod(0o600)
    subprocess.run(["mkswap", str(path)], check=True, capture_output=True)
    on = subprocess.run(["swapon", str(path)], capture_output=True, text=True)
    if on.returncode != 0:
        pytest.skip(f"swapon refused here: {on.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["swapoff", str(path)], check=True, capture_output=True, timeout=60)


@pytest.fixture
def swapping_cgroup() -> Iterator[Path]:
    """A memory cgroup of 16 MiB whose tasks may push all of the test's swap file to swap. Its memory+swap
    limit leaves room for twice the swap file: the swap cache counts against it twice, and a limit of exactly
    memory + swap OOM-kills the task before the swap file is nearly full."""
    layout = detect_memory_cgroup(Path("/sys"))
    if layout is None:
        pytest.skip("no memory cgroup controller here")
    path = layout.root / f"mevwatch-swap-{os.getpid()}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup here: {exc}")
    try:
        if layout.version == 1:
            (path / "memory.limit_in_bytes").write_text(str(SWAP_CGROUP_LIMIT))
            if not (path / "memory.memsw.limit_in_bytes").exists():
                pytest.skip("no swap accounting in this kernel's memory cgroup (swapaccount=0)")
            (path / "memory.memsw.limit_in_bytes").write_text(str(SWAP_CGROUP_LIMIT + 2 * SWAP_SIZE))
            (path / "memory.swappiness").write_text("100")
        else:
            (path / "memory.max").write_text(str(SWAP_CGROUP_LIMIT))
            (path / "memory.swap.max").write_text(str(2 * SWAP_SIZE))
        yield path
    finally:
        remove_cgroup(path)


def _swap_used() -> float:
    """The share of all swap in use, as free(1) reads it."""
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total, free = (int(info[k].split()[0]) for k in ("SwapTotal", "SwapFree"))
    return 1 - free / total


# Holds memory 1 MiB at a time, one step per line read, answering each once the step is written.
_SWAPPER = _GROWER.replace("4 << 20", "1 << 20")


def test_swap_filling_up_pages_and_clears(swap_file: Path, swapping_cgroup: Path, tmp_path: Path) -> None:
    # The runbook's memory incident with swap: a process over its cgroup's memory limit is pushed to swap
    # until swap is nearly full (the next spike goes to the OOM killer).
    grower = subprocess.Popen([sys.executable, "-c", _SWAPPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert grower.stdin is not None
        assert grower.stdout is not None
        assert grower.stdout.readline() == "ready\n"
        (swapping_cgroup / "cgroup.procs").write_text(str(grower.pid))
        with paged_daemon(tmp_path, "collectors:\n  - memory: {interval: 1s}\n", ["SwapExhausted"]) as (d, hook):
            d.wait_for("mevwatch_memory_swap_used_ratio")
            for _ in range((SWAP_CGROUP_LIMIT + 2 * SWAP_SIZE) >> 20):  # bounded: the cgroup's memory and swap
                if _swap_used() > 0.93:
                    break
                grower.stdin.write("more\n")
                grower.stdin.flush()
                if not grower.stdout.readline():
                    pytest.fail(f"the grower died (exit {grower.wait(10)}) with swap {_swap_used():.0%} used")
            assert _swap_used() > 0.93
            screens = screens_agree(d, hook, "SwapExhausted")
            assert screens.alert["labels"]["severity"] == "warning"
            assert re.fullmatch(r"Swap 9\d(\.\d+)?% used on mev-host-1", screens.alert["annotations"]["summary"])
            assert screens.alert["annotations"]["runbook_url"].endswith("#swap")
            grower.stdin.close()  # the process exits: its swapped pages are freed
            grower.wait(10)
            screens_cleared(d, hook, "SwapExhausted")
    finally:
        if grower.poll() is None:
            grower.kill()
            grower.wait()


# --- cpu ---------------------------------------------------------------------------------------


def _online_cpus() -> int:
    """The CPUs the cpu collector divides the load by: those /proc/stat lists."""
    return len(re.findall(r"^cpu\d+ ", Path("/proc/stat").read_text(), re.M))


def _load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# Linux moves the 1-minute load average every 5 s (LOAD_FREQ) by load = load * DECAY + runnable * (1 - DECAY)
LOAD_UPDATE_S = 5.0
LOAD_DECAY = math.exp(-LOAD_UPDATE_S / 60.0)  # 0.92: the load falls by 8 % of its excess per update
LOAD_RISE = 2.0  # per CPU over the load at the start: the threshold
LOAD_HYSTERESIS = 0.25  # per CPU under the threshold: the clear
SPINNERS_PER_CPU = 32  # 0.08 * 32 = 2.56 per CPU at the first update: over LOAD_RISE in one update
BACKGROUND_ALLOWANCE = 0.5  # per CPU: how much the machine's own load may rise while the test waits
# The first load update after the busy tasks start may count only part of them (the kernel folds the counts of
# CPUs that were idle in late), so the threshold may be crossed at the second update only, at up to 4.9 per CPU
# over the start: that decays under the clear in 17 updates (90 s). The test waits at most this long for it.
MAX_DECAY_S = 120.0
CLEAR_LAG_S = 10.0  # load seen below the clear -> resolved on every screen: a 1 s collector, the engine, the page


def _spinners(count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` busy loops at the lowest priority (the daemon keeps its CPU), each stopped until
    :func:`_release`, so all of them are runnable from the same instant, and each ending itself after 60 s
    should the test die before it stops them (a stopped one left behind gets SIGHUP when its parent dies)."""
    procs = [subprocess.Popen(["nice", "-n", "19", "sh", "-c",
                               "kill -STOP $$; exec timeout 60 sh -c 'while :; do :; done'"], start_new_session=True)
             for _ in range(count)]
    deadline = time.monotonic() + 10.0
    while not all(Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for p in procs):
        assert time.monotonic() < deadline, "the busy loops did not all stop before their release"
        time.sleep(0.02)
    return procs


def _release(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        os.killpg(p.pid, signal.SIGCONT)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):  # reaped by an earlier stop
            os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait(10)


def _decay_updates(excess: float, margin: float) -> int:
    """Load updates until an excess over the background of ``excess`` per CPU is under ``margin``."""
    return max(0, math.ceil(math.log(margin / excess) / math.log(LOAD_DECAY))) if excess > margin else 0


def test_a_run_queue_longer_than_the_cpus_pages_and_clears(tmp_path: Path) -> None:
    # A rise of 2 per CPU over the load at the start (the machine's own load, whatever it is) is reached at
    # the first update after 32 busy tasks per CPU start. Then only as many stay busy as the load average is
    # (it holds level while the three screens are read), and at the end none: the load falls by 8 % of its
    # excess per update, and the alert must clear once it is under the clear threshold.
    cpus = _online_cpus()
    assert cpus > 0
    base = _load1() / cpus
    threshold = round(base + LOAD_RISE, 2)
    clear = round(threshold - LOAD_HYSTERESIS, 2)
    override = (f"  rule_overrides:\n    LoadPerCpuHigh: {{for: 0s, matchers: ['window=\"1m\"'],"
                f" threshold: {threshold}, clear: {clear}}}\n")
    with paged_daemon(tmp_path, "collectors:\n  - cpu: {interval: 1s}\n", extra=override) as (d, hook):
        d.wait_for("mevwatch_cpu_load_per_cpu", window="1m")
        busy = _spinners(SPINNERS_PER_CPU * cpus)
        try:
            _release(busy)
            deadline = time.monotonic() + 4 * LOAD_UPDATE_S
            while (load := _load1() / cpus) <= threshold:
                assert time.monotonic() < deadline, f"load {load:.2f} per CPU, not over {threshold} after 4 updates"
                time.sleep(0.05)
            held = round((load - base) * cpus)  # busy tasks that hold the load average about level
            _stop(busy[held:])
            del busy[held:]
            screens = screens_agree(d, hook, "LoadPerCpuHigh", timeout=30, window="1m")
        finally:
            _stop(busy)
        stopped_at = time.monotonic()
        peak = _load1() / cpus  # the last update with busy tasks: every later one decays
        assert float(screens.alert["value"]) > threshold
        assert screens.alert["labels"]["severity"] == "warning"
        assert re.fullmatch(r"Load is [0-9.]+ per CPU \(1m\) on mev-host-1", screens.alert["annotations"]["summary"])
        assert screens.alert["annotations"]["runbook_url"].endswith("#load-high")
        assert screens.line["status"] == "WARN"

        # the decay's bound: the updates that bring the excess under the clear even if the machine's own load
        # rose by BACKGROUND_ALLOWANCE meanwhile, plus the phase of the first update
        updates = _decay_updates(peak - base, clear - base - BACKGROUND_ALLOWANCE)
        bound = (updates + 1) * LOAD_UPDATE_S
        assert bound <= MAX_DECAY_S, f"from {peak:.2f} per CPU the load needs {updates} updates to clear"
        deadline = stopped_at + bound
        while (load := _load1() / cpus) >= clear:
            if time.monotonic() > deadline:  # the machine's own load holds it: so must the alert
                firing_alert(d, "LoadPerCpuHigh", timeout=1, window="1m")
                pytest.skip(f"the machine's own load kept the 1-minute load at {load:.2f} per CPU, over the clear "
                            f"{clear} (start {base:.2f}), {bound:.0f} s after the busy tasks stopped")
            time.sleep(0.1)
        below_after = time.monotonic() - stopped_at
        resolved = screens_cleared(d, hook, "LoadPerCpuHigh", timeout=CLEAR_LAG_S, window="1m")
        assert resolved["endsAt"] >= resolved["startsAt"]
        print(f"load per CPU {base:.2f} -> {peak:.2f}, under the clear {clear} {below_after:.1f} s after the "
              f"busy tasks stopped (bound {bound:.0f} s)")


# --- filesystems -------------------------------------------------------------------------------


def test_a_filesystem_out_of_inodes_pages(tmpfs: Path, tmp_path: Path) -> None:
    _mount(tmpfs, "size=4m,nr_inodes=64")
    instant = ["FilesystemInodesLow", "FilesystemInodesCritical"]
    with paged_daemon(tmp_path, _filesystems(tmpfs), instant) as (d, hook):
        created = 0
        while os.statvfs(tmpfs).f_ffree > 1:  # bounded by nr_inodes
            (tmpfs / f"f{created}").touch()
            created += 1
        assert created < 64
        screens = screens_agree(d, hook, "FilesystemInodesCritical", mountpoint=str(tmpfs))
        assert screens.alert["labels"]["severity"] == "critical"
        assert screens.alert["annotations"]["summary"].startswith(f"{tmpfs} is almost out of inodes (98")
        assert screens.alert["annotations"]["runbook_url"].endswith("#inodes")
        screens_agree(d, hook, "FilesystemInodesLow", mountpoint=str(tmpfs))
        # df shows the space free: only the inodes ran out
        assert sample_value(d.get(), "mevwatch_filesystem_used_ratio", mountpoint=str(tmpfs)) == 0.0


def test_a_filesystem_remounted_read_only_pages_and_clears(tmpfs: Path, tmp_path: Path) -> None:
    _mount(tmpfs, "size=4m")
    with paged_daemon(tmp_path, _filesystems(tmpfs), ["FilesystemReadOnly"]) as (d, hook):
        d.wait_value("mevwatch_filesystem_readonly", 0, mountpoint=str(tmpfs))
        subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)  # as the kernel does after I/O errors
        screens = screens_agree(d, hook, "FilesystemReadOnly", mountpoint=str(tmpfs))
        assert screens.alert["labels"]["fstype"] == "tmpfs"
        assert screens.alert["annotations"]["summary"] == f"{tmpfs} (tmpfs) is mounted read-only on mev-host-1"
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
        screens_cleared(d, hook, "FilesystemReadOnly", mountpoint=str(tmpfs))


class _SteadyFill:
    """Writes ``chunk`` bytes every ``every`` seconds to a file in ``mnt`` until the filesystem is full (ENOSPC),
    in a thread of its own: a disk filling at a known, steady rate; ``full_at`` is when it ran out."""

    def __init__(self, mnt: Path, chunk: int, every: float) -> None:
        self.path, self.chunk, self.every = mnt / "growing.log", chunk, every
        self.started_at = self.full_at = math.nan
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True)

    def __enter__(self) -> _SteadyFill:
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _fill(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            step = 0
            while not self._stop.is_set():
                try:
                    os.write(fd, b"x" * self.chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    self.full_at = time.monotonic()
                    return
                step += 1  # on a fixed schedule: the rate does not drift with the time writes take
                self._stop.wait(max(self.started_at + step * self.every - time.monotonic(), 0.0))
        finally:
            os.close(fd)

    @property
    def full(self) -> bool:
        return not math.isnan(self.full_at)


def test_a_disk_filling_fast_past_95_percent_pages_critical(tmpfs: Path, tmp_path: Path) -> None:
    size = 64 << 20
    _mount(tmpfs, f"size={size}")
    instant = ["DiskSpaceHigh", "DiskSpaceCritical", "DiskFullSoon"]
    mp = str(tmpfs)
    with paged_daemon(tmp_path, _filesystems(tmpfs), instant) as (d, hook):  # the default fill window, an hour
        # a flat past first: five runs (the recent points time-to-full weighs) see the disk empty
        first_run = d.wait_for("mevwatch_collector_last_success_timestamp_seconds", collector="filesystems")
        d.wait_at_least("mevwatch_collector_last_success_timestamp_seconds", first_run + 5, timeout=20,
                        collector="filesystems")
        assert sample_value(d.get(), "mevwatch_filesystem_time_to_full_seconds", mountpoint=mp) is None
        estimates: list[tuple[float, float]] = []  # (seen at, time-to-full) each time it changed, while filling
        soon: Screens | None = None
        with _SteadyFill(tmpfs, 1 << 20, 0.5) as fill:  # 2 MiB/s: full in about 32 s
            while not fill.full:
                ttf = sample_value(d.get(), "mevwatch_filesystem_time_to_full_seconds", mountpoint=mp)
                if ttf is not None and (not estimates or estimates[-1][1] != ttf):
                    estimates.append((time.monotonic(), ttf))
                if soon is None and estimates:  # the fill under way is paged before it ends
                    soon = screens_agree(d, hook, "DiskFullSoon", mountpoint=mp)
                assert time.monotonic() - fill.started_at < 60, "the disk did not fill"
                time.sleep(0.1)
        assert estimates, "no time-to-full while the disk filled"
        # every estimate, the first one above all, is the real time left within 2x (each is read up to 0.1 s
        # after its run, and the last seconds are left out: a second either way is a factor there)
        judged = [(fill.full_at - seen, ttf) for seen, ttf in estimates if fill.full_at - seen > 3]
        print("time-to-full when that much was left: " + ", ".join(f"{t:.1f}s/{r:.1f}s" for r, t in judged))
        assert judged[0] == (fill.full_at - estimates[0][0], estimates[0][1]), "the first estimate came late"
        for real, ttf in judged:
            assert real / 2 <= ttf <= real * 2, f"time-to-full {ttf:.1f}s when {real:.1f}s were left: {judged}"
        assert soon is not None
        assert soon.alert["labels"]["severity"] == "critical"
        assert soon.page["annotations"]["summary"].startswith(f"{mp} on mev-host-1 is full in ")
        # full, and no longer filling: the level, not the rate, keeps it critical
        critical = screens_agree(d, hook, "DiskSpaceCritical", mountpoint=mp)
        assert critical.alert["labels"]["severity"] == "critical"
        assert critical.alert["annotations"]["summary"].startswith(f"{mp} is 100% full")
        assert screens_agree(d, hook, "DiskSpaceHigh", mountpoint=mp).alert["labels"]["severity"] == "warning"


# --- logs --------------------------------------------------------------------------------------


def test_a_burst_of_warn_lines_pages_in_a_source_that_names_its_patterns(tmp_path: Path) -> None:
    log = tmp_path / "mev-detection.log"
    log.write_text("")
    # a source named as the host names it: the built-in patterns it counts are named by the source
    collectors = (f"collectors:\n  - logwatch: {{interval: 1s, journal: {{enabled: false}},"
                  f" sources: [{{name: detection, paths: ['{log}'], patterns: [error, warning]}}]}}\n")
    with paged_daemon(tmp_path, collectors) as (d, hook):
        d.wait_value("mevwatch_log_source_status", 1, source="detection", status="ok")
        with open(log, "a") as f:
            for i in range(101):  # the runbook's WARN lines: 100 in 5 minutes is the rule's bound
                f.write(f"2026-01-01T00:00:00Z WARN strategy: slippage above bound, opportunity {i} skipped\n")
        d.wait_value("mevwatch_log_matches_total", 101, source="detection", pattern="warning")
        screens = screens_agree(d, hook, "ServiceLogWarnings", source="detection")
        assert screens.alert["annotations"]["summary"] == "101 WARN lines in the last 5m in detection on mev-host-1"
        assert screens.alert["annotations"]["runbook_url"].endswith("#strategy-errors")


def test_an_oom_kill_in_a_cgroup_pages_with_the_victim(tmp_path: Path) -> None:
    need_root()
    if not os.access("/dev/kmsg", os.R_OK):
        pytest.skip("/dev/kmsg is not readable here")
    with memory_cgroup(32 << 20) as name:
        if name is None:
            pytest.skip("cannot create a memory cgroup here")
        # the oomkill stream's interval is honoured: its samples are fresh this often
        collectors = f"collectors:\n  - oomkill: {{interval: 1s}}\n  - memory: {{interval: 1s, cgroups: ['{name}']}}\n"
        with paged_daemon(tmp_path, collectors) as (d, hook):
            assert d.wait_for("mevwatch_collector_interval_seconds", collector="oomkill") == 1.0
            d.wait_value("mevwatch_collector_success", 1, collector="oomkill")
            assert oom_kill(name) == -9
            screens = screens_agree(d, hook, "OomKill", comm="mevwatch-hog")
            assert screens.alert["labels"]["severity"] == "critical"
            assert screens.alert["annotations"]["summary"].startswith("OOM killer killed mevwatch-hog (")
            # a rule over a window: diagnose tells the daemon's verdict, not UNKNOWN
            assert screens.line["status"] == "CRIT"


@pytest.fixture
def journal_namespace() -> Iterator[int]:
    """The pid of a systemd-journald running in a mount namespace of its own; enter it with nsenter -t PID -m."""
    with journald_namespace() as pid:
        yield pid


def test_journal_errors_count_by_priority_whatever_their_words(journal_namespace: int, tmp_path: Path) -> None:
    enter = ["nsenter", "-t", str(journal_namespace), "-m", "--"]

    def log_err(n: int) -> None:  # priority err, and not one word of "error" in the message
        lines = "".join(f"strategy: opportunity {i} lost, bundle rejected by relay\n" for i in range(n))
        subprocess.run([*enter, "systemd-cat", "-t", "mev-execution", "-p", "err"], input=lines.encode(),
                       check=True, timeout=10)

    hook = WebhookReceiver().start()
    collectors = "collectors:\n  - logwatch: {interval: 1s, sources: [], journal: {enabled: true}}\n"
    daemon = RunningDaemon(tmp_path, collectors + pager_alerts_config(hook))
    daemon.argv = [*enter, *daemon.argv]
    try:
        with daemon as d:
            d.wait_value("mevwatch_log_source_status", 1, source="journal", status="ok")
            for attempt in range(10):  # the follower is positioned at the journal's end once it counts a new entry
                log_err(1)
                try:
                    d.wait_at_least("mevwatch_log_matches_total", 1, timeout=2, source="journal",
                                    pattern="priority_err")
                    break
                except AssertionError:
                    assert attempt < 9, "the journal follower counts nothing"
            log_err(25)
            d.wait_at_least("mevwatch_log_matches_total", 26, source="journal", pattern="priority_err")
            assert sample_value(d.get(), "mevwatch_log_matches_total", source="journal", pattern="error") in (None, 0)
            screens = screens_agree(d, hook, "JournalErrorBurst")
            assert screens.alert["annotations"]["summary"].endswith(
                " journal entries at priority err or worse in the last 10m on mev-host-1")
            assert screens.alert["annotations"]["runbook_url"].endswith("#strategy-errors")
    finally:
        hook.stop()
