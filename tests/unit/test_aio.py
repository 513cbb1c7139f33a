"""A cancellation is never lost, wherever it lands among the callbacks that finish a wait.

On Python 3.11, ``asyncio.wait_for`` returned the result when the cancel arrived after the awaited
future completed but before its waiter woke: a collector cancelled at that moment ran on, and the
``gather`` on it never returned (a CI run hung so). Each test below steps the loop one callback
further before cancelling, so one of the steps lands in that window.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from mevwatch.aio import wait_for
from mevwatch.blocking import BlockingPool

#: loop iterations swept between the result and the cancel (the window is 1-3 iterations wide)
STEPS = 8


async def _sweep(start: Callable[[], Awaitable[object]], finish: Callable[[], None]) -> list[str]:
    """For each step count: start, finish the awaited work, step the loop, cancel; what each gave."""
    seen = []
    for steps in range(STEPS):
        task = asyncio.ensure_future(start())
        await asyncio.sleep(0)  # the task is now waiting
        finish()
        for _ in range(steps):
            await asyncio.sleep(0)
        accepted = task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            seen.append("cancelled")
            continue
        # a result is right only when the task had already finished before cancel() was called
        assert not accepted, f"cancel accepted after {steps} steps, yet the task returned its result"
        seen.append("done")
    return seen


async def test_blocking_pool_run_never_swallows_a_cancel() -> None:
    pool = BlockingPool(max_workers=2)
    try:
        seen = await _sweep(lambda: pool.run(lambda: 7, timeout=5.0), lambda: time.sleep(0.05))
    finally:
        pool.shutdown()
    assert {"cancelled", "done"} <= set(seen)  # the sweep crossed the whole window
    assert pool.abandoned == 0


async def test_wait_for_never_swallows_a_cancel() -> None:
    futures: list[asyncio.Future[int]] = []

    def start() -> Awaitable[int]:
        futures.append(asyncio.get_running_loop().create_future())
        return wait_for(asyncio.shield(futures[-1]), 5.0)

    seen = await _sweep(start, lambda: futures[-1].set_result(7))
    assert {"cancelled", "done"} <= set(seen)


async def test_wait_for_times_out_and_cancels_what_it_waited_on() -> None:
    inner = asyncio.ensure_future(asyncio.sleep(10))
    with pytest.raises(TimeoutError):
        await wait_for(inner, 0.01)
    assert inner.cancelled()
    assert await wait_for(asyncio.sleep(0, "ok"), None) == "ok"
