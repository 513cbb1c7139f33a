"""oomkill collector: kmsg parsing on recorded kernel logs, the read loop (EPIPE, partial reads), and the
collector on a FIFO standing in for /dev/kmsg: start at the end, resume after restart, reboot, overflow."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mevwatch.aio import wait_for
from mevwatch.collectors import oomkill
from mevwatch.collectors.base import CollectorContext, CollectorError, Families, Paths
from mevwatch.collectors.oomkill import (
    KmsgRecord,
    OomContext,
    OomKillCollector,
    OomKillOptions,
    OomTracker,
    OomVictim,
    drain_kmsg,
    parse_kmsg_line,
    parse_oom_message,
)
from mevwatch.daemon.state import StateDB
from tests.support.families import family_labels, family_value

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "kmsg"
BOOT_ID = "2d3c6a0e-9f1b-4c4e-8a55-0b6f7f2e8c11"


def _records(name: str) -> list[KmsgRecord]:
    return [r for line in (FIX / name).read_text().splitlines() if (r := parse_kmsg_line(line)) is not None]


# --- parsers ------------------------------------------------------------------------------


def test_parse_kmsg_line() -> None:
    rec = parse_kmsg_line("3,424,495478937,-;Memory cgroup out of memory: Killed process 11073 (python3) a;b")
    assert rec == KmsgRecord(3, 424, 495478937, "Memory cgroup out of memory: Killed process 11073 (python3) a;b")
    assert parse_kmsg_line(" SUBSYSTEM=memory") is None  # dictionary continuation
    assert parse_kmsg_line("") is None
    assert parse_kmsg_line("not a record") is None
    assert parse_kmsg_line("x,1,2,-;msg") is None


def test_parse_oom_context_line_from_a_real_memcg_kill() -> None:
    ctx = next(parse_oom_message(r.message) for r in _records("memcg-oom.txt") if r.seq == 423)
    assert ctx == OomContext(
        pid=11073, comm="python3", constraint="memcg",
        task_memcg="/mevwatch-probe-6693", oom_memcg="/mevwatch-probe-6693",
    )


@pytest.mark.parametrize(
    ("message", "victim"),
    [
        (
            "Memory cgroup out of memory: Killed process 11073 (python3) total-vm:82132kB, anon-rss:65136kB, "
            "file-rss:6568kB, shmem-rss:0kB, UID:0 pgtables:200kB oom_score_adj:0",
            OomVictim(11073, "python3", True, (65136 + 6568) * 1024),
        ),
        (
            "Out of memory: Killed process 4243 (mev-detection) total-vm:4000000kB, anon-rss:16776000kB, "
            "file-rss:1024kB, shmem-rss:0kB, UID:997 pgtables:8192kB oom_score_adj:0",
            OomVictim(4243, "mev-detection", False, (16776000 + 1024) * 1024),
        ),
        # kernels before 4.19 print the victim on its own line after "Kill process ... or sacrifice child"
        ("Killed process 2100 (redis-server) total-vm:2097152kB", OomVictim(2100, "redis-server", False, None)),
        ("Out of memory: Killed process 7 (my app (v2))", OomVictim(7, "my app (v2)", False, None)),
    ],
)
def test_parse_killed_lines(message: str, victim: OomVictim) -> None:
    assert parse_oom_message(message) == victim


@pytest.mark.parametrize(
    "message",
    [
        "oom_reaper: reaped process 4243 (mev-detection), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
        "Out of memory: Kill process 2100 (redis-server) score 310 or sacrifice child",
        "python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
        "oom-kill:constraint=CONSTRAINT_NONE,task=x",  # no pid
        "oom-kill:constraint=CONSTRAINT_NONE,pid=12",  # no task
        "",
    ],
)
def test_other_lines_are_not_kills(message: str) -> None:
    assert parse_oom_message(message) is None


def test_tracker_on_recorded_logs() -> None:
    tracker = OomTracker()
    events = [e for r in _records("memcg-oom.txt") + _records("global-oom.txt") if (e := tracker.feed(r))]
    assert [(e.pid, e.comm, e.unit, e.cgroup, e.constraint) for e in events] == [
        (11073, "python3", "/mevwatch-probe-6693", "/mevwatch-probe-6693", "memcg"),
        (4243, "mev-detection", "mev-detection.service", "/system.slice/mev-detection.service", "none"),
        (2100, "redis-server", "", "", ""),
    ]
    assert events[0].resident_bytes == (65136 + 6568) * 1024
    assert events[1].timestamp_us == 8123457210


# --- the read loop --------------------------------------------------------------------------


def _reader(*steps: bytes | type[BaseException] | BaseException) -> Callable[[], bytes]:
    queue = list(steps)

    def read() -> bytes:
        step = queue.pop(0) if queue else BlockingIOError
        if isinstance(step, bytes):
            return step
        raise step
    return read


def test_drain_counts_epipe_and_continues() -> None:
    partial = bytearray()
    read = _reader(b"6,1,10,-;one\n", BrokenPipeError, b"6,9,90,-;nine\n", BlockingIOError)
    out = drain_kmsg(read, partial)
    assert out.lines == ["6,1,10,-;one", "6,9,90,-;nine"]
    assert (out.overruns, out.eof, out.more) == (1, False, False)


def test_drain_epipe_as_plain_oserror() -> None:
    import errno

    out = drain_kmsg(_reader(OSError(errno.EPIPE, "Broken pipe"), b"6,2,1,-;x\n"), bytearray())
    assert (out.overruns, out.lines) == (1, ["6,2,1,-;x"])


def test_drain_keeps_partial_records_of_a_fifo() -> None:
    partial = bytearray()
    out = drain_kmsg(_reader(b"6,1,1,-;hel", b"lo\n6,2,2,-;wor"), partial)
    assert out.lines == ["6,1,1,-;hello"]
    assert bytes(partial) == b"6,2,2,-;wor"
    out = drain_kmsg(_reader(b"ld\n"), partial)
    assert out.lines == ["6,2,2,-;world"]
    assert partial == b""


def test_drain_reports_eof_and_the_per_wakeup_limit() -> None:
    assert drain_kmsg(_reader(b""), bytearray()).eof

    def endless() -> bytes:
        return b"6,1,1,-;spam\n"

    out = drain_kmsg(endless, bytearray())
    assert out.more
    assert len(out.lines) == 4096


def test_drain_raises_other_errors() -> None:
    import errno

    with pytest.raises(OSError, match="Is a directory"):
        drain_kmsg(_reader(OSError(errno.EISDIR, "Is a directory")), bytearray())


# --- the collector on a FIFO ------------------------------------------------------------------------


@dataclass
class Kmsg:
    """A FIFO at <devfs>/kmsg that tests write kernel records into."""

    devfs: Path
    procfs: Path
    fd: int
    seq: int = 100
    ts_us: int = field(default_factory=lambda: int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6))

    def record(self, message: str, seq: int | None = None) -> int:
        self.seq = seq if seq is not None else self.seq + 1
        self.ts_us += 1000
        os.write(self.fd, f"6,{self.seq},{self.ts_us},-;{message}\n".encode())
        return self.seq

    def kill(self, pid: int, comm: str, memcg: str) -> tuple[int, int]:
        first = self.record(
            f"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg={memcg},"
            f"task_memcg={memcg},task={comm},pid={pid},uid=0"
        )
        last = self.record(
            f"Memory cgroup out of memory: Killed process {pid} ({comm}) total-vm:82132kB, anon-rss:1000kB, "
            "file-rss:24kB, shmem-rss:0kB, UID:0 pgtables:200kB oom_score_adj:0"
        )
        return first, last


@pytest.fixture
def kmsg(tmp_path: Path) -> Iterator[Kmsg]:
    devfs, procfs = tmp_path / "dev", tmp_path / "proc"
    devfs.mkdir()
    (procfs / "sys/kernel/random").mkdir(parents=True)
    (procfs / "sys/kernel/random/boot_id").write_text(BOOT_ID + "\n")
    os.mkfifo(devfs / "kmsg")
    # O_RDWR keeps a writer on the FIFO without blocking, so the collector never sees EOF.
    fd = os.open(devfs / "kmsg", os.O_RDWR | os.O_NONBLOCK)
    try:
        yield Kmsg(devfs, procfs, fd)
    finally:
        os.close(fd)


class Running:
    def __init__(self, collector: OomKillCollector) -> None:
        self.collector = collector
        self.emitted: list[Families] = []
        self.task: asyncio.Task[None] | None = None

    @property
    def last(self) -> Families:
        return self.emitted[-1]

    async def wait_for(self, check: Callable[[Families], bool], timeout: float = 2.0) -> Families:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.task is not None and self.task.done():
                self.task.result()
                raise AssertionError("collector stopped")
            if self.emitted and check(self.emitted[-1]):
                return self.emitted[-1]
            await asyncio.sleep(0.01)
        raise AssertionError(f"condition not met; last emit: {self.emitted[-1:]!r}")


@contextlib.asynccontextmanager
async def running(
    kmsg: Kmsg, state: StateDB | None, **opts: object
) -> AsyncIterator[Running]:
    ctx = CollectorContext(
        "oomkill", "default", 30.0, 10.0, paths=Paths(procfs=kmsg.procfs, devfs=kmsg.devfs), state=state
    )
    r = Running(OomKillCollector(ctx, OomKillOptions.model_validate(opts)))
    r.task = asyncio.create_task(r.collector.run(r.emitted.append))
    try:
        await r.wait_for(lambda _: True)  # the first emit: positioned
        yield r
    finally:
        r.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await r.task


def _kills(fams: Families, comm: str, unit: str) -> float | None:
    return family_value(fams, "mevwatch_oom_kills_total", comm=comm, unit=unit)


async def test_first_run_starts_at_the_end_then_counts_new_kills(kmsg: Kmsg, state_db: StateDB) -> None:
    kmsg.kill(11, "old-victim", "/system.slice/old.service")  # already in the buffer: history
    async with running(kmsg, state_db) as r:
        assert family_labels(r.last, "mevwatch_oom_kills_total") == []
        kmsg.record("EXT4-fs (vda): mounted filesystem")
        kmsg.kill(4243, "mev-detection", "/system.slice/mev-detection.service")
        fams = await r.wait_for(lambda f: _kills(f, "mev-detection", "mev-detection.service") == 1)
        assert _kills(fams, "old-victim", "old.service") is None
        assert family_value(
            fams, "mevwatch_oom_last_victim_info", pid="4243", comm="mev-detection",
            unit="mev-detection.service", cgroup="/system.slice/mev-detection.service", constraint="memcg",
        ) == 1
        ts = family_value(fams, "mevwatch_oom_last_kill_timestamp_seconds")
        assert ts is not None
        assert abs(ts - time.time()) < 5
        assert family_value(fams, "mevwatch_oom_last_victim_resident_bytes") == 1024 * 1024
        assert family_value(fams, "mevwatch_oom_kmsg_overruns_total") == 0


async def test_restart_neither_double_counts_nor_misses(kmsg: Kmsg, state_db: StateDB) -> None:
    async with running(kmsg, state_db) as r:
        a = kmsg.kill(501, "hog-a", "/system.slice/mev-analytics.service")
        await r.wait_for(lambda f: _kills(f, "hog-a", "mev-analytics.service") == 1)
    # While mevwatch is down the kernel logs another kill; on open /dev/kmsg replays its whole buffer.
    kmsg.seq = a[0] - 1
    kmsg.kill(501, "hog-a", "/system.slice/mev-analytics.service")
    kmsg.kill(502, "hog-b", "/system.slice/mev-analytics.service")
    async with running(kmsg, state_db) as r:
        fams = await r.wait_for(lambda f: _kills(f, "hog-b", "mev-analytics.service") == 1)
        assert _kills(fams, "hog-a", "mev-analytics.service") == 1  # persisted, not recounted
        assert family_value(fams, "mevwatch_oom_last_victim_info", comm="hog-b") == 1
        assert family_value(fams, "mevwatch_oom_kmsg_overruns_total") == 0


async def test_counters_survive_a_restart_without_new_records(kmsg: Kmsg, state_db: StateDB) -> None:
    async with running(kmsg, state_db) as r:
        kmsg.kill(7, "erigon", "/system.slice/ethereum-erigon.service")
        await r.wait_for(lambda f: _kills(f, "erigon", "ethereum-erigon.service") == 1)
    async with running(kmsg, state_db) as r:
        assert _kills(r.last, "erigon", "ethereum-erigon.service") == 1
        assert family_value(r.last, "mevwatch_oom_last_victim_info", comm="erigon", pid="7") == 1


async def test_kernel_chatter_moves_the_stored_cursor_lazily_and_on_stop(kmsg: Kmsg, state_db: StateDB) -> None:
    def stored() -> list[tuple[object, ...]]:
        return state_db.query("SELECT seq FROM oomkill_cursor WHERE instance = 'default'")

    async with running(kmsg, state_db) as r:
        assert stored() == [(-1,)]  # nothing in the buffer yet
        for _ in range(3):
            kmsg.record("audit: type=1400 apparmor=ALLOWED")
        await asyncio.sleep(0.2)
        assert stored() == [(-1,)]  # re-reading these after a crash counts nothing: no write per record
        assert len(r.emitted) == 1  # nor an emit: no exported value changed
        kill = kmsg.kill(3, "victim", "/v.service")
        await r.wait_for(lambda f: _kills(f, "victim", "v.service") == 1)
        assert stored() == [(kill[1],)]  # a kill is stored with its cursor at once
        kmsg.record("more chatter")
        await asyncio.sleep(0.1)
    assert stored() == [(kmsg.seq,)]


async def test_records_lost_while_down_count_as_an_overrun(kmsg: Kmsg, state_db: StateDB) -> None:
    async with running(kmsg, state_db) as r:
        kmsg.record("hello")
        await asyncio.sleep(0.1)
        assert family_value(r.last, "mevwatch_oom_kmsg_overruns_total") == 0
    kmsg.record("the oldest record left after the ring buffer wrapped", seq=kmsg.seq + 50)
    kmsg.kill(9, "victim", "/x.service")
    async with running(kmsg, state_db) as r:
        fams = await r.wait_for(lambda f: _kills(f, "victim", "x.service") == 1)
        assert family_value(fams, "mevwatch_oom_kmsg_overruns_total") == 1


async def test_after_a_reboot_every_record_is_new(kmsg: Kmsg, state_db: StateDB) -> None:
    async with running(kmsg, state_db) as r:
        kmsg.record("before reboot", seq=5000)
        await asyncio.sleep(0.1)
        assert r.emitted
    (kmsg.procfs / "sys/kernel/random/boot_id").write_text("another-boot\n")
    kmsg.seq = 0  # sequence numbers start again after a reboot, far below the stored cursor
    kmsg.kill(33, "early-victim", "/system.slice/redis.service")
    kmsg.kill(34, "first-victim", "/system.slice/nginx.service")
    async with running(kmsg, state_db) as r:
        fams = await r.wait_for(lambda f: _kills(f, "first-victim", "nginx.service") == 1)
        assert _kills(fams, "early-victim", "redis.service") == 1
    rows = state_db.query("SELECT boot_id, seq FROM oomkill_cursor")
    assert rows == [("another-boot", 4)]


async def test_epipe_from_kmsg_is_counted_and_reading_continues(
    kmsg: Kmsg, state_db: StateDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = oomkill._kmsg_read
    fail_next = {"n": 0}

    def read(fd: int) -> bytes:
        if fail_next["n"]:
            fail_next["n"] -= 1
            raise BrokenPipeError(32, "Broken pipe")
        return real(fd)

    monkeypatch.setattr(oomkill, "_kmsg_read", read)
    async with running(kmsg, state_db) as r:
        fail_next["n"] = 1
        kmsg.kill(77, "after-epipe", "/a.service")
        fams = await r.wait_for(lambda f: _kills(f, "after-epipe", "a.service") == 1)
        assert family_value(fams, "mevwatch_oom_kmsg_overruns_total") == 1
    rows = state_db.query("SELECT overruns FROM oomkill_cursor WHERE instance = 'default'")
    assert rows == [(1,)]


async def test_series_beyond_max_series_count_as_other(kmsg: Kmsg, state_db: StateDB) -> None:
    async with running(kmsg, state_db, max_series=2) as r:
        for i, comm in enumerate(["a", "b", "c", "d"]):
            kmsg.kill(100 + i, comm, f"/{comm}.service")
        fams = await r.wait_for(lambda f: _kills(f, "_other", "_other") == 2)
        assert len(family_labels(fams, "mevwatch_oom_kills_total")) == 3


async def test_without_state_db_counts_in_memory(kmsg: Kmsg) -> None:
    async with running(kmsg, None) as r:
        kmsg.kill(5, "nodb", "/n.service")
        await r.wait_for(lambda f: _kills(f, "nodb", "n.service") == 1)


async def test_missing_kmsg_is_a_clear_error(tmp_path: Path) -> None:
    ctx = CollectorContext("oomkill", "default", 30.0, 10.0, paths=Paths(devfs=tmp_path, procfs=tmp_path))
    with pytest.raises(CollectorError) as err:
        await OomKillCollector(ctx, OomKillOptions()).run(lambda _: None)
    assert err.value.reason == "kmsg_missing"
    assert "kmsg does not exist" in err.value.message


async def test_kmsg_that_cannot_be_read_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "kmsg").mkdir()  # opens, but every read fails with EISDIR
    ctx = CollectorContext("oomkill", "default", 30.0, 10.0, paths=Paths(devfs=tmp_path, procfs=tmp_path))
    with pytest.raises(CollectorError) as err:
        await wait_for(OomKillCollector(ctx, OomKillOptions()).run(lambda _: None), 2.0)
    assert err.value.reason == "kmsg_read_failed"


async def test_fifo_writer_gone_ends_the_stream(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "kmsg")
    ctx = CollectorContext("oomkill", "default", 30.0, 10.0, paths=Paths(devfs=tmp_path, procfs=tmp_path))
    with pytest.raises(CollectorError) as err:
        await wait_for(OomKillCollector(ctx, OomKillOptions()).run(lambda _: None), 2.0)
    assert err.value.reason == "kmsg_eof"


def test_max_series_option_bounds() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_series"):
        OomKillOptions.model_validate({"max_series": 0})
