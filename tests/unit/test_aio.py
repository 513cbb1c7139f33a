"""A cancellation is never lost, wherever it lands among the callbacks that finish a wait.

On Python 3.11, ``asyncio.wait_for`` returned the result when the cancel arrived after the awaited
future completed but before its waiter woke: a collector cancelled at that moment ran on, and the
``gather`` on it never returned (a CI run hung so). Each test below steps the loop one callback
further before cancelling, so one of the steps lands in that window.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import pytest

from mevwatch.aio import cancel_and_wait, wait_for
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


async def test_wait_for_times_out_in_a_task_already_being_cancelled() -> None:
    """The finally of a stopping collector still gets its TimeoutError (asyncio.timeout before 3.11.3 did not)."""
    seen: list[str] = []

    async def stopping() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            try:
                await wait_for(asyncio.sleep(10), 0.01)
            except TimeoutError:
                seen.append("timeout")
            seen.append("finally ran to its end")

    task = asyncio.ensure_future(stopping())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["timeout", "finally ran to its end"]


async def test_wait_for_returns_what_finished_as_the_timeout_fell_and_cancels_on_the_callers_cancel() -> None:
    gate = asyncio.Event()

    async def slow_to_stop() -> str:
        try:
            await gate.wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # takes time to stop, then ends with a result anyway
            return "late"
        return "ok"

    assert await wait_for(slow_to_stop(), 0.01) == "late"
    inner = asyncio.ensure_future(slow_to_stop())
    outer = asyncio.ensure_future(wait_for(inner, 5.0))
    await asyncio.sleep(0.01)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert inner.done()  # cancelled and waited for before the caller's cancel went on


async def test_cancel_and_wait_lets_the_callers_own_cancel_through() -> None:
    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # a slow stop
            raise RuntimeError("failed while stopping") from None

    child = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    after: list[str] = []

    async def stopper() -> None:
        await cancel_and_wait(child)
        after.append("went on")  # what suppress(CancelledError) around `await child` would do

    parent = asyncio.ensure_future(stopper())
    await asyncio.sleep(0.05)
    parent.cancel()
    with pytest.raises(asyncio.CancelledError):
        await parent
    assert after == []
    await asyncio.wait([child])
    assert isinstance(child.exception(), RuntimeError)


async def test_cancel_and_wait_drops_the_stopped_tasks_own_failure() -> None:
    async def fails_on_stop() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("failed while stopping") from None

    child = asyncio.ensure_future(fails_on_stop())
    await asyncio.sleep(0)
    await cancel_and_wait(child)
    assert isinstance(child.exception(), RuntimeError)


async def test_an_idle_pool_has_no_abandoned_thread_after_timeouts_and_cancels() -> None:
    """Workers that return right as their wait times out or is cancelled are not counted as hung."""
    pool = BlockingPool(max_workers=4)
    rng = random.Random(7)
    try:
        for _ in range(100):
            work = rng.uniform(0, 0.003)
            task = asyncio.ensure_future(pool.run(time.sleep, work, timeout=rng.uniform(0, 0.003)))
            await asyncio.sleep(rng.uniform(0, 0.003))
            task.cancel()
            await asyncio.wait([task])
        for _ in range(200):
            if pool.busy == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.busy == 0
        assert pool.abandoned == 0
    finally:
        pool.shutdown()
