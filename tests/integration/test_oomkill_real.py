"""A real kernel OOM kill: a memory hog in a 64 MiB cgroup, seen by the oomkill and memory collectors."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mevwatch.aio import wait_for
from mevwatch.collectors.base import CollectorContext, Families
from mevwatch.collectors.memory import CgroupLayout, MemoryCollector, MemoryOptions, detect_memory_cgroup
from mevwatch.collectors.oomkill import OomKillCollector, OomKillOptions
from mevwatch.daemon.state import StateDB
from tests.support.families import family_value
from tests.support.peers import need_root

pytestmark = [pytest.mark.root]

LIMIT = 64 << 20
HOG_COMM = "mevwatch-hog"
# Names itself, waits until the test has moved it into the cgroup, then allocates (and touches) 8 MiB at a
# time; it gives up at 512 MiB so a cgroup limit that did not apply can never eat the host's memory.
HOG = f"""
import ctypes, sys
ctypes.CDLL(None).prctl(15, b"{HOG_COMM}", 0, 0, 0)
sys.stdin.readline()
chunks = []
while len(chunks) < 64:
    chunks.append(b"\\x01" * (8 << 20))
sys.exit(3)
"""


def _write(path: Path, value: str) -> None:
    path.write_text(value)


@pytest.fixture
def limited_cgroup() -> Iterator[tuple[CgroupLayout, str]]:
    need_root()
    layout = detect_memory_cgroup(Path("/sys"))
    if layout is None:
        pytest.skip("no memory cgroup controller on this host")
    name = f"mevwatch-test-{secrets.token_hex(4)}"
    path = layout.root / name
    try:
        path.mkdir()
    except OSError as exc:  # read-only cgroupfs in a container: not a failure, even under CI
        pytest.skip(f"cannot create a memory cgroup: {exc}")
    try:
        if layout.version == 1:
            _write(path / "memory.limit_in_bytes", str(LIMIT))
            if (path / "memory.memsw.limit_in_bytes").exists():  # no escape into swap
                _write(path / "memory.memsw.limit_in_bytes", str(LIMIT))
        else:
            _write(path / "memory.max", str(LIMIT))
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", "0")
        yield layout, name
    finally:
        deadline = time.monotonic() + 5.0
        while True:
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:  # the killed task is still being torn down
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@contextlib.asynccontextmanager
async def oomkill_stream(state: StateDB) -> AsyncIterator[list[Families]]:
    ctx = CollectorContext("oomkill", "default", 30.0, 10.0, state=state)
    emitted: list[Families] = []
    task = asyncio.create_task(OomKillCollector(ctx, OomKillOptions()).run(emitted.append))
    try:
        deadline = time.monotonic() + 10.0
        while not emitted:  # positioned at the end of the ring buffer
            if task.done():
                task.result()
            assert time.monotonic() < deadline, "oomkill collector did not start"
            await asyncio.sleep(0.01)
        yield emitted
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_kernel_oom_kill_is_seen_within_two_seconds(
    limited_cgroup: tuple[CgroupLayout, str], state_db: StateDB
) -> None:
    layout, name = limited_cgroup
    memory = MemoryCollector(
        CollectorContext("memory", "default", 15.0, 10.0), MemoryOptions(units=[], cgroups=[name], top_processes=0)
    )
    before = await memory.collect()
    vm_before = family_value(before, "mevwatch_memory_oom_kills_total")
    assert vm_before is not None
    assert family_value(before, "mevwatch_memory_cgroup_oom_kills_total", cgroup="/" + name) == 0

    async with oomkill_stream(state_db) as emitted:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", HOG, stdin=asyncio.subprocess.PIPE)
        try:
            (layout.root / name / "cgroup.procs").write_text(str(proc.pid))
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            proc.stdin.close()
            try:
                rc = await wait_for(proc.wait(), 30.0)
            except TimeoutError:
                raise AssertionError("memory hog neither killed nor finished within 30 s") from None
            exited = time.monotonic()
            assert rc == -9, f"memory hog exited with {rc}, not killed by the OOM killer"
            victim: Families | None = None
            while time.monotonic() - exited < 2.0:
                fams = emitted[-1]
                if family_value(fams, "mevwatch_oom_kills_total", comm=HOG_COMM) == 1:
                    victim = fams
                    break
                await asyncio.sleep(0.01)
            assert victim is not None, f"no OOM kill event within 2 s; last emit {emitted[-1]!r}"
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert family_value(
            victim, "mevwatch_oom_last_victim_info", pid=str(proc.pid), comm=HOG_COMM, cgroup="/" + name,
            constraint="memcg",
        ) == 1
        assert family_value(victim, "mevwatch_oom_kills_total", comm=HOG_COMM, unit="/" + name) == 1
        rss = family_value(victim, "mevwatch_oom_last_victim_resident_bytes")
        assert rss is not None
        assert LIMIT / 2 < rss <= LIMIT * 1.25

    after = await memory.collect()
    vm_after = family_value(after, "mevwatch_memory_oom_kills_total")
    assert vm_after is not None
    assert vm_after >= vm_before + 1
    assert family_value(after, "mevwatch_memory_cgroup_oom_kills_total", cgroup="/" + name) == 1
    assert family_value(after, "mevwatch_memory_cgroup_limit_bytes", cgroup="/" + name) == LIMIT
    stored = state_db.query("SELECT kills FROM oomkill_counts WHERE comm = ?", (HOG_COMM,))
    assert stored == [(1,)]
