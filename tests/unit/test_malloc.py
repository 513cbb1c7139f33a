"""The heap trimmer: glibc's malloc_trim found and really called, on schedule, stopped cleanly."""

from __future__ import annotations

import asyncio
import os
import platform
from pathlib import Path

import pytest

from mevwatch.daemon.malloc import MallocTrimmer, libc_malloc_trim

GLIBC = platform.libc_ver()[0] == "glibc"


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is a glibc function")
def test_malloc_trim_gives_freed_arena_memory_back() -> None:
    trim = libc_malloc_trim()
    assert trim is not None
    # freed blocks between live ones stay in the arena (and in RSS) until trimmed; 64 KiB is
    # under glibc's mmap threshold, so these come from the heap
    blocks = [bytearray(b"x" * 65536) for _ in range(400)]
    del blocks[::2]
    before = rss_bytes()
    assert trim(0) == 1  # 1: memory was given back
    assert before - rss_bytes() > 4 * 2**20
    del blocks


async def test_trims_every_interval_until_stopped() -> None:
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    trimmer = MallocTrimmer(interval=0.01, trim=trim)
    await trimmer.start()
    await trimmer.start()  # a second start does not start a second task
    await asyncio.sleep(0.1)
    await trimmer.stop()
    n = len(calls)
    assert n >= 3
    assert set(calls) == {0}
    assert trimmer.runs == n
    await asyncio.sleep(0.05)
    assert len(calls) == n  # stopped means stopped
    await trimmer.stop()  # and stopping twice is harmless


async def test_without_malloc_trim_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mevwatch.daemon.malloc.libc_malloc_trim", lambda: None)
    trimmer = MallocTrimmer(interval=0.01)
    assert trimmer.trim is None
    await trimmer.start()
    await asyncio.sleep(0.03)
    assert trimmer.runs == 0
    await trimmer.stop()


@pytest.mark.looptime(start=7.5)
async def test_trims_on_the_loop_clocks_grid_where_runs_wake() -> None:
    at: list[float] = []
    loop = asyncio.get_running_loop()

    def trim(pad: int) -> int:
        at.append(loop.time())
        return 1

    trimmer = MallocTrimmer(trim=trim)
    await trimmer.start()
    await asyncio.sleep(200.0)
    await trimmer.stop()
    assert at == pytest.approx([60.0, 120.0, 180.0])  # not 67.5, 127.5, ...: a wake-up of their own
